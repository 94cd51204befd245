"""Are diffatlas's default sampling plans fair, and how good? Exact denoisers, no training.

Part 1 (the goal): discrete DDPM (linear betas 1e-4..0.02, T = 1000) with the exact denoiser of an
8-mode 2-D Gaussian mixture (radius 0.8, std 0.2): sliced W2 to 20,000 true samples at 10 and 20
NFE for diffatlas's deterministic samplers on their default plans, and for diffusers' schedulers
(DDIM, DPM-Solver++(2M), UniPC, Euler) on their default configurations for that schedule, fed
the same exact epsilon from the same prior draws.

Part 2 (ties): the sliced W2 of every dynamics x sampler on its default plan at 10, 20 and 50 NFE.

    python benchmarks/bench_fair_defaults.py [--n 4000] [--skip-table]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from diffatlas.data.toy import ExactDenoiser, standard_mixture
from diffatlas.dynamics import DYNAMICS, build_dynamics
from diffatlas.samplers import SAMPLERS, sample
from diffatlas.samplers.oracle import random_directions, sliced_wasserstein

MIX = standard_mixture(2, radius=0.8)
REF = MIX.sample(20000, torch.Generator().manual_seed(1))
DIRS = random_directions(2, 256, torch.Generator().manual_seed(2))


def sw(x: torch.Tensor) -> float:
    return sliced_wasserstein(x, REF, directions=DIRS) if bool(torch.isfinite(x).all()) else float("nan")


def diffusers_rows(n: int, budgets: list[int]) -> list[tuple[str, list[str]]]:
    import diffusers

    dyn = build_dynamics("ddpm")
    den = ExactDenoiser(MIX, dyn)
    T = dyn.steps
    ab = dyn.alphas_cumprod

    def eps(x: torch.Tensor, k: int) -> torch.Tensor:  # diffusers' zero-based step k is diffatlas's time (k+1)/T
        t = torch.full((x.shape[0],), (k + 1) / T, dtype=torch.float64)
        a, s = float(ab[k].sqrt()), float((1 - ab[k]).sqrt())
        return (x - a * den(x, t)) / s

    kinds = {"DDIM": diffusers.DDIMScheduler, "DPM-Solver++(2M)": diffusers.DPMSolverMultistepScheduler,
             "UniPC": diffusers.UniPCMultistepScheduler, "Euler": diffusers.EulerDiscreteScheduler}
    out = []
    for name, cls in kinds.items():
        cells = []
        for b in budgets:
            sch = cls(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
            sch.set_timesteps(b)
            x = torch.randn(n, 2, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
            x = x * float(getattr(sch, "init_noise_sigma", 1.0))
            for t in sch.timesteps:
                xin = sch.scale_model_input(x, t)
                # scale_model_input gives the VP state x_t (Euler works on x_t / alpha); Euler's
                # timesteps are interpolated floats: the exact epsilon of the nearest step
                x = sch.step(eps(xin, min(T - 1, int(round(float(t))))), t, x).prev_sample
            cells.append(f"{sw(x):.4f}")
        out.append((f"diffusers {name}", cells))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--skip-table", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.machine()} {platform.system()}, torch {torch.__version__}, 1 thread")
    floor = sw(MIX.sample(args.n, torch.Generator().manual_seed(3)))
    print(f"noise floor (an independent true sample of {args.n}): {floor:.4f}")
    budgets = [10, 20]
    dyn = build_dynamics("ddpm")
    print("\n| sampler (DDPM linear, T = 1000, exact denoiser) | SW2 @10 NFE | SW2 @20 NFE |\n| --- | ---: | ---: |")
    for s in ("ddim", "euler", "heun", "dpm-solver++"):
        cells = []
        for b in budgets:
            r = sample(ExactDenoiser(MIX, dyn), (args.n, 2), sampler=s, nfe=b, dtype=torch.float64, seed=10)
            cells.append(f"{sw(r.x):.4f} ({r.nfe})")
        print(f"| diffatlas {s} (default plan) | " + " | ".join(cells) + " |")
    for name, cells in diffusers_rows(args.n, budgets):
        print(f"| {name} (default config) | " + " | ".join(cells) + " |")
    if args.skip_table:
        return
    print("\n| dynamics | sampler | SW2 @10 | @20 | @50 |\n| --- | --- | ---: | ---: | ---: |")
    t0 = time.perf_counter()
    for dn in DYNAMICS.names():
        d = build_dynamics(dn)
        for s in SAMPLERS.names():
            if s == "euler-maruyama" and dn == "flow":
                continue
            cells = []
            for b in (10, 20, 50):
                r = sample(ExactDenoiser(MIX, d), (1000, 2), sampler=s, nfe=b, dtype=torch.float64, seed=10)
                cells.append(f"{sw(r.x):.3f} ({r.nfe})")
            print(f"| {dn} | {s} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
