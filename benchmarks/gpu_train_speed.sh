#!/usr/bin/env bash
# Training throughput of the ddpm-cifar10 U-Net (3x32x32, batch 128) against diffusers' UNet2DModel
# on one CUDA GPU, in every mode the foundation benchmark asks for, with an operator profile of
# the eager and compiled steps. Writes ${OUT:-gpu-out}/train-speed.log.
# Usage: bash benchmarks/gpu_train_speed.sh   (a folder .whl/ of wheels, e.g. diffusers, is installed first)
# Takes ~8 min on an H200 (most of it compiling both models twice).
source "$(dirname "$0")/gpu_env.sh"
B="python3 benchmarks/bench_networks.py --device cuda --presets ddpm-cifar10:3x32x32:128 --steps 20 --rounds 3"
{
machine
step "eager fp32, plain Adam, cudnn.benchmark off: the earlier harness"
timeout 60 $B --optimizer adam --cudnn-benchmark off --no-forward
step "eager bf16 channels_last, plain Adam, cudnn.benchmark off: the earlier harness, profiled"
timeout 90 $B --bf16 --channels-last --optimizer adam --cudnn-benchmark off --no-forward --profile 25
step "eager bf16 channels_last, fused AdamW, cudnn.benchmark on, profiled"
timeout 90 $B --bf16 --channels-last --no-forward --profile 25
step "compiled bf16 channels_last, fused AdamW, cudnn.benchmark on, profiled"
timeout 240 $B --bf16 --channels-last --compile --profile 30
step "compiled (reduce-overhead: CUDA graphs) bf16 channels_last, fused AdamW, cudnn.benchmark on"
timeout 240 $B --bf16 --channels-last --compile --compile-mode reduce-overhead --no-forward
step "done"
} 2>&1 | tee "$OUT/train-speed.log"
