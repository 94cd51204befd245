"""The report's "What we found" (one paragraph per claim of arXiv 2402.13369), written from a study's
verdicts alone, and the number formatting its paragraphs share with "Threats to validity"
(report.threats).

Every number in these paragraphs comes from the verdicts (study.statistics); the fixed wording around
them says what the numbers mean and never carries a number of its own beyond definitions (alpha,
power). The replication summary (report.summary) writes its paragraphs with the same functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..metrics.spec import role as metric_role
from ..study import statistics as S

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
