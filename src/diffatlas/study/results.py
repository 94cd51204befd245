"""Read a study's output folder: the ledger, each run's stats.jsonl and metrics.jsonl, into curves and
records for statistics and reports.

metrics.jsonl entries at the study's evaluation seed make the curves (at the study's n) and the n
sweep (every n, final snapshot); entries of the independent draws (evaluation.draws: n samples
from per-sample seed draws.seed + j * n, j < count) are kept apart and ride on the records of
their (metric, setting) as "draws"; any other seed is ignored. Each record also carries "sampled":
how its final value was sampled (the entry's sampler, grid, steps, nfe, nfe_budget, clip, options;
a field an older entry lacks is absent), for the report's fairness check. Tuning runs (a study's
`tune` section, labelled phase=tuning) are left out: they are no seed of the comparison."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint import read_stats
from ..errors import UserError
from ..io import read_json
from ..samplers.plan import request_label
from .convergence import convergence_point
from .ledger import Ledger, RunRow
from .spec import is_tuning
from .statistics import EVAL_KEY


def eval_label(entry: dict) -> str:
    """The evaluation setting of a metric entry, as requested ('ddim x10', 'heun nfe20', 'default';
    samplers.plan.request_label), with its guidance. Entries written before requests were recorded
    read as 'sampler xSTEPS'."""
    s, k = entry.get("sampler"), entry.get("steps")
    label = entry.get("setting") or ("default" if s is None and k is None else f"{s or 'auto'} x{k}" if k is not None
                                     else str(s))
    g = entry.get("guidance")
    return f"{label} {g}" if g not in (None, "none") else label


def setting_label(setting: dict) -> str:
    """The label a study's evaluation setting (study.spec) gets in its entries: eval_label's."""
    label = request_label(setting.get("sampler"), setting.get("steps"), setting.get("nfe"), setting.get("grid"),
                          setting.get("options"), setting.get("clip"))
    g = setting.get("guidance")
    return f"{label} {g}" if g not in (None, "none") else label


def last_stats(run_dir: Path) -> dict | None:
    stats = read_stats(run_dir)
    return stats[-1] if stats else None


def run_metrics(run_dir: Path) -> list[dict]:
    """Every entry of RUN/metrics.jsonl in file order (not deduplicated)."""
    from ..evaluation import read_metrics  # on use: keeps the evaluation layer out of `diffatlas --help`

    return read_metrics(run_dir, dedupe=False)


@dataclass
class RunResult:
    row: RunRow
    entries: list[dict] = field(default_factory=list)
    curves: dict[tuple[str, str], list[tuple[float, float]]] = field(default_factory=dict)  # (metric, eval) -> [(kimg, value)]
    sweeps: dict[tuple[str, str], dict[int, float]] = field(default_factory=dict)           # (metric, eval) -> {n: value} at final kimg
    guidance: dict[str, str] = field(default_factory=dict)                                   # eval label -> guidance
    sampling: dict[str, str] = field(default_factory=dict)                                   # eval label -> label without guidance
    draws: dict[tuple[str, str], dict] = field(default_factory=dict)                         # (metric, eval) -> {n, kimg, seeds, values}
    higher_is_better: dict[str, bool] = field(default_factory=dict)                          # metric -> its entries' direction
    sampled: dict[tuple[str, str], dict] = field(default_factory=dict)                       # (metric, eval) -> SAMPLED_FIELDS of the final entry
    extractor: dict[tuple[str, str], str | None] = field(default_factory=dict)              # (metric, eval) -> feature extractor of the final entry
    sweep_kimg: dict[tuple[str, str], float] = field(default_factory=dict)                  # (metric, eval) -> kimg of its n sweep
    facts: dict = field(default_factory=dict)                                                # run_facts: scale and compute, as recorded

    @property
    def id(self) -> str:
        return self.row.id

    @property
    def run_dir(self) -> Path:
        return Path(self.row.run_dir)

    @property
    def labels(self) -> dict:
        return self.row.labels


@dataclass
class StudyResults:
    out: Path
    name: str
    runs: list[RunResult]
    axes: list[str]                 # axis keys (labels other than seed)
    metrics: list[str]
    budget_kimg: float | None
    n: int | None
    guided: bool = False            # some evaluation used guidance: "guidance" becomes an axis
    evaluation: dict = field(default_factory=dict)   # the study's evaluation plan as the ledger recorded it
    # An exported study (study.export) carries its sample grids: (figures as (name, png path, caption), notes);
    # None: a live study output, whose grids are read from its runs (or sampled) when a report is built.
    sample_grids: tuple[list[tuple[str, Path, str]], list[str]] | None = None

    def records(self, rel_tol: float = 0.05, k: int = 3) -> list[dict]:
        """One record per (run, evaluation setting, metric): final value and convergence kimg."""
        recs = []
        for r in self.runs:
            for (metric, ev), curve in r.curves.items():
                if not curve:
                    continue
                ks = [c[0] for c in curve]
                vs = [c[1] for c in curve]
                conv = convergence_point(ks, vs, rel_tol=rel_tol, k=k) if len(curve) >= 2 else None
                labels = {**r.labels, EVAL_KEY: ev}
                if self.guided:
                    labels["guidance"] = r.guidance.get(ev, "none")
                    labels["sampling"] = r.sampling.get(ev, ev)
                rec = {"run": r.id, "labels": labels, "metric": metric, "final": vs[-1],
                       "final_kimg": ks[-1], "converged_kimg": conv.kimg if conv else None,
                       "plateau": conv.plateau if conv else vs[-1], "settled": conv.settled if conv else False,
                       "budget_kimg": self.budget_kimg or r.row.config.get("train", {}).get("kimg"),
                       "higher_is_better": r.higher_is_better.get(metric)}
                if (metric, ev) in r.draws:
                    rec["draws"] = r.draws[(metric, ev)]
                if (metric, ev) in r.sampled:
                    rec["sampled"] = r.sampled[(metric, ev)]
                recs.append(rec)
        return recs

    def sweeps(self) -> list[dict]:
        """Per (run, evaluation setting): {metric: {n: value}} at the final snapshot."""
        out = []
        for r in self.runs:
            by_ev: dict[str, dict] = defaultdict(dict)
            for (metric, ev), d in r.sweeps.items():
                if len(d) >= 2:
                    by_ev[ev][metric] = d
            out.extend(by_ev.values())
        return out


# How an entry was sampled: what the report's fairness section lists. An older entry may lack some.
SAMPLED_FIELDS = ("sampler", "grid", "steps", "nfe", "nfe_budget", "clip", "options", "guidance", "setting")


# What a run's folder records about its scale and compute (run_facts); an older run may lack any of them.
FACT_KEYS = ("params", "network", "data_shape", "device", "gpu", "torch", "train_wall_s", "started", "finished")


def run_facts(row: RunRow) -> dict:
    """The scale and compute of one run, as its folder and the ledger recorded them: network
    parameters and preset (network.json), the data's shape (dataset.json), the device, GPU and torch
    it trained with (environment.json), the training's wall seconds (the last tick of stats.jsonl)
    and the ledger's start and finish times of its last attempt (seconds since the epoch). A file that
    is missing or unreadable leaves its facts out: they describe the run, they decide nothing."""
    run_dir = Path(row.run_dir)
    out: dict = {}

    def read(name: str) -> dict:
        if not (run_dir / name).is_file():
            return {}
        try:
            return read_json(run_dir / name, name)
        except UserError:
            return {}

    net, data, env = read("network.json"), read("dataset.json"), read("environment.json")
    if isinstance(net.get("params"), int):
        out["params"] = net["params"]
    if net.get("preset") is not None:
        out["network"] = str(net["preset"])
    if isinstance(data.get("shape"), list):
        out["data_shape"] = [int(x) for x in data["shape"] if isinstance(x, int)]
    for k in ("device", "gpu", "torch"):
        if env.get(k) is not None:
            out[k] = str(env[k])
    try:
        stats = read_stats(run_dir) if (run_dir / "stats.jsonl").is_file() else []
    except UserError:
        stats = []
    if stats and isinstance(stats[-1].get("wall_s"), (int, float)):
        out["train_wall_s"] = float(stats[-1]["wall_s"])
    if row.started is not None and row.finished is not None and row.status == "done":
        out["started"], out["finished"] = float(row.started), float(row.finished)
    return out


def _is_draw(entry: dict, seed: int, plan: dict | None) -> bool:
    """Whether a metrics.jsonl entry is one of the study's independent draws (evaluation.draws)."""
    if not plan or entry.get("n") != plan.get("n"):
        return False
    j, rest = divmod(seed - int(plan["seed"]), int(plan["n"]))
    return rest == 0 and 0 <= j < int(plan["count"])


def load_results(out: str | Path, n: int | None = None) -> StudyResults:
    """Collect everything a report needs from a study output folder. `n`: the sample count of
    the curves (default: the study's evaluation.n recorded in the ledger, else the most common)."""
    out = Path(out)
    db = out / "ledger.sqlite"
    if not db.is_file():
        raise UserError(f"{str(out)!r} holds no study results (no ledger.sqlite); run `diffatlas study run` first")
    with Ledger(db) as ledger:
        rows = ledger.rows()
        ids = ledger.get_meta("run_ids")
        name = ledger.get_meta("study_name", out.name)
        ev = ledger.get_meta("evaluation") or {}
        budget = ledger.get_meta("budget_kimg")
    if ids is not None:
        keep = set(ids)
        rows = [r for r in rows if r.id in keep]
    rows = [r for r in rows if not is_tuning(r.labels)]  # tuning runs (study.tuning) are no seed of the comparison
    n = n or ev.get("n")
    ev_seed = int(ev.get("seed") or 0)
    draws_plan = ev.get("draws") or None
    runs = []
    metrics: list[str] = list(ev.get("metrics") or [])
    for row in rows:
        rr = RunResult(row)
        rr.entries = run_metrics(Path(row.run_dir))
        rr.facts = run_facts(row)
        runs.append(rr)
        for e in rr.entries:
            if e.get("metric") not in metrics and e.get("metric") is not None:
                metrics.append(e["metric"])
    if n is None:
        counts: dict[int, int] = defaultdict(int)
        for rr in runs:
            for e in rr.entries:
                if int(e.get("seed") or 0) == ev_seed:
                    counts[e.get("n")] += 1
        n = max(counts, key=counts.get) if counts else None
    for rr in runs:
        curves: dict[tuple[str, str], dict[float, float]] = defaultdict(dict)
        by_n: dict[tuple[str, str], dict[float, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
        draws: dict[tuple[str, str], dict[float, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
        for e in rr.entries:
            try:
                kimg, value, metric = float(e["kimg"]), float(e["value"]), str(e["metric"])
            except (KeyError, TypeError, ValueError):
                continue
            key = (metric, eval_label(e))
            if e.get("guidance") not in (None, "none"):
                rr.guidance[key[1]] = str(e["guidance"])
                rr.sampling[key[1]] = eval_label({**e, "guidance": None})
            if e.get("higher_is_better") is not None:
                rr.higher_is_better[metric] = bool(e["higher_is_better"])
            seed = int(e.get("seed") or 0)
            if seed != ev_seed:
                if _is_draw(e, seed, draws_plan):
                    draws[key][kimg][seed] = value
                continue
            if e.get("n") == n:
                curves[key][kimg] = value
                if kimg >= max(curves[key]):
                    rr.sampled[key] = {f: e[f] for f in SAMPLED_FIELDS if f in e}
                    rr.extractor[key] = e.get("extractor")
            if e.get("n") is not None:
                by_n[key][kimg][int(e["n"])] = value
        rr.curves = {k: sorted(v.items()) for k, v in curves.items()}
        for key, per_kimg in by_n.items():
            last = max(per_kimg)
            rr.sweeps[key] = dict(sorted(per_kimg[last].items()))
            rr.sweep_kimg[key] = last
        for key, per_kimg in draws.items():
            last = max(per_kimg)
            seeds = sorted(per_kimg[last])
            rr.draws[key] = {"n": int(draws_plan["n"]), "kimg": last, "seeds": seeds,
                             "values": [per_kimg[last][s] for s in seeds]}
    axes: list[str] = []
    for r in rows:
        for k in r.labels:
            if k != "seed" and k not in axes:
                axes.append(k)
    guided = any(rr.guidance for rr in runs)
    if guided and "guidance" not in axes:
        axes.append("guidance")
    return StudyResults(out, name, runs, axes, metrics, budget, n, guided, ev)
