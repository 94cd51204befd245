"""The report's "Threats to validity" paragraphs: scale, extractor, samples, seeds and smallest
detectable effect, evaluation noise, NFE, sampling defaults, settled curves, compute, multiplicity,
written from a study's results and verdicts alone.

Every number comes from the verdicts (study.statistics) or from the study's results and the runs'
recorded facts (study.results.run_facts); the fixed wording around them never carries a number of its
own beyond definitions (alpha, power). "What we found" and the shared number formatting live in
report.findings; the replication summary (report.summary) writes its threats with these functions.
"""

from __future__ import annotations

import math
import statistics as stats
from collections.abc import Sequence
from typing import Any

from ..metrics.spec import role as metric_role
from ..study import statistics as S
from . import fairness as FA
from .findings import _num, main_test


def _distinct(items: Sequence[Any]) -> list:
    out: list = []
    for x in items:
        if x not in out:
            out.append(x)
    return out


def _seeds(res: Any) -> list:
    return _distinct([r.labels.get("seed") for r in res.runs if r.labels.get("seed") is not None])


def _shape_text(shape: Sequence[int] | None) -> str:
    return "x".join(str(int(x)) for x in shape) if shape else ""


def scale_text(res: Any) -> str:
    """Datasets with their shapes, networks with their widths and parameter counts, the training budget."""
    data, nets, batches = [], [], []
    several = len({str(((r.row.config or {}).get("data") or {}).get("name")) for r in res.runs}) > 1
    for r in res.runs:
        cfg = r.row.config or {}
        d, n, f = cfg.get("data") or {}, cfg.get("network") or {}, r.facts
        shape = _shape_text(f.get("data_shape"))
        if shape:
            where = f"{shape} (channels x height x width)" if len(f["data_shape"]) == 3 else shape
        elif d.get("resolution"):
            where = f"resolution {d['resolution']}"
        else:
            where = "its native resolution (shape not recorded)"
        data.append(f"{d.get('name', '?')} at {where}")
        opts = ", ".join(f"{k}={v}" for k, v in sorted((n.get("options") or {}).items()))
        params = f"{f['params']:,} parameters" if isinstance(f.get("params"), int) else "parameters not recorded"
        on = f" on {d.get('name', '?')}" if several else ""
        nets.append(f"{n.get('preset', '?')}" + (f" ({opts})" if opts else "") + f"{on}: {params}")
        if (cfg.get("train") or {}).get("batch") is not None:
            batches.append(str(cfg["train"]["batch"]))
    budget = f"{res.budget_kimg:g} kimg (thousand training images seen)" if res.budget_kimg else "a budget not recorded"
    batch = f" at batch {' / '.join(_distinct(batches))}" if batches else ""
    return (f"Scale: data {'; '.join(_distinct(data)) or 'not recorded'}; networks {'; '.join(_distinct(nets)) or 'not recorded'}; "
            f"each run trained for {budget}{batch}. The paper's models are far larger and trained far longer; a "
            "ranking found at this scale may change at another, so every verdict here is a statement about this "
            "scale.")


def extractor_text(res: Any) -> str:
    used = [(m, str(v)) for r in res.runs for (m, _), v in r.extractor.items()
            if v is not None and metric_role(m) in ("quality", "class")]
    ex, metrics = _distinct([e for _, e in used]), _distinct([m for m, _ in used])
    if not ex:
        return "Metric: the feature extractor of FID/IS is not recorded."
    other = [e for e in ex if not e.startswith("inception")]
    text = f"Metric: {', '.join(metrics)} are computed with the extractor '{', '.join(ex)}'"
    if other:
        text += (", a classifier trained on the study's own dataset (its features for FID and KID, its class "
                 "probabilities for IS and class accuracy), not Inception-v3: these numbers rank models within "
                 "this study and are not comparable with published FID or IS values.")
    else:
        text += (": Inception-v3 features, as published FIDs use, but at this study's sample count and resolution "
                 "the values still differ from published ones.")
    return text


def samples_text(res: Any) -> str:
    ev = res.evaluation or {}
    text = f"Sample counts: each FID/IS value uses n = {res.n if res.n else 'not recorded'} generated samples"
    draws = ev.get("draws")
    if isinstance(draws, dict) and draws.get("n") and draws.get("count"):
        text += (f"; the IS-vs-FID reliability claim uses {draws['count']} independent draws of n = {draws['n']} "
                 "per run")
    if ev.get("n_sweep"):
        text += f"; an n sweep at {', '.join(str(x) for x in ev['n_sweep'])}"
    return text + (". FID is biased upward at small n (the bias falls as 1/n), so these values lie above their "
                   "large-sample limits; comparisons at equal n share the bias, but its size can differ between "
                   "models.")


def seeds_text(res: Any, verdicts: Sequence[S.Verdict]) -> str:
    seeds = _seeds(res)
    n = len(seeds)
    family = sum(1 for v in verdicts if math.isfinite(v.p_adj))
    if n < 2:
        return f"Seeds: {n} seed(s) per configuration: no comparison between configurations can be tested."
    dz = S.detectable_dz(n, S.ALPHA, S.POWER, S.ALPHA)
    text = f"Seeds: {n} seeds per configuration ({len(res.runs)} runs), so a comparison has at most {n} pairs of trained models."
    if not math.isfinite(dz):
        return text + (f" With {n} pairs the sign-flip check cannot go below p = {S.min_sign_flip_p(n):.3g}: no "
                       f"direction can be declared (that needs {S.min_pairs(S.ALPHA)} pairs).")
    text += (f" With {n} pairs the decision rule (paired t-test and sign-flip test) detects with {S.POWER:.0%} power a "
             f"standardized effect d_z of {dz:.2g} at alpha {S.ALPHA:g}")
    if family > 1:
        text += f", {S.detectable_dz(n, S.ALPHA / family, S.POWER, S.ALPHA):.2g} at Holm's strictest level (alpha/{family})"
    units = [f"{c.axis} {c.a} vs {c.b}: {c.detectable * c.sd:.3g} {c.metric}"
             for v in verdicts if (c := main_test(v)) is not None and v.claim != S.CLAIM_SIZE
             and math.isfinite(c.detectable) and c.sd > 0]
    if units:
        text += f" (in metric units: {'; '.join(units)})"
    return text + ("; smaller effects can go undetected, so 'no detectable difference' does not show that two "
                   "configurations are equal.")


def nfe_text(res: Any, checks: Sequence[FA.Check]) -> str:
    by_ev: dict[str, dict[str, list]] = {}
    for r in res.runs:
        for (_, ev), s in r.sampled.items():
            d = by_ev.setdefault(ev, {"nfe": [], "budget": []})
            for k, key in (("nfe", "nfe"), ("nfe_budget", "budget")):
                if s.get(k) is not None and s[k] not in d[key]:
                    d[key].append(s[k])
    if not by_ev:
        return "Sampling budget: the NFE of the evaluations is not recorded."
    parts = []
    for ev, d in sorted(by_ev.items()):
        used = "/".join(f"{x:g}" if isinstance(x, float) else str(x) for x in sorted(d["nfe"])) or FA.NOT_RECORDED
        budget = "/".join(str(x) for x in sorted(d["budget"], key=str))
        parts.append(f"{ev}: {used} NFE used" + (f" (budget {budget})" if budget else ""))
    flagged = sum(1 for c in checks if c.flagged)
    return (f"Sampling budget: {'; '.join(parts)}. Every verdict holds at these budgets; processes and samplers can "
            f"rank differently with more network evaluations per sample. {flagged} of {len(checks)} comparison "
            "checks gave their two sides unequal sampling (see 'Fairness of the comparisons').")


def defaults_text(res: Any) -> str:
    clips, grids = [], []
    for r in res.runs:
        for s in r.sampled.values():
            if "clip" in s:
                clips.append(str(s["clip"]))
            if "grid" in s:
                grids.append(str(s["grid"]))
    clip = ", ".join(_distinct(clips)) or FA.NOT_RECORDED
    grid = ", ".join(_distinct(grids)) or FA.NOT_RECORDED
    varied = "varied across evaluations" if len(_distinct(clips)) > 1 else "the same for every evaluation"
    return (f"Sampling defaults: x0 clipping {clip} ({varied}; static clips each x0 estimate to the data range, "
            f"dynamic thresholds it per sample), time grid {grid}. Clipping helps most the models whose x0 estimates "
            "overshoot the data range, so it can narrow or widen a difference between processes; a verdict holds "
            "for these defaults.")


def noise_text(res: Any, records: Sequence[dict]) -> str:
    """How much of the seed-to-seed spread is evaluation noise (statistics.evaluation_noise), where
    independent draws measured it."""
    shares = S.evaluation_noise(records, res.n) if res.n else []
    if not shares:
        return ("Evaluation noise: not measured (no run was evaluated on independent draws, evaluation.draws); each "
                "model's value is one evaluation, so its sampling noise is part of the spread between seeds that the "
                "tests already count, and a verdict near alpha can move with another draw.")
    parts = []
    for s in shares:
        pct = f"about {min(s.share, 1.0):.0%}" if math.isfinite(s.share) else "an unknown part"
        parts.append(f"{s.metric} ({s.setting}): sd {_num(s.sd_eval)} from sampling alone at n = {s.n} against sd "
                     f"{_num(s.sd_seeds)} between the seeds of one configuration, so {pct} of the seed-to-seed variance "
                     f"is evaluation noise ({s.draws} draws of n = {s.draw_n} on each of {s.models} models, scaled as 1/n)")
    high = [s.metric for s in shares if math.isfinite(s.share) and s.share >= 0.5]
    text = "Evaluation noise: " + "; ".join(parts) + "."
    if high:
        return text + (f" For {', '.join(dict.fromkeys(high))} the seeds differ mostly by evaluation noise: a verdict "
                       "near alpha can move with another draw of sampler noise, and a larger n (or averaged draws) "
                       "would sharpen these comparisons more than more seeds.")
    return text + (" The spread is mostly between trained models: more seeds, not more samples, would sharpen these "
                   "comparisons.")


def convergence_text(res: Any, records: Sequence[dict]) -> str | None:
    primary = next((m for m in ("fid", "is", "kid") if m in res.metrics), None)
    recs = [r for r in records if r["metric"] == primary]
    if not recs:
        return None
    settled = sum(1 for r in recs if r.get("settled") and r.get("converged_kimg") is not None)
    budget = f"the {res.budget_kimg:g}-kimg budget" if res.budget_kimg else "the training budget"
    text = (f"Training length: {settled} of {len(recs)} {primary} curves (run x evaluation setting) settled near their "
            f"plateau before {budget} ended (see 'Convergence').")
    if settled < len(recs) / 2:
        text += (" Most final values were still moving: longer training could change the rankings, and the "
                 "convergence claim cannot be shown similar.")
    return text


def duration(seconds: float) -> str:
    """A duration in the unit that reads best: seconds, minutes or hours."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def compute_text(res: Any) -> str:
    facts = [r.facts for r in res.runs if r.facts]
    if not facts:
        return ("Compute: the runs' devices and wall times are not recorded in these results (an export written "
                "before runs.csv carried them; `diffatlas study export` of the study folder records them).")
    devices = _distinct([f["device"] + (f" ({f['gpu']})" if f.get("gpu") else "") for f in facts if f.get("device")])
    torch = _distinct([f["torch"] for f in facts if f.get("torch")])
    text = (f"Compute: {len(facts)} of {len(res.runs)} runs record their facts; trained on "
            f"{', '.join(devices) if devices else 'devices not recorded'}")
    if torch:
        text += f" with torch {', '.join(torch)}"
    walls = [f["train_wall_s"] for f in facts if isinstance(f.get("train_wall_s"), (int, float))]
    if walls:
        text += (f"; training took {duration(stats.median(walls))} per run (median; {duration(sum(walls))} over "
                 f"{len(walls)} runs)")
    spans = [(f["started"], f["finished"]) for f in facts if isinstance(f.get("started"), (int, float))
             and isinstance(f.get("finished"), (int, float))]
    if spans:
        wall = max(b for _, b in spans) - min(a for a, _ in spans)
        text += (f"; the runs took {duration(sum(b - a for a, b in spans))} of worker time (training and "
                 f"evaluation), {duration(wall)} of wall time from the first start to the last finish")
    return text + "."


def wall_time_text(res: Any) -> str:
    """The study's wall time from its runs' recorded start and finish, or that it is not recorded."""
    spans = [(r.facts["started"], r.facts["finished"]) for r in res.runs
             if isinstance(r.facts.get("started"), (int, float)) and isinstance(r.facts.get("finished"), (int, float))]
    if not spans:
        return "wall time not recorded"
    wall = max(b for _, b in spans) - min(a for a, _ in spans)
    return f"wall time {duration(wall)} from the first run's start to the last run's finish ({len(spans)} runs)"


def multiplicity_text(verdicts: Sequence[S.Verdict]) -> str:
    family = sum(1 for v in verdicts if math.isfinite(v.p_adj))
    return (f"Multiplicity: the verdicts' p-values are Holm-corrected over the {family} claim(s) this study can "
            "decide; the pairwise comparisons over their own table; secondary tests (other metrics, single "
            "evaluation settings) among themselves. No correction here spans other studies.")


def threats(res: Any, records: Sequence[dict], verdicts: Sequence[S.Verdict], checks: Sequence[FA.Check]) -> list[str]:
    """The 'Threats to validity' paragraphs of one study, from its results alone."""
    out = [scale_text(res), extractor_text(res), samples_text(res), seeds_text(res, verdicts), noise_text(res, records),
           nfe_text(res, checks), defaults_text(res)]
    conv = convergence_text(res, records)
    if conv:
        out.append(conv)
    out += [compute_text(res), multiplicity_text(verdicts)]
    return out
