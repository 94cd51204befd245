"""Sampler benchmarks.

1. Per-step overhead of each sampler relative to the denoiser's own cost, at batch 256 on a tiny
   network (1x8x8 images): overhead = (sampler time - NFE x denoiser time) / (NFE x denoiser time).
   Goal: < 5 %.
2. NFE each sampler needs to reach a fixed sliced-W2 distance to a 2-D Gaussian mixture with the
   exact denoiser (first budget, among a ladder, whose distance is within `--target` x the noise floor).

    python benchmarks/bench_samplers.py [--batch 256] [--repeats 5] [--dynamics vp,edm] [--n 1000]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

from diffatlas.denoiser import Denoiser
from diffatlas.dynamics import build_dynamics
from diffatlas.samplers import SAMPLERS, default_grid, steps_for_nfe
from diffatlas.samplers.oracle import random_directions, sliced_wasserstein
from diffatlas.schedules import make_grid


class _TinyConv(nn.Module):
    """Fallback network: two 3x3 convolutions with a c_noise bias, (N, 1, 8, 8) -> (N, 1, 8, 8)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, width, 3, padding=1)
        self.emb = nn.Linear(1, width)
        self.b = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x, c_noise, cond=None):
        h = torch.relu(self.a(x) + self.emb(c_noise[:, None])[:, :, None, None])
        return self.b(h)


def tiny_network() -> tuple[nn.Module, str]:
    try:
        from diffatlas.networks import build_network
        return build_network("unet-xs", shape=(1, 8, 8)), "unet-xs (diffatlas.networks)"
    except Exception as e:  # the networks module is optional for this benchmark
        return _TinyConv(), f"local 2-layer conv (networks unavailable: {type(e).__name__})"


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}, python {platform.python_version()}")


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


class _Fixed:
    """A denoiser that costs (almost) nothing: returns a precomputed x0, so a sampler's time is its own overhead."""

    def __init__(self, x0: torch.Tensor, dynamics) -> None:
        self.x0, self.dynamics = x0, dynamics

    def __call__(self, x, t, cond=None):
        return self.x0


def overhead_table(batch: int, repeats: int, nfe: int) -> None:
    net, desc = tiny_network()
    net.eval()
    dyn = build_dynamics("vp")
    den = Denoiser(net, dyn, "eps")
    x = dyn.prior_sample((batch, 1, 8, 8), torch.Generator().manual_seed(0))
    t = torch.full((batch,), 0.5)
    with torch.no_grad():
        per_call = _time(lambda: [den(x, t) for _ in range(10)], repeats) / 10
        fixed = _Fixed(den(x, t), dyn)
    print(f"network: {desc}; batch {batch}; denoiser call {per_call * 1e3:.3f} ms")
    print("overhead = sampler time with a zero-cost denoiser / (NFE x denoiser call)")
    print(f"{'sampler':18s} {'NFE':>5s} {'sampler-only ms':>16s} {'denoiser ms':>12s} {'overhead':>9s}")
    for name in SAMPLERS.names():
        steps, opts = steps_for_nfe(name, nfe)
        if name == "rk45":  # adaptive: the overhead per evaluation is what is compared
            opts = {"rtol": 1e-2, "atol": 1e-2}
        ts = make_grid(default_grid(dyn, steps, name), dyn, steps)
        out = {}

        def go(name=name, ts=ts, opts=opts):
            with torch.no_grad():
                out["r"] = SAMPLERS.get(name)(fixed, x, ts, generator=torch.Generator().manual_seed(1), **opts)
        own = _time(go, repeats)
        n = out["r"].nfe
        print(f"{name:18s} {n:5d} {own * 1e3:16.2f} {n * per_call * 1e3:12.1f} {100 * own / (n * per_call):8.2f}%")


def nfe_to_target(dyn_names: list[str], n: int, target: float) -> None:
    from diffatlas.data.toy import ExactDenoiser, standard_mixture
    mix = standard_mixture(2)
    ref = mix.sample(10 * n, torch.Generator().manual_seed(1))
    dirs = random_directions(2, 128, torch.Generator().manual_seed(2))
    floors = [sliced_wasserstein(mix.sample(n, torch.Generator().manual_seed(100 + i)), ref, directions=dirs)
              for i in range(10)]
    floor = statistics.mean(floors)
    goal = target * floor
    ladder = [5, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000]
    print(f"\nNFE to reach sliced W2 <= {goal:.4f} ({target} x mean noise floor {floor:.4f}), 2-D mixture, n={n}, "
          "start = exact marginal at t_max")
    print(f"{'sampler':18s} " + " ".join(f"{d:>7s}" for d in dyn_names))
    results = {}
    for d in dyn_names:
        dyn = build_dynamics(d)
        den = ExactDenoiser(mix, dyn)
        tm = torch.tensor([dyn.t_max], dtype=torch.float64)
        x = mix.noised(float(dyn.alpha(tm)), float(dyn.sigma(tm))).sample(n, torch.Generator().manual_seed(0))
        for name in SAMPLERS.names():
            hit = None
            for b in ladder:
                steps, opts = steps_for_nfe(name, b)
                try:
                    r = SAMPLERS.get(name)(den, x, make_grid(default_grid(dyn, steps, name), dyn, steps),
                                           generator=torch.Generator().manual_seed(5), **opts)
                except Exception:
                    hit = "refused"
                    break
                if sliced_wasserstein(r.x, ref, directions=dirs) <= goal:
                    hit = str(r.nfe)
                    break
            results[(name, d)] = hit or f">{ladder[-1]}"
    for name in SAMPLERS.names():
        print(f"{name:18s} " + " ".join(f"{results[(name, d)]:>7s}" for d in dyn_names))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--nfe", type=int, default=20, help="NFE budget per sampler for the overhead table")
    ap.add_argument("--dynamics", default="vp,ve,edm,flow")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--target", type=float, default=1.5)
    args = ap.parse_args()
    torch.set_num_threads(1)  # timings on a shared 2-core machine are stable only single-threaded
    print(f"machine: {machine()}")
    overhead_table(args.batch, args.repeats, args.nfe)
    nfe_to_target(args.dynamics.split(","), args.n, args.target)


if __name__ == "__main__":
    main()
