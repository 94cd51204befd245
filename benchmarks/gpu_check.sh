#!/usr/bin/env bash
# One pass over the GPU paths and the GPU benchmarks, for a machine with one CUDA GPU.
# Writes logs to ${OUT:-gpu-out}/. Usage: bash benchmarks/gpu_check.sh
# Optional: a folder .whl/ of wheels (diffusers) installed to /tmp/site first.
source "$(dirname "$0")/gpu_env.sh"
{
machine

step "train on GPU: bf16 + channels_last + torch.compile, then NCCL through torchrun (1 process), then sample"
D=/tmp/gpu-runs; rm -rf $D
COMMON="data.name=digits data.resolution=32 network.preset=unet-s train.batch=256 train.kimg=20 train.tick_kimg=5 train.snapshot_kimg=10 train.device=cuda"
timeout 240 python3 -m diffatlas.cli train $COMMON train.precision=bf16 train.channels_last=true train.compile=true --run-dir $D/compiled --progress lines
python3 - <<'PY'
import json, safetensors.torch as st, glob
snap = sorted(glob.glob("/tmp/gpu-runs/compiled/snapshots/snapshot-*"))[-1]
keys = list(st.load_file(snap + "/ema.safetensors"))
print("snapshot keys free of _orig_mod/module prefixes:", not any(k.startswith(("_orig_mod.", "module.")) for k in keys))
print("doctor:", json.load(open("/tmp/gpu-runs/compiled/doctor.json")).get("ok"))
PY
timeout 120 torchrun --nproc_per_node=1 -m diffatlas.cli train $COMMON train.kimg=10 train.precision=bf16 --run-dir $D/nccl --progress lines
grep -h '"world_size"' $D/nccl/environment.json
timeout 60 python3 -m diffatlas.cli sample $D/compiled --n 256 --sampler heun --steps 18 --grid karras --device cuda --out $OUT/gpu-samples.png
timeout 60 python3 -m diffatlas.cli sample $D/compiled --n 256 --sampler ddim --steps 50 --device cuda --out $OUT/gpu-samples-ddim.png

step "network throughput vs diffusers, ddpm-cifar10 3x32x32 batch 128 (and the tiny preset)"
timeout 150 python3 benchmarks/bench_networks.py --device cuda --bf16 --channels-last --compile --steps 20 --rounds 2 \
  --presets ddpm-cifar10:3x32x32:128,unet-xs:1x8x8:64
timeout 60 python3 benchmarks/bench_networks.py --device cuda --bf16 --channels-last --steps 20 --rounds 2 --presets ddpm-cifar10:3x32x32:128
timeout 60 python3 benchmarks/bench_networks.py --device cuda --steps 10 --rounds 2 --presets ddpm-cifar10:3x32x32:128

step "metrics: extractor throughput and a 10k Frechet distance"
timeout 60 python3 benchmarks/bench_metrics.py --n 10000
step "done"
} 2>&1 | tee "$OUT/gpu-check.log"
