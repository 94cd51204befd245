"""The claim that IS is less sensitive to the number of samples than FID: the reliability (ICC(1),
Shrout & Fleiss 1979) of one evaluation of each metric over runs evaluated on independent draws."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from scipy import special

from .pairs import EVAL_KEY, _Index
from .tests import ALPHA, POWER, _jackknife_se, icc1_jackknife
from .verdict import CLAIM_IS, DEFINITIONS, NO_DIFFERENCE, UNDERPOWERED, UNTESTED, Effect, Verdict, _routes


def _draw_tables(ix: _Index) -> tuple[dict[str, np.ndarray], int, list]:
    """Per metric (fid, is) a (runs, draws) table of the models evaluated on independent draws of both."""
    per: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for m in ("fid", "is"):
        for r in ix.by_metric.get(m, ()):
            dr = r.get("draws")
            if dr and len(dr.get("values") or ()) >= 2:
                per[(r.get("run"), str(r["labels"].get(EVAL_KEY)))][m] = dr
    both = [(key, d) for key, d in sorted(per.items(), key=lambda kv: str(kv[0])) if len(d) == 2]
    if not both:
        return {}, 0, []
    k = min(len(d[m]["values"]) for _, d in both for m in ("fid", "is"))
    return ({m: np.array([[float(v) for v in d[m]["values"][:k]] for _, d in both]) for m in ("fid", "is")}, k,
            [d["fid"].get("n") for _, d in both])


def claim_is_stability(sweeps: Sequence[dict] = (), seed: int = 0, *, records: Sequence[dict] = (), alpha: float = ALPHA,
                       ix: _Index | None = None) -> Verdict:
    """Claim: IS ranks runs more reliably than FID at a small sample count: ICC(1) of each metric
    over runs from independent draws (records' "draws"), compared with a jackknife t-interval over
    runs. `sweeps` (per run {"fid": {n: v}, "is": {n: v}}) are shown, not tested (see DEFINITIONS)."""
    claim = CLAIM_IS
    definition = DEFINITIONS[claim]
    ix = ix or _Index(records)
    tables, k, ns = _draw_tables(ix)
    shown = []
    rel = [(abs(s["fid"][min(s["fid"])] - s["fid"][max(s["fid"])]) / abs(s["fid"][max(s["fid"])]),
            abs(s["is"][min(s["is"])] - s["is"][max(s["is"])]) / abs(s["is"][max(s["is"])]))
           for s in sweeps if len(set(s.get("fid", {})) & set(s.get("is", {}))) >= 2
           and s["fid"][max(s["fid"])] and s["is"][max(s["is"])]]
    if rel:
        shown.append(f"n sweep (not tested: FID's bias in 1/n favours IS by construction): relative change from the "
                     f"smallest to the largest n, FID {np.mean([a for a, _ in rel]):.1%}, IS {np.mean([b for _, b in rel]):.1%} "
                     f"over {len(rel)} run(s)")
    if not tables:
        return Verdict(claim, UNTESTED, ["no run was evaluated on independent draws of FID and IS (add evaluation.draws, "
                                         "e.g. {n: 500, count: 4})"] + shown, 0, definition)
    runs = len(ns)
    if runs < 3:
        return Verdict(claim, UNDERPOWERED, [f"{runs} run(s) with draws of FID and IS; the comparison needs at least 3"]
                       + shown, runs, definition, unit="runs")
    icc_f, loo_f = icc1_jackknife(tables["fid"])
    icc_i, loo_i = icc1_jackknife(tables["is"])
    d_icc, se = icc_i - icc_f, _jackknife_se(loo_i - loo_f)
    se_f, se_i = _jackknife_se(loo_f), _jackknife_se(loo_i)
    df = runs - 1
    q = float(special.stdtrit(df, 0.975))
    if se > 0 and np.isfinite(d_icc):
        p_up, p_down = float(special.stdtr(df, -d_icc / se)), float(special.stdtr(df, d_icc / se))
    else:  # every leave-one-out estimate agrees
        p_up, p_down = (0.5, 0.5) if not d_icc else ((0.0, 1.0) if d_icc > 0 else (1.0, 0.0))
    n_txt = ", ".join(sorted({str(n) for n in ns}))
    ev = [f"reliability of one evaluation at n = {n_txt} ({k} independent draws per run, {runs} runs): ICC(1) FID "
          f"{icc_f:.3f} [{icc_f - q * se_f:.3f}, {icc_f + q * se_f:.3f}], IS {icc_i:.3f} [{icc_i - q * se_i:.3f}, "
          f"{icc_i + q * se_i:.3f}]; IS - FID = {d_icc:+.3f} [95% CI {d_icc - q * se:+.3f}, {d_icc + q * se:+.3f}] "
          f"(jackknife over runs), smallest detectable difference at 80% power about "
          f"{(q + float(special.stdtrit(df, POWER))) * se:.3f}"] + shown
    v = _routes(claim, runs, ev, [], {"supported": (p_up, True), "contradicted": (p_down, True)}, NO_DIFFERENCE, alpha)
    v.unit = "runs"
    v.effect = Effect(f"ICC(1) of one evaluation at n = {n_txt}, IS - FID", d_icc, (d_icc - q * se, d_icc + q * se),
                      "ICC", runs, (q + float(special.stdtrit(df, POWER))) * se)
    return v
