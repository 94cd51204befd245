"""`diffatlas calibrate`: does the verdict pipeline hold its false-positive rate, and does it detect a real effect?

The real :func:`diffatlas.study.statistics.verdicts` runs on simulated studies in the layout of a
real one (configurations x seeds x evaluation settings x metrics, with curves' convergence points
and independent draws):

(a) null studies: every configuration is the same in distribution; any "supported" or
    "contradicted" verdict of a difference claim, or "contradicted" on the convergence claim (whose
    truth is "similar"), is a false positive. The rate over studies is familywise (any claim).
(b) planted effects: NCSN's FID is worse than DDPM's by a stated d_z (in units of the sd of the
    paired differences); the share of studies whose DDPM-vs-NCSN verdict is "supported" is the power.

The simulated values of one metric are, for configuration c, seed s and evaluation setting j,

    value = base + offset_j + effect_c + sd_model * u_cs + sd_setting * e_csj

with u a standardized Student t (5 degrees of freedom: a few bad seeds), e standard normal, and
offset_j a fixed shift per sampler (samplers differ; a guided setting shares its sampler's). Settings of one model are correlated by
sd_model^2 / (sd_model^2 + sd_setting^2). Convergence points: budget * (0.4 + 0.06 u' + 0.04 e'),
10% of curves never settle. Draws: the first setting's value plus noise of half the between-run
sd for both FID and IS (equal reliability), FID also plus its 1/n bias.

Further checks run after the simulations from :data:`CHECKS`: the exact-denoiser study
(study/exact.py) samples every dynamics with the exact Gaussian-mixture denoiser and decides with
the same verdict code; it must find no difference, and must find a deliberately degraded process
worse. The command ends with one line
``false positives F at alpha 0.05 over N null studies; power P at effect E; exact-denoiser study: V``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserError
from ..metrics import METRICS
from . import statistics as S
from .exact import check
from .results import setting_label
from .spec import load_study

# Checks run after the simulations, in order: name -> fn(seed) -> (verdict, table lines). A check
# that is not registered reads "not run" in the final line.
EXACT_DENOISER = "exact-denoiser study"
CHECKS: dict[str, Callable[[int], tuple[str, list[str]]]] = {}


def _exact_denoiser(seed: int) -> tuple[str, list[str]]:
    """Every dynamics with the exact Gaussian-mixture denoiser through the real sampling code and
    the real verdicts (study/exact.py)."""
    return check(seed)


CHECKS[EXACT_DENOISER] = _exact_denoiser

# Per metric: (base value, sd between trained models, sd of a model's per-setting deviations).
NOISE = {"fid": (30.0, 1.5, 1.0), "kid": (0.02, 0.002, 0.0013), "is": (8.0, 0.25, 0.15),
         "class_accuracy": (0.7, 0.03, 0.02)}
NOISE_OTHER = (1.0, 0.05, 0.03)
UNSETTLED = 0.1          # share of curves that never settle within the budget
FID_BIAS_AT_1000 = 5.0   # FID's excess at n = 1000 samples; it scales as 1/n (Chong & Forsyth 2020)
DRAW_NOISE = 0.5         # sd of one draw around the run's value, as a fraction of the between-run sd


@dataclass(frozen=True)
class Layout:
    """What a simulated study looks like: configurations (model-level labels), seeds, evaluation
    settings (eval, guidance, sampling labels), metrics, budget and independent draws (n, count)."""

    name: str
    configs: tuple[dict, ...]
    seeds: int
    settings: tuple[tuple[str, str, str], ...]
    metrics: tuple[str, ...]
    budget_kimg: float
    draws: tuple[int, int] | None
    axes: tuple[str, ...]

    @property
    def guided(self) -> bool:
        return any(g != "none" for _, g, _ in self.settings)

    def describe(self) -> str:
        draws = f"; {self.draws[1]} independent draws at n = {self.draws[0]} of the first setting" if self.draws else ""
        return (f"{self.name}: {len(self.configs)} configurations x {self.seeds} seeds x {len(self.settings)} evaluation "
                f"settings ({', '.join(s[0] for s in self.settings)}); metrics {', '.join(self.metrics)}; budget "
                f"{self.budget_kimg:g} kimg{draws}")


def paper_layout(seeds: int = 6) -> Layout:
    """studies/paper-fashion-mnist.yaml's layout, with class accuracy and independent draws added
    so that the guidance and IS-stability claims are exercised too."""
    configs = ({"dynamics.name": "ddpm", "dynamics.schedule": "linear"}, {"dynamics.name": "ddpm", "dynamics.schedule": "cosine"},
               {"dynamics.name": "ncsn"}, {"dynamics.name": "vp"}, {"dynamics.name": "ve"})
    settings = (("euler-maruyama x250", "none", "euler-maruyama x250"), ("heun x18", "none", "heun x18"),
                ("dpm-solver++ x20", "none", "dpm-solver++ x20"), ("heun x18 classifier:1", "classifier:1", "heun x18"))
    return Layout("paper-fashion-mnist", configs, seeds, settings, ("fid", "is", "class_accuracy"), 1000.0, (1000, 4),
                  ("dynamics.name", "dynamics.schedule", "guidance"))


def study_layout(study: Any, seeds: int | None = None) -> Layout:
    """The layout of a study (diffatlas.study.spec.Study); `seeds` replaces its seed count."""
    settings = []
    for s in study.evaluation.samplers:
        settings.append((setting_label(s), s.get("guidance") or "none", setting_label({**s, "guidance": None})))
    metrics = tuple(p for m in study.evaluation.metrics for p in METRICS.get(m).produces)
    guided = any(g != "none" for _, g, _ in settings)
    draws = study.evaluation.draws
    return Layout(study.name, tuple(study.combinations()), seeds or len(study.seeds), tuple(settings), metrics,
                  float(study.budget_kimg or 100.0), (draws["n"], draws["count"]) if draws else None,
                  tuple(study.axis_keys) + (("guidance",) if guided else ()))


def _noise(metric: str) -> tuple[float, float, float]:
    return NOISE.get(metric, NOISE_OTHER)


def simulate(layout: Layout, rng: np.random.Generator, effects: dict[str, np.ndarray] | None = None) -> list[dict]:
    """One simulated study's records (the format :func:`statistics.verdicts` reads). `effects`: per
    metric, a (configs,) array added to every value of that configuration."""
    C, K, n_set = len(layout.configs), layout.seeds, len(layout.settings)
    budget = layout.budget_kimg
    t5 = math.sqrt(3 / 5)  # a Student t with 5 df has variance 5/3
    samplers = sorted({sampling for _, _, sampling in layout.settings})
    rank = np.array([samplers.index(sampling) for _, _, sampling in layout.settings], dtype=np.float64)
    values = {}
    for m in layout.metrics:
        base, sd_m, sd_s = _noise(m)
        offsets = sd_m * 2.0 * (rank - (len(samplers) - 1) / 2)   # per sampler: guidance itself changes nothing
        v = (base + offsets[None, None, :] + sd_m * t5 * rng.standard_t(5, (C, K, 1)) + sd_s * rng.standard_normal((C, K, n_set)))
        if effects and m in effects:
            v = v + np.asarray(effects[m], dtype=np.float64)[:, None, None]
        values[m] = v
    conv = budget * np.clip(0.4 + 0.06 * rng.standard_normal((C, K, 1)) + 0.04 * rng.standard_normal((C, K, n_set)), 0.05, 1.0)
    settled = rng.random((len(layout.metrics), C, K, n_set)) >= UNSETTLED
    draw_noise = {}
    if layout.draws:
        n, count = layout.draws
        for m in ("fid", "is"):
            if m in values:
                _, sd_m, sd_s = _noise(m)
                bias = FID_BIAS_AT_1000 * 1000.0 / n if m == "fid" else 0.0
                draw_noise[m] = bias + DRAW_NOISE * math.hypot(sd_m, sd_s) * rng.standard_normal((C, K, count))
    records = []
    for c, labels in enumerate(layout.configs):
        for k in range(K):
            run = f"c{c}s{k}"
            for j, (ev, g, sampling) in enumerate(layout.settings):
                lab = {**labels, "seed": k, S.EVAL_KEY: ev}
                if layout.guided:
                    lab["guidance"], lab["sampling"] = g, sampling
                for mi, m in enumerate(layout.metrics):
                    ok = bool(settled[mi, c, k, j])
                    r = {"run": run, "labels": lab, "metric": m, "final": float(values[m][c, k, j]),
                         "converged_kimg": float(conv[c, k, j]) if ok else None, "settled": ok, "budget_kimg": budget}
                    if j == 0 and m in draw_noise:
                        n, count = layout.draws
                        r["draws"] = {"n": n, "values": (values[m][c, k, 0] + draw_noise[m][c, k]).tolist(),
                                      "seeds": [10**6 + i * n for i in range(count)]}
                    records.append(r)
    return records


def pair_sd(layout: Layout, metric: str, axis: str, a: str, b: str) -> float:
    """The sd of one paired difference a - b of `metric` under the simulation (per-model mean over
    the settings; a side with several configurations per pair is averaged)."""
    _, sd_m, sd_s = _noise(metric)
    var_model = sd_m ** 2 + sd_s ** 2 / len(layout.settings)
    side_a = [c for c in layout.configs if str(c.get(axis)) == a]
    side_b = [c for c in layout.configs if str(c.get(axis)) == b]
    if not side_a or not side_b:
        raise UserError(f"the layout {layout.name!r} has no {axis} {a} and {b} to plant an effect between")
    shared = set.intersection(*(set(c) for c in side_a + side_b)) - {axis}

    def per_pair(side: list[dict]) -> float:  # configurations of one side that share a pair
        return len(side) / len({tuple(str(c[k]) for k in sorted(shared)) for c in side})

    return math.sqrt(var_model * (1 / per_pair(side_a) + 1 / per_pair(side_b)))


def _false(claim: str, verdict: str) -> bool:
    """A verdict that contradicts the null simulation's truth (no differences; similar convergence)."""
    if claim == S.CLAIM_CONVERGENCE:
        return verdict == "contradicted"
    return verdict in ("supported", "contradicted")


def _interval(k: int, n: int) -> tuple[float, float]:
    """Wilson score interval (95%) of a proportion k / n (Wilson 1927)."""
    if n == 0:
        return (math.nan, math.nan)
    z, p = 1.959964, k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


@dataclass
class Result:
    null: int
    familywise: int
    per_claim: dict[str, dict[str, int]]
    planted: int
    detected: int
    effect_dz: float
    effect_units: float
    seconds: float


def _run_verdicts(layout: Layout, records: list[dict]) -> list[S.Verdict]:
    return S.verdicts(records, list(layout.axes), list(layout.metrics), budget=layout.budget_kimg)


def calibrate(layout: Layout, *, null: int = 1000, planted: int = 1000, effect_dz: float = 3.0, seed: int = 0,
              log: Callable[[str], None] | None = print) -> Result:
    """Run `null` null studies and `planted` studies with NCSN's FID worse by `effect_dz`."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    counts: dict[str, dict[str, int]] = {}
    familywise = 0
    for i in range(null):
        rows = _run_verdicts(layout, simulate(layout, rng))
        wrong = False
        for v in rows:
            counts.setdefault(v.claim, {}).setdefault(v.verdict, 0)
            counts[v.claim][v.verdict] += 1
            wrong |= _false(v.claim, v.verdict)
        familywise += wrong
        if log and (i + 1) % max(1, null // 5) == 0:
            log(f"  null studies: {i + 1}/{null} ({time.perf_counter() - t0:.0f} s)")
    metric = S._primary(list(layout.metrics)) or "fid"
    axis = S._find_axis(layout.axes, "dynamics.name") or "dynamics.name"
    units = effect_dz * pair_sd(layout, metric, axis, "ddpm", "ncsn") if planted else 0.0
    shift = units * -S.direction(metric)   # ncsn worse by `units`
    eff = {metric: np.array([shift if str(c.get(axis)) == "ncsn" else 0.0 for c in layout.configs])}
    detected = 0
    for i in range(planted):
        rows = _run_verdicts(layout, simulate(layout, rng, eff))
        detected += next(v.verdict for v in rows if v.claim == S.CLAIM_DISCRETE) == "supported"
        if log and (i + 1) % max(1, planted // 5) == 0:
            log(f"  planted-effect studies: {i + 1}/{planted} ({time.perf_counter() - t0:.0f} s)")
    return Result(null, familywise, counts, planted, detected, effect_dz, units, time.perf_counter() - t0)


def report_lines(layout: Layout, res: Result, alpha: float = S.ALPHA) -> list[str]:
    metric = S._primary(list(layout.metrics)) or "fid"
    lines = [f"simulated layout: {layout.describe()}",
             "per trained model and setting: value = base + setting offset + sd_model * u + sd_setting * e "
             "(u: standardized t with 5 df, e: normal); " + "; ".join(
                 f"{m}: base {_noise(m)[0]:g}, sd_model {_noise(m)[1]:g}, sd_setting {_noise(m)[2]:g} "
                 f"(settings correlated {(_noise(m)[1] ** 2) / (_noise(m)[1] ** 2 + _noise(m)[2] ** 2):.2f})"
                 for m in layout.metrics),
             f"convergence points budget * (0.4 + 0.06 u' + 0.04 e'), {UNSETTLED:.0%} of curves never settle; draws: "
             f"noise {DRAW_NOISE:g} x the between-run sd for FID and IS, FID + {FID_BIAS_AT_1000:g} x 1000/n bias",
             "",
             f"{'claim':<84} {'null studies: verdicts':<58} false-positive rate [95% CI]"]
    for claim, by in res.per_claim.items():
        wrong = sum(k for v, k in by.items() if _false(claim, v))
        lo, hi = _interval(wrong, res.null)
        text = ", ".join(f"{v} {k}" for v, k in sorted(by.items(), key=lambda kv: -kv[1]))
        lines.append(f"{claim:<84} {text:<58} {wrong / res.null:.3f} [{lo:.3f}, {hi:.3f}]")
    lo, hi = _interval(res.familywise, res.null)
    lines.append(f"{'any claim (familywise)':<84} {'':<58} {res.familywise / res.null:.3f} [{lo:.3f}, {hi:.3f}]")
    if res.planted:
        lo, hi = _interval(res.detected, res.planted)
        lines.append(f"planted effect: ncsn's {metric} worse by {res.effect_units:.3g} = d_z {res.effect_dz:g} of the "
                     f"ddpm - ncsn pair differences, {layout.seeds} seeds: '{S.CLAIM_DISCRETE}' supported in "
                     f"{res.detected}/{res.planted} = {res.detected / res.planted:.3f} [{lo:.3f}, {hi:.3f}]")
    lines.append(f"{res.null + res.planted} simulated studies in {res.seconds:.1f} s")
    return lines


def design_lines(study: Any, alpha: float = S.ALPHA) -> list[str]:
    """Per claim, whether the study's design can reach a verdict (from one simulated study in its
    layout through the real verdict code): the `study plan` warnings."""
    layout = study_layout(study)
    rows = _run_verdicts(layout, simulate(layout, np.random.default_rng(0)))
    k = sum(v.decidable for v in rows)
    out = [f"verdicts this design can reach ({layout.seeds} seeds; Holm over {k} claim(s)):"]
    for v in rows:
        if v.verdict in (S.UNTESTED, S.UNDERPOWERED):
            out.append(f"  warning: {v.claim}: {v.verdict}: {v.evidence[0] if v.evidence else ''}")
            continue
        det = ""
        if v.tests and v.tests[0].n_pairs:
            dz = v.tests[0].detectable
            det = f"; smallest detectable effect d_z {dz:.2g} at 80% power" if math.isfinite(dz) else ""
        out.append(f"  {v.claim}: can reach a verdict ({v.n} {v.unit}{det})")
    return out


# ---- CLI -------------------------------------------------------------------------------------

def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="false-positive rate and power of the study verdicts on simulated studies")
    p.add_argument("--null", type=int, default=1000, help="null studies (default 1000)")
    p.add_argument("--planted", type=int, default=1000, help="studies with a planted effect (default 1000)")
    p.add_argument("--effect", type=float, default=3.0, help="planted effect, d_z of the paired differences (default 3)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per configuration (default 6, or the study's)")
    p.add_argument("--study", help="simulate this study file's layout instead of paper-fashion-mnist's")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulations (default 0)")
    p.set_defaults(func=cmd_calibrate)


def _check_args(args: argparse.Namespace) -> None:
    if args.null < 1:
        raise UserError(f"--null must be at least 1, got {args.null}")
    if args.planted < 0:
        raise UserError(f"--planted must be 0 or more, got {args.planted}")
    if not (math.isfinite(args.effect) and args.effect >= 0):
        raise UserError(f"--effect must be a number >= 0 (d_z), got {args.effect}")
    if args.seeds is not None and args.seeds < 2:
        raise UserError(f"--seeds must be at least 2, got {args.seeds}")


def cmd_calibrate(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.study:
        layout = study_layout(load_study(args.study), args.seeds)
    else:
        layout = paper_layout(args.seeds or 6)
    print(f"calibrating the verdicts on {args.null} null and {args.planted} planted-effect studies", flush=True)
    res = calibrate(layout, null=args.null, planted=args.planted, effect_dz=args.effect, seed=args.seed,
                    log=lambda s: print(s, flush=True))
    for line in report_lines(layout, res):
        print(line)
    checks = {}
    for name, fn in CHECKS.items():
        verdict, lines = fn(args.seed)
        checks[name] = verdict
        print(f"{name}: {verdict}")
        for line in lines:
            print(f"  {line}")
    fpr = res.familywise / res.null
    power = f"{res.detected / res.planted:.3f}" if res.planted else "not run"
    metric = S._primary(list(layout.metrics)) or "fid"
    print(f"false positives {fpr:.3f} at alpha {S.ALPHA:g} over {res.null} null studies; power {power} at effect "
          f"d_z {res.effect_dz:g} ({metric} {res.effect_units:.3g}, {layout.seeds} seeds); "
          f"{EXACT_DENOISER}: {checks.get(EXACT_DENOISER, 'not run')}")
    return 0
