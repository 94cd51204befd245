"""Network throughput: diffatlas U-Net vs diffusers' UNet2DModel configured identically, and
(with --all-presets) every diffatlas preset.

For each case it measures, in one run on one device:
  train img/s   Adam steps on an MSE loss (forward + backward + update), images per second
  fwd img/s     eval-mode forward passes under no_grad
  fwd GFLOP/s   forward FLOPs (2 x MACs, torch.utils.flop_counter) x fwd img/s

    python benchmarks/bench_networks.py                       # unet-xs @ 1x8x8 b64, ddpm-cifar10 @ 3x32x32 b128
    python benchmarks/bench_networks.py --presets unet-xs:1x8x8:64 --steps 30
    python benchmarks/bench_networks.py --all-presets --shape 1x8x8 --batch 64
    python benchmarks/bench_networks.py --device cuda --bf16 --channels-last --compile
    python benchmarks/bench_networks.py --device cuda --bf16 --channels-last --profile 20   # + top kernels per model

The optimizer is the training loop's (`diffatlas train`): AdamW with the fused single-kernel
update (`--optimizer fused`); `--optimizer adam` is a plain `torch.optim.Adam` with its
defaults (per-tensor loop on the CPU, foreach on CUDA), as older figures used.

diffusers is optional; its rows are skipped with a message when it is not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import time
from collections.abc import Callable

import torch
from torch import nn

from diffatlas.networks import PRESETS, build_network, count_parameters
from diffatlas.networks.layers import GroupNorm, num_groups

DEFAULT_CASES = ["unet-xs:1x8x8:64", "ddpm-cifar10:3x32x32:128"]


def machine_line(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return f"CPU {cpu}; torch {torch.__version__}; threads {torch.get_num_threads()}{gpu}"


def diffusers_twin(net: nn.Module) -> nn.Module | None:
    """diffusers UNet2DModel with the same layout as a diffatlas UNet (DDPM CIFAR-10 style), or None."""
    try:
        from diffusers import UNet2DModel
    except ImportError:
        return None
    cfg = net.config
    res = [cfg["resolution"] // 2**i for i in range(len(cfg["channel_mult"]))]
    attn = [r in cfg["attn_resolutions"] for r in res]
    return UNet2DModel(
        sample_size=cfg["resolution"],
        in_channels=cfg["in_channels"],
        out_channels=cfg["out_channels"],
        block_out_channels=tuple(cfg["base_channels"] * m for m in cfg["channel_mult"]),
        layers_per_block=cfg["num_res_blocks"],
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        attention_head_dim=None,  # one head of full width, as in Ho et al.
        norm_num_groups=num_groups(cfg["base_channels"]),
        dropout=cfg["dropout"],
        time_embedding_type="positional",
        flip_sin_to_cos=False,
        freq_shift=1,
        downsample_padding=1,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """Holds one model, its inputs and optimizer; times train steps and eval forwards on demand."""

    def __init__(self, call: Callable, model: nn.Module, shape: tuple[int, ...], batch: int,
                 device: torch.device, bf16: bool, channels_last: bool, optimizer: str = "fused") -> None:
        g = torch.Generator(device="cpu").manual_seed(0)
        self.x = torch.randn((batch, *shape), generator=g).to(device)
        self.target = torch.randn((batch, *shape), generator=g).to(device)
        self.c = torch.empty(batch).uniform_(-2, 2, generator=g).to(device)
        if channels_last and self.x.ndim == 4:
            self.x = self.x.to(memory_format=torch.channels_last)
        self.call, self.model, self.batch, self.device, self.bf16 = call, model, batch, device, bf16
        if optimizer == "fused":
            self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        else:
            self.opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def _amp(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def _train_step(self) -> None:
        with self._amp():
            loss = (self.call(self.x, self.c).float() - self.target).square().mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def _fwd(self) -> None:
        with torch.no_grad(), self._amp():
            self.call(self.x, self.c)

    def images_per_s(self, train: bool, steps: int, warmup: int) -> float:
        self.model.train(train)
        step = self._train_step if train else self._fwd
        for _ in range(warmup):
            step()
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(self.device)
        return self.batch * steps / (time.perf_counter() - t0)


def profile_table(runner: Runner, rows: int, steps: int = 3) -> str:
    """Operators of `steps` training steps, by self time on the device (CPU time on the CPU)."""
    from torch.profiler import ProfilerActivity, profile

    runner.model.train(True)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if runner.device.type == "cuda" else [])
    runner._train_step()
    _sync(runner.device)
    with profile(activities=acts) as prof:
        for _ in range(steps):
            runner._train_step()
        _sync(runner.device)
    key = "self_cuda_time_total" if runner.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)


def flops_of(call: Callable, model: nn.Module, shape: tuple[int, ...], device: torch.device) -> int:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    x, c = torch.zeros((1, *shape), device=device), torch.zeros(1, device=device)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        call(x, c)
    return int(fc.get_total_flops())


def with_groupnorm_form(net: nn.Module, form: str) -> nn.Module:
    """Set the compiled form of every diffatlas GroupNorm in `net` (see GroupNorm.compiled_form)."""
    for m in net.modules():
        if isinstance(m, GroupNorm):
            m.compiled_form = form
    return net


def parse_case(text: str, default_shape: str, default_batch: int) -> tuple[str, tuple[int, ...], int]:
    parts = text.split(":")
    name = parts[0]
    shape = tuple(int(s) for s in (parts[1] if len(parts) > 1 else default_shape).split("x"))
    batch = int(parts[2]) if len(parts) > 2 else default_batch
    return name, shape, batch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument("--compile-mode", default="default",
                    help="torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune, ...")
    ap.add_argument("--optimizer", choices=("fused", "adam"), default="fused",
                    help="fused: AdamW(fused=True), the training loop's; adam: torch.optim.Adam defaults")
    ap.add_argument("--cudnn-benchmark", choices=("on", "off"), default="on",
                    help="let cuDNN time its algorithms for each shape (the training loop turns it on)")
    ap.add_argument("--groupnorm-compiled", choices=("native", "moments", "both"), default="native",
                    help="how torch.compile sees diffatlas' GroupNorm on a GPU (GroupNorm.compiled_form); "
                         "both: a second diffatlas row, diffatlas-gnm, with the moment form")
    ap.add_argument("--no-forward", action="store_true", help="time training steps only")
    ap.add_argument("--profile", type=int, default=0, metavar="ROWS",
                    help="after timing, print the top ROWS operators of 3 training steps per model")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3, help="alternating timing rounds; the best is kept")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument(
        "--presets", default=",".join(DEFAULT_CASES),
        help="comma list of PRESET[:CxHxW[:BATCH]] compared against diffusers (U-Net presets)",
    )
    ap.add_argument("--all-presets", action="store_true", help="also time every diffatlas preset at --shape/--batch")
    ap.add_argument("--shape", default="1x8x8", help="per-sample shape for --all-presets")
    ap.add_argument("--batch", type=int, default=64, help="batch for --all-presets")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark == "on"
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    print(machine_line(device))
    compiled = f"{args.compile} (mode {args.compile_mode})" if args.compile else "False"
    print(f"device {device}; bf16 {args.bf16}; channels_last {args.channels_last}; compile {compiled}; "
          f"optimizer {args.optimizer}; cudnn.benchmark {args.cudnn_benchmark}; "
          f"GroupNorm compiled form {args.groupnorm_compiled}; "
          f"steps {args.steps} x {args.rounds} rounds (+{args.warmup} warm-up)")

    head = f"{'preset':<15} {'shape':<9} {'batch':>5} {'impl':<13} {'params':>11} {'fwd GFLOP/img':>13} " \
           f"{'train img/s':>11} {'fwd img/s':>10} {'fwd GFLOP/s':>11} {'train x':>7}"
    print(head)
    print("-" * len(head))

    def prepare(impl: str, model: nn.Module, shape, batch) -> tuple[Runner, int]:
        model = model.to(device)
        if args.channels_last and len(shape) == 3:
            model = model.to(memory_format=torch.channels_last)
        if impl == "diffusers":
            def call(x, c, m=model):
                return m(x, c).sample
        else:
            call = model
        flops = flops_of(call, model, shape, device)
        timed = torch.compile(call, mode=args.compile_mode) if args.compile else call
        return Runner(timed, model, shape, batch, device, args.bf16, args.channels_last, args.optimizer), flops

    def compare(name: str, shape, batch, models: dict[str, nn.Module]) -> None:
        """Time the models in alternation for --rounds rounds and keep each one's best throughput,
        so that load from other processes affects all of them alike."""
        runners = {impl: prepare(impl, m, shape, batch) for impl, m in models.items()}
        best = {impl: [0.0, 0.0] for impl in models}
        for r in range(args.rounds):
            for impl, (runner, _) in runners.items():
                warm = args.warmup if r == 0 else 1
                best[impl][0] = max(best[impl][0], runner.images_per_s(True, args.steps, warm))
                if not args.no_forward:
                    best[impl][1] = max(best[impl][1], runner.images_per_s(False, args.steps, warm))
        base = best["diffusers"][0] if "diffusers" in best else None
        for impl, (runner, flops) in runners.items():
            train_ips, fwd_ips = best[impl]
            ratio = f"{train_ips / base:.2f}" if base else ""
            print(f"{name:<15} {'x'.join(map(str, shape)):<9} {batch:>5} {impl:<13} "
                  f"{count_parameters(runner.model):>11,} {flops / 1e9:>13.4f} {train_ips:>11.1f} "
                  f"{fwd_ips:>10.1f} {flops * fwd_ips / 1e9:>11.2f} {ratio:>7}")
        for impl, (runner, _) in runners.items():
            if args.profile:
                print(f"\n{name} {impl}: top {args.profile} operators over 3 training steps")
                print(profile_table(runner, args.profile))

    for case in args.presets.split(","):
        name, shape, batch = parse_case(case.strip(), args.shape, args.batch)
        torch.manual_seed(0)
        net = build_network(name, shape=shape)
        models: dict[str, nn.Module] = {}
        twin = diffusers_twin(net) if hasattr(net, "config") else None
        if twin is not None:
            models["diffusers"] = twin
        else:
            print(f"  ({name}: diffusers is not installed or {name} is not a U-Net preset; no diffusers row)")
        if args.groupnorm_compiled != "both":
            models["diffatlas"] = with_groupnorm_form(net, args.groupnorm_compiled)
        else:
            models["diffatlas"] = net
            models["diffatlas-gnm"] = with_groupnorm_form(copy.deepcopy(net), "moments")
        compare(name, shape, batch, models)

    if args.all_presets:
        shape = tuple(int(s) for s in args.shape.split("x"))
        print(f"\nall presets at {args.shape}, batch {args.batch}")
        for name in PRESETS.names():
            torch.manual_seed(0)
            compare(name, shape, args.batch, {"diffatlas": build_network(name, shape=shape)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
