"""diffusers folders as diffatlas runs, and diffatlas runs as diffusers folders.

A diffusers DDPM-family model folder (as `DDPMPipeline.save_pretrained` writes it) is a UNet2DModel
plus a scheduler config, which holds the process the UNet was trained on (it becomes the run's
dynamics and parameterization) and sampling conventions (stated in the run's source.json, not
applied); diffusers_scheduler.py says how each field is read.

The UNet becomes the `diffusers-unet` network (networks/diffusers_unet.py), which maps c_noise
back to the UNet's timestep. Export goes the other way: a run on a DDPM or VP process with the
DDPM U-Net (or an imported UNet2DModel) becomes a DDPMPipeline folder. diffatlas's U-Net embeds
c_noise with Fourier features, which no sinusoid of the integer timestep reproduces; the exported
UNet2DModel therefore uses diffusers' learned timestep table (time_embedding_type="learned"),
filled with diffatlas's Fourier features of c_noise at each of the scheduler's T noise levels, so
the exported model at timestep k computes exactly the diffatlas network at that noise level.

The code lives in diffusers_scheduler.py (the scheduler config: process, conventions, grids),
diffusers_import.py, diffusers_export.py and diffusers_folders.py (what import and export share);
this module keeps their names importable from one place.
"""

from .diffusers_export import export_diffusers, unet_to_diffusers
from .diffusers_folders import EXPORT_INFO, SOURCE_INFO, LogFn, check_against_unet
from .diffusers_import import import_diffusers
from .diffusers_scheduler import (BETA_SCHEDULES, CONVENTION_KEYS, PREDICTION_TYPES, SCHEDULER_CLASSES, SchedulerProcess,
                                  diffusers_grid, diffusers_timesteps, read_scheduler)

__all__ = ["BETA_SCHEDULES", "CONVENTION_KEYS", "EXPORT_INFO", "LogFn", "PREDICTION_TYPES", "SCHEDULER_CLASSES",
           "SOURCE_INFO", "SchedulerProcess", "check_against_unet", "diffusers_grid", "diffusers_timesteps",
           "export_diffusers", "import_diffusers", "read_scheduler", "unet_to_diffusers"]
