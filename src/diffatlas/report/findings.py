"""The report's generated prose: "What we found" (one paragraph per claim of arXiv 2402.13369) and
"Threats to validity", written from a study's verdicts and results alone.

Every number in these paragraphs comes from the verdicts (study.statistics) or from the study's
results and the runs' recorded facts (study.results.run_facts); the fixed wording around them says
what the numbers mean and never carries a number of its own beyond definitions (alpha, power).
The replication summary (report.summary) writes its paragraphs with the same functions.
"""

from __future__ import annotations

import math
import statistics as stats
from collections.abc import Sequence
from typing import Any

from ..metrics.spec import role as metric_role
from ..study import statistics as S
from . import fairness as FA

# What each claim needs before a study can decide it (said where a verdict is "not tested" or
# "underpowered"); the fixed design rule (6 pairs at alpha 0.05) is S.min_pairs.
NEEDS = {
    S.CLAIM_DISCRETE: "a study whose dynamics.name axis has both ddpm and ncsn, trained on the same data with the same "
                      "seeds, at least {k} seeds per side",
    S.CLAIM_SDE: "a study whose dynamics.name axis has both vp and ve, trained on the same data with the same seeds, "
                 "at least {k} seeds per side",
    S.CLAIM_CONVERGENCE: "a study that varies a schedule, sampler, steps, grid or guidance, evaluated at several "
                         "snapshots, with at least {k} seeds and a budget long enough for most curves to settle",
    S.CLAIM_GUIDANCE: "a study that evaluates each model unguided and with classifier guidance at one or more "
                      "strengths (evaluation.samplers with guidance), with class_accuracy among its metrics and at "
                      "least {k} seeds",
    S.CLAIM_SIZE: "a study with a network size axis (network.preset or a width such as network.base_channels) crossed "
                  "with a data.name axis of datasets of different complexity, at least {k} seeds",
    S.CLAIM_IS: "a study that evaluates each run's final snapshot on independent draws (evaluation.draws) with both FID "
                "and IS, at least 3 runs",
}


def _num(v: float, digits: int = 4) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}g}"


def _signed(v: float, digits: int = 4) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:+.{digits}g}"


def _ci(ci: tuple[float, float], digits: int = 4) -> str:
    return f"[95% CI {_signed(ci[0], digits)}, {_signed(ci[1], digits)}]"


def main_test(v: S.Verdict) -> S.Comparison | None:
    """The comparison a claim's verdict rests on (DDPM/NCSN, VP/VE, model size), if it has one."""
    if v.claim in (S.CLAIM_DISCRETE, S.CLAIM_SDE, S.CLAIM_SIZE) and v.tests and v.tests[0].n_pairs:
        return v.tests[0]
    return None


def _comparison_text(c: S.Comparison, size: bool = False) -> str:
    if size:
        head = (f"the relative {c.metric} gain of the largest over the smallest network, {c.a} minus {c.b}: "
                f"{c.diff:+.1%} [95% CI {c.ci[0]:+.1%}, {c.ci[1]:+.1%}]")
    else:
        word = "lower" if c.sign < 0 else "higher"
        head = f"{c.metric} {c.a} - {c.b} = {_signed(c.diff)} {_ci(c.ci)} ({word} is better)"
    if c.sd > 0 and math.isfinite(c.dz):
        head += f", standardized effect d_z {c.dz:+.2f} [{c.dz_ci[0]:+.2f}, {c.dz_ci[1]:+.2f}]"
    return head


def effect_text(v: S.Verdict) -> str | None:
    """The claim's effect size with its interval, in words and numbers; None where it has none."""
    c = main_test(v)
    if c is not None:
        return _comparison_text(c, size=v.claim == S.CLAIM_SIZE)
    if v.claim == S.CLAIM_GUIDANCE and v.tests:
        return "; ".join(f"{t.metric} at {t.a} minus unguided: {_signed(t.diff)} {_ci(t.ci)} ({t.n_pairs} models)"
                         for t in v.tests if t.n_pairs)
    e = v.effect
    if e is not None:
        text = f"{e.quantity} = {_signed(e.estimate, 3)} {e.unit} {_ci(e.ci, 3)}"
        if math.isfinite(e.margin):
            text += f" (equivalence margin +-{_num(e.margin, 3)} {e.unit})"
        return text
    return None


def short_effect(v: S.Verdict) -> str:
    """One cell's worth: the estimate and interval of the claim's effect, or '-'."""
    c = main_test(v)
    if c is not None:
        if v.claim == S.CLAIM_SIZE:
            return f"gain {c.a} - {c.b} {c.diff:+.1%} [{c.ci[0]:+.1%}, {c.ci[1]:+.1%}]"
        return f"{c.metric} {c.a} - {c.b} {_signed(c.diff)} [{_signed(c.ci[0])}, {_signed(c.ci[1])}]"
    if v.claim == S.CLAIM_GUIDANCE and v.tests:
        acc = [t for t in v.tests if metric_role(t.metric) == "class" and t.n_pairs]
        return "; ".join(f"{t.metric} {t.a} {_signed(t.diff, 3)} [{_signed(t.ci[0], 3)}, {_signed(t.ci[1], 3)}]"
                         for t in acc) or "-"
    e = v.effect
    if e is not None:
        return f"{e.unit} {_signed(e.estimate, 3)} [{_signed(e.ci[0], 3)}, {_signed(e.ci[1], 3)}]"
    return "-"


def detectable_text(v: S.Verdict) -> str | None:
    """The smallest effect the claim's design detects with 80% power, where the verdict says one."""
    c = main_test(v)
    if c is not None:
        det = c.detectable
        if not math.isfinite(det):
            return None
        if c.sd > 0:
            units = (f" = {det * c.sd * 100:.3g} percentage points of relative gain" if v.claim == S.CLAIM_SIZE
                     else f" = {det * c.sd:.3g} {c.metric}")
        else:
            units = ""
        return (f"the smallest effect this design detects with {S.POWER:.0%} power is d_z {det:.2g}{units} "
                f"(at Holm's strictest level, alpha {c.alpha_bar:.3g})")
    e = v.effect
    if e is not None and math.isfinite(e.detectable):
        return f"the smallest difference this design detects with {S.POWER:.0%} power is about {e.detectable:.3g} {e.unit}"
    return None


def _meaning(v: S.Verdict) -> str:
    """What the verdict says in plain words (fixed wording per claim and verdict)."""
    c = main_test(v)
    a, b = (str(c.a), str(c.b)) if c is not None else ("", "")
    word = v.verdict
    if v.claim in (S.CLAIM_DISCRETE, S.CLAIM_SDE):
        kind = "discrete" if v.claim == S.CLAIM_DISCRETE else "continuous-time (SDE)"
        metric = c.metric if c is not None else "the primary metric"
        return {
            "supported": f"In plain words: the DDPM-type process ({a}) gave better {metric} than the NCSN-type one "
                         f"({b}) in its {kind} form, as the paper says, for models trained as in this study.",
            "contradicted": f"In plain words: the NCSN-type process ({b}) gave better {metric} than the DDPM-type one "
                            f"({a}) in its {kind} form: the opposite of the paper's claim, for models trained as in "
                            "this study.",
            S.NO_DIFFERENCE: f"In plain words: this study cannot tell {a} and {b} apart in its {kind} form; a "
                             "difference smaller than the detectable one may exist, so this is not evidence that "
                             "they are equal.",
        }.get(word, "")
    if v.claim == S.CLAIM_CONVERGENCE:
        return {
            "supported": "In plain words: changing the schedule, the sampler or the other factors compared moved the "
                         "point where quality settles by less than the equivalence margin.",
            "contradicted": "In plain words: some factor moves the point where quality settles by more than the "
                            "equivalence margin, so configurations do not stabilise at a similar point.",
            S.INCONCLUSIVE: "In plain words: neither similarity nor a difference beyond the margin could be shown; "
                            + ("most curves had not settled when training stopped, so a longer training budget "
                               "would decide it." if any("never settled" in e for e in v.evidence)
                               else "more seeds would narrow the intervals."),
        }.get(word, "")
    if v.claim == S.CLAIM_GUIDANCE:
        return {
            "supported": "In plain words: classifier guidance raised class accuracy at every strength tried, and some "
                         "sample-quality metric got worse: guidance trades quality for class fidelity, as the paper "
                         "says.",
            "contradicted": "In plain words: guidance either lowered class accuracy or improved every quality metric "
                            "at every strength: the paper's trade-off did not appear.",
            S.INCONCLUSIVE: "In plain words: the evaluations do not show the trade-off or its absence clearly enough; "
                            "more seeds or stronger guidance would decide it.",
        }.get(word, "")
    if v.claim == S.CLAIM_SIZE:
        return {
            "supported": "In plain words: a larger network helped more on the more complex dataset, as the paper "
                         "says.",
            "contradicted": "In plain words: a larger network helped less on the more complex dataset: the opposite "
                            "of the paper's claim.",
            S.NO_DIFFERENCE: "In plain words: the benefit of a larger network was not detectably different between "
                             "the datasets; a smaller difference may exist.",
        }.get(word, "")
    if v.claim == S.CLAIM_IS:
        return {
            "supported": "In plain words: at this sample count one IS evaluation ranks the runs more reliably than "
                         "one FID evaluation, as the paper says.",
            "contradicted": "In plain words: at this sample count one IS evaluation ranks the runs less reliably than "
                            "one FID evaluation: the opposite of the paper's claim.",
            S.NO_DIFFERENCE: "In plain words: IS and FID ranked the runs about equally reliably at this sample count.",
        }.get(word, "")
    return ""


def why_undecided(v: S.Verdict) -> str:
    """Why a claim is 'not tested' or 'underpowered' (the verdict's own first line), and what would decide it."""
    reason = v.evidence[0] if v.evidence else "the study lacks what the claim needs"
    need = NEEDS.get(v.claim, "a study designed for it").format(k=S.min_pairs(S.ALPHA))
    return f"{reason}. What would decide it: {need}."


def claim_paragraph(v: S.Verdict, family: int, seeds: int | None = None, named: bool = True) -> str:
    """One claim's paragraph: its verdict, effect with interval, corrected p, pairs and meaning
    (`named`: starting with the claim)."""
    head = f"{v.claim}: " if named else ""
    if v.verdict in (S.UNTESTED, S.UNDERPOWERED):
        return f"{head}{v.verdict}, because {why_undecided(v)}"
    parts = [f"{head}{v.verdict}."]
    eff = effect_text(v)
    if eff:
        parts.append(f"Effect: {eff}.")
    p = (f"p = {v.p_adj:.3g} after the Holm correction over the {family} claim(s) this study decides"
         if math.isfinite(v.p_adj) else "no p-value")
    if (v.lean in ("supported", "contradicted") and not v.robust and v.verdict == v.undecided
            and math.isfinite(v.p_adj) and v.p_adj < S.ALPHA):
        p += " (the sign-flip check of the leading direction failed)"
    of = f", {seeds} seeds per configuration" if seeds else ""
    parts.append(f"{p}; {v.n} {v.unit}{of}.")
    if v.verdict in (S.NO_DIFFERENCE, S.INCONCLUSIVE):
        det = detectable_text(v)
        if det:
            parts.append(det[0].upper() + det[1:] + ".")
    meaning = _meaning(v)
    if meaning:
        parts.append(meaning)
    return " ".join(parts)


def what_we_found(verdicts: Sequence[S.Verdict], seeds: int | None = None) -> list[str]:
    family = sum(1 for v in verdicts if math.isfinite(v.p_adj))
    return [claim_paragraph(v, family, seeds) for v in verdicts]


# ---- threats to validity ----------------------------------------------------------------------------

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
