"""What a study's runs cost: the work of each run counted from its config and the evaluation plan
(workload), unit costs measured on this machine through the code that does the work (training: the
training loop and how concurrent workers slow it; measure: the evaluation's pieces), the study's
workers on this machine's cores, their process start and their wall time (workers), and GPU times
predicted from rates recorded on a GPU (gpu).

The names below are re-exported for `study plan`; each is defined, and is to be patched, in its module."""

from __future__ import annotations

from .gpu import (GPU_RATES, NATIVE_DATA, GpuRates, data_shape, gpu_estimate, gpu_forward_flop_s, gpu_mode,
                  gpu_times, gpu_train_img_s, model_flops)
from .measure import EvalUnits, measure_evaluation
from .training import calibrate, measure_contention
from .workers import RunTime, cpu_count, cpu_seconds, makespan, measure_startup, wall_time, worker_threads
from .workload import Job, Work, data_label, network_label, run_work, setting_nfe, snapshot_count

__all__ = ["GPU_RATES", "NATIVE_DATA", "EvalUnits", "GpuRates", "Job", "RunTime", "Work", "calibrate", "cpu_count",
           "cpu_seconds", "data_label", "data_shape", "gpu_estimate", "gpu_forward_flop_s", "gpu_mode",
           "gpu_times", "gpu_train_img_s", "makespan", "measure_contention", "measure_evaluation",
           "measure_startup", "model_flops", "network_label", "run_work", "setting_nfe", "snapshot_count",
           "wall_time", "worker_threads"]
