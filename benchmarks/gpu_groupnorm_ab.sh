#!/usr/bin/env bash
# Compiled training throughput of the ddpm-cifar10 U-Net (3x32x32, batch 128, bf16, channels_last)
# with GroupNorm traced natively (diffatlas) and as per-channel moments (diffatlas-gnm), against
# diffusers' UNet2DModel, in one process per compile mode; then a profile of the default-mode step.
# Decides GroupNorm.compiled_form's default. Writes ${OUT:-gpu-out}/groupnorm-ab.log.
# Usage: bash benchmarks/gpu_groupnorm_ab.sh   (a folder .whl/ of wheels, e.g. diffusers, is installed first)
# Expected to take ~6 min on an H200 from a cold compile cache (three models compiled per mode).
source "$(dirname "$0")/gpu_env.sh"
B="python3 benchmarks/bench_networks.py --device cuda --presets ddpm-cifar10:3x32x32:128 --steps 20 --rounds 3 --bf16 --channels-last --compile --groupnorm-compiled both --no-forward"
{
machine
step "compiled (reduce-overhead: CUDA graphs)"
timeout 300 $B --compile-mode reduce-overhead
step "compiled (default mode), profiled"
timeout 240 $B --profile 25
step "done"
} 2>&1 | tee "$OUT/groupnorm-ab.log"
