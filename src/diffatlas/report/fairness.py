"""The report's fairness section: how every configuration was sampled, and which comparisons gave
their two sides unequal sampling.

A comparison of two values of an axis (ddpm vs ncsn, vp vs ve, two schedules, guided vs unguided,
two network sizes) is the one :mod:`diffatlas.study.statistics` formed: the same axis, values and
matched evaluation settings (:attr:`Comparison.settings`); nothing is re-paired here. Within each
matched setting the two sides are checked for

* unequal NFE: the network evaluations actually spent differ (e.g. a discrete process with fewer
  levels than the requested steps, snapped to its own steps), or the NFE budgets differ;
* a different kind of sampler: one side stochastic (ancestral, SDE, Langevin, DDIM with eta > 0,
  EDM with S_churn > 0), the other a deterministic probability-flow ODE sampler;
* different x0 clipping.

Entries written before a field was recorded (nfe_budget, clip, grid, options) show "not recorded",
and an unrecorded field is never a reason for a flag.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..samplers.base import sampler_kind as registered_kind
from ..study import statistics as S

NOT_RECORDED = "not recorded"
FLAG = "FLAG"   # the first word of a flagged comparison's cell


def sampler_kind(sampler: Any, options: dict | None) -> str:
    """'stochastic (...)', 'ODE' or 'unknown' for a sampler name and its (resolved) options, as the
    sampler registry states it (samplers.base.sampler_kind); options None: not recorded."""
    return registered_kind(sampler, options)


def _is_stochastic(kind: str) -> bool | None:
    return None if kind == "unknown" else kind.startswith("stochastic")


def _plan_settings(evaluation: dict) -> list[dict]:
    return [s for s in (evaluation.get("samplers") or []) if isinstance(s, dict)]


def explicit_options(sampled: dict, evaluation: dict, run_config: dict) -> dict[str, str]:
    """Option name -> where it was set explicitly: the study's evaluation plan (the most specific plan
    setting that matches the entry) or the run's own config (sample.options); the rest are defaults."""
    opts = sampled.get("options") or {}
    out: dict[str, str] = {}
    sample = (run_config or {}).get("sample") or {}
    for k in (sample.get("options") or {}):
        if k in opts:
            out[k] = "run config"
    best, best_n = None, -1
    for s in _plan_settings(evaluation):
        keys = [k for k in ("sampler", "steps", "grid", "nfe", "clip") if s.get(k) is not None]
        if any(k in sampled and str(sampled[k]) != str(s[k]) for k in keys):
            continue
        if str(s.get("guidance") or "none") != str(sampled.get("guidance") or "none"):
            continue
        so = s.get("options") or {}
        if any(k not in opts or str(opts[k]) != str(v) for k, v in so.items()):
            continue
        if len(keys) + len(so) > best_n:
            best, best_n = s, len(keys) + len(so)
    for k in ((best or {}).get("options") or {}):
        out[k] = "evaluation plan"
    return out


def _fmt_value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe(sampled: dict | None, evaluation: dict, run_config: dict) -> dict[str, str]:
    """The cells of one configuration's row: sampler (kind), grid, steps, NFE, budget, clipping, options."""
    s = sampled or {}

    def field(k: str, none: str = "none") -> str:
        if k not in s:
            return NOT_RECORDED
        return none if s[k] is None else _fmt_value(s[k])

    if "options" not in s:
        options = NOT_RECORDED
    elif not s["options"]:
        options = "none (defaults)"
    else:
        where = explicit_options(s, evaluation, run_config)
        tuned = [f"{k}={_fmt_value(v)} ({where[k]})" for k, v in sorted(s["options"].items()) if k in where]
        default = [f"{k}={_fmt_value(v)}" for k, v in sorted(s["options"].items()) if k not in where]
        options = "; ".join(([f"tuned: {', '.join(tuned)}"] if tuned else []) +
                            ([f"defaults: {', '.join(default)}"] if default else []))
    sampler = field("sampler", "auto")
    kind = sampler_kind(s.get("sampler"), s.get("options")) if "sampler" in s else "unknown"
    return {"sampler": f"{sampler} ({kind})", "grid": field("grid", "auto"), "steps": field("steps", "auto"),
            "nfe": field("nfe"), "nfe_budget": field("nfe_budget", "none (steps)"), "clip": field("clip"),
            "options": options}


_COLUMNS = ("sampler", "grid", "steps", "nfe", "nfe_budget", "clip", "options")
SAMPLING_HEADER = ["configuration", "evaluation", "sampler (kind)", "grid", "steps", "NFE used", "NFE budget",
                   "x0 clipping", "sampler options", "runs"]


def sampling_rows(res: Any, config_label: Any) -> list[list[str]]:
    """One row per (configuration, evaluation setting): how its runs were sampled; where the runs of one
    configuration differ (a value per seed), every distinct value is shown."""
    axes = [a for a in res.axes if a != "guidance"]
    cells: dict[tuple[str, str], dict[str, list[str]]] = {}
    runs: dict[tuple[str, str], set] = defaultdict(set)
    for r in res.runs:
        conf = config_label(r.labels, axes)
        for (_, ev), sampled in sorted(r.sampled.items()):
            d = describe(sampled, res.evaluation, r.row.config)
            c = cells.setdefault((conf, ev), {k: [] for k in _COLUMNS})
            for k in _COLUMNS:
                if d[k] not in c[k]:
                    c[k].append(d[k])
            runs[(conf, ev)].add(r.id)
    return [[conf, ev] + [" / ".join(c[k]) for k in _COLUMNS] + [str(len(runs[(conf, ev)]))]
            for (conf, ev), c in cells.items()]


@dataclass
class Check:
    """The sampling of the two sides of one comparison at one matched setting."""

    axis: str
    a: str
    b: str
    setting: str
    metrics: list[str]
    nfe: tuple[list, list]
    kind: tuple[list, list]
    flags: list[str]
    claims: list[str]

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    def summary(self) -> str:
        """FLAG: the reasons; else what was found equal (a field neither side recorded is said so)."""
        if self.flags:
            return f"{FLAG}: " + "; ".join(self.flags)
        nfe = "same NFE" if self.nfe[0] and self.nfe[1] else f"NFE {NOT_RECORDED}"
        known = all(k != "unknown" for side in self.kind for k in side) and self.kind[0] and self.kind[1]
        return f"{nfe}, " + ("same kind of sampler" if known else "kind of sampler unknown")


def _values(recs: Iterable[dict], key: str) -> list:
    out = []
    for r in recs:
        v = (r.get("sampled") or {}).get(key)
        if v is not None and v not in out:
            out.append(v)
    return out


def _show(vals: Sequence) -> str:
    return "/".join(_fmt_value(v) for v in sorted(vals, key=str)) if vals else NOT_RECORDED


def _side_flags(a: str, b: str, ra: list[dict], rb: list[dict]) -> tuple[list[str], tuple, tuple]:
    flags = []
    na, nb = _values(ra, "nfe"), _values(rb, "nfe")
    if na and nb and set(map(float, na)) != set(map(float, nb)):
        lo, hi = (a, b) if max(map(float, na)) < max(map(float, nb)) else (b, a)
        flags.append(f"unequal NFE: {a} {_show(na)} vs {b} {_show(nb)} at the same requested setting ({lo} spent fewer "
                     f"network evaluations than {hi})")
    ba, bb = _values(ra, "nfe_budget"), _values(rb, "nfe_budget")
    if ba and bb and set(map(float, ba)) != set(map(float, bb)):
        flags.append(f"unequal NFE budget: {a} {_show(ba)} vs {b} {_show(bb)}")
    ka = sorted({sampler_kind((r.get("sampled") or {}).get("sampler"), (r.get("sampled") or {}).get("options"))
                 for r in ra if "sampler" in (r.get("sampled") or {})})
    kb = sorted({sampler_kind((r.get("sampled") or {}).get("sampler"), (r.get("sampled") or {}).get("options"))
                 for r in rb if "sampler" in (r.get("sampled") or {})})
    sa = {_is_stochastic(k) for k in ka} - {None}
    sb = {_is_stochastic(k) for k in kb} - {None}
    if sa and sb and sa != sb:
        flags.append(f"different kind of sampler: {a} {', '.join(ka)} vs {b} {', '.join(kb)}")
    ca, cb = _values(ra, "clip"), _values(rb, "clip")
    if ca and cb and set(map(str, ca)) != set(map(str, cb)):
        flags.append(f"different x0 clipping: {a} {_show(ca)} vs {b} {_show(cb)}")
    return flags, (na, nb), (ka, kb)


def check_comparisons(records: Sequence[dict], comparisons: Iterable[S.Comparison],
                      claims: dict[tuple[str, str, str], list[str]] | None = None) -> list[Check]:
    """The sampling of both sides of each comparison, per matched evaluation setting it averaged over.

    A model-level axis is matched on the evaluation setting; an evaluation-level one (guidance) on the
    setting without it ("sampling"), as statistics pairs them. One Check per (axis, a, b, setting,
    flags); the metrics that share it are listed together."""
    claims = claims or {}
    out: dict[tuple, Check] = {}
    for c in comparisons:
        if not c.n_pairs or not c.settings:
            continue
        axis, a, b = c.axis, str(c.a), str(c.b)
        within = axis in S.EVAL_LABELS
        match = "sampling" if within else S.EVAL_KEY
        used = set(c.settings)
        sides: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
        for r in records:
            lab = r["labels"]
            if r["metric"] != c.metric or axis not in lab or str(lab.get(S.EVAL_KEY)) not in used:
                continue
            v = str(lab[axis])
            if v in (a, b):
                sides[str(lab.get(match, lab.get(S.EVAL_KEY)))][0 if v == a else 1].append(r)
        for setting, (ra, rb) in sorted(sides.items()):
            if not ra or not rb:
                continue
            flags, nfe, kind = _side_flags(a, b, ra, rb)
            key = (axis, a, b, setting, tuple(flags))
            if key in out:
                if c.metric not in out[key].metrics:
                    out[key].metrics.append(c.metric)
                continue
            out[key] = Check(axis, a, b, setting, [c.metric], nfe, kind, flags, list(claims.get((axis, a, b), [])))
    return list(out.values())


CHECK_HEADER = ["axis", "a", "b", "matched setting", "metrics", "NFE a", "NFE b", "sampler kind a", "sampler kind b",
                "claims", "fairness"]


def check_rows(checks: Sequence[Check]) -> list[list[str]]:
    return [[k.axis, k.a, k.b, k.setting, ", ".join(k.metrics), _show(k.nfe[0]), _show(k.nfe[1]),
             ", ".join(k.kind[0]) or NOT_RECORDED, ", ".join(k.kind[1]) or NOT_RECORDED, "; ".join(k.claims) or "-",
             k.summary()] for k in checks]


def claim_map(verdicts: Sequence[S.Verdict], axes: Sequence[str]) -> dict[tuple[str, str, str], list[str]]:
    """(axis, a, b) -> the claims whose tests compare exactly that pair."""
    out: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for v in verdicts:
        for t in v.tests:
            if t.axis in axes:
                for key in ((t.axis, str(t.a), str(t.b)), (t.axis, str(t.b), str(t.a))):
                    if v.claim not in out[key]:
                        out[key].append(v.claim)
    return out
