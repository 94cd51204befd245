"""Tuning before the seeded comparison (a study's `tune:` section), so that no verdict rests on a
mistuned configuration: every configuration gets the same small budget on a held-out seed.

Phase 1 (the tuning runs, spec.Study.tuning_runs): every configuration trains the held-out seed once
per grid candidate (the same candidates and kimg for every configuration), each evaluated at its
final snapshot with the deciding evaluation setting on the deciding metric only. Phase 2: once every
tuning run is done, `decide` reads those final values, picks each configuration's best candidate by
the metric's direction (statistics.direction; a tie goes to the first candidate in grid order, a
non-finite value, e.g. a diverged run, loses to every finite one) and writes OUT/tuning.json
atomically; the seeded runs are then expanded with the chosen values (a run's id hashes its config,
so they cannot exist before). tuning.json is the record the report shows and, while it describes
the study's current tuning (`tune` section, deciding setting, tuning runs), the choice every later
`study run` uses: the choice is never recomputed from metrics that may change afterwards.

tuning.json: {format, study, tune: {seed, grid, metric, higher_is_better, setting, setting_label, n,
extractor, evaluation_seed, budget_kimg}, ties, configurations: [{labels, candidates: [{values,
run, value, kimg, note?}], chosen_index, chosen}]}; value null (with a note) where the metric was not
finite.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from ..io import atomic_write_text, read_json
from .results import eval_label, run_metrics, setting_label
from .spec import RunSpec, Study, short_key
from .statistics import direction

TUNING_FILE = "tuning.json"
TUNING_IDS_KEY = "tuning_run_ids"  # ledger meta: the tuning runs' ids, kept apart from the comparison's run_ids
FORMAT = 1
TIES = "the first candidate in grid order wins a tie"


def tune_record(study: Study, tuning: list[RunSpec]) -> dict:
    """What identifies a study's tuning: its section, resolved, with the deciding setting as evaluated."""
    t, ev = study.tune, study.evaluation
    assert t is not None
    budgets = sorted({float(r.config.train.kimg) for r in tuning})
    rec = {"seed": t.seed, "grid": t.grid, "metric": t.metric, "higher_is_better": direction(t.metric) > 0,
           "setting": t.setting, "setting_label": setting_label(ev.samplers[t.setting]), "n": ev.n,
           "extractor": ev.extractor, "evaluation_seed": ev.seed,
           "budget_kimg": budgets[0] if len(budgets) == 1 else budgets}
    return json.loads(json.dumps(rec, default=str))  # as it reads back from the file


def _by_configuration(study: Study, tuning: list[RunSpec]) -> list[tuple[dict, list[tuple[dict, RunSpec]]]]:
    """(combination, [(candidate, tuning run)]) per configuration, in the order of tuning_runs."""
    assert study.tune is not None
    cands = study.tune.candidates()
    combos = study.combinations()
    if len(tuning) != len(combos) * len(cands):
        raise ValueError("tuning runs do not match the study's configurations and grid")
    k = len(cands)
    return [(combo, list(zip(cands, tuning[i * k:(i + 1) * k]))) for i, combo in enumerate(combos)]


def load_choices(out: Path, study: Study, tuning: list[RunSpec], log: Callable[[str], object] | None = None
                 ) -> list[dict] | None:
    """The chosen values per configuration from OUT/tuning.json, or None when there is no record of
    this study's current tuning (none yet, or one of a different tune section or tuning runs)."""
    path = Path(out) / TUNING_FILE
    if not path.exists():
        return None
    rec = read_json(path, "tuning record", "move it away: `diffatlas study run` decides again from the tuning runs")
    confs = _by_configuration(study, tuning)
    try:
        same = (rec.get("tune") == tune_record(study, tuning) and len(rec["configurations"]) == len(confs)
                and all([c["run"] for c in got["candidates"]] == [r.id for _, r in pairs]
                        for got, (_, pairs) in zip(rec["configurations"], confs)))
        chosen = [int(c["chosen_index"]) for c in rec["configurations"]] if same else None
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UserError(f"tuning record {str(path)!r} is damaged; move it away: `diffatlas study run` decides again "
                        "from the tuning runs") from None
    if chosen is None:
        if log is not None:
            log(f"{path} records another tuning (its tune section, deciding setting or tuning runs differ); "
                "this study is tuned again and the record replaced once its tuning runs are done")
        return None
    cands = study.tune.candidates()
    if any(not 0 <= j < len(cands) for j in chosen):
        raise UserError(f"tuning record {str(path)!r} is damaged (a chosen index outside the grid); move it away")
    return [dict(cands[j]) for j in chosen]


def final_value(run_dir: Path, study: Study) -> tuple[float, float] | None:
    """(kimg, value) of the deciding metric at the run's last evaluated snapshot, with the deciding
    setting at the study's n and evaluation seed (NaN where the entry's value is null: not finite);
    None if the run has no such entry."""
    t, ev = study.tune, study.evaluation
    assert t is not None
    label = setting_label(ev.samplers[t.setting])
    best: tuple[float, float] | None = None
    for e in run_metrics(run_dir):
        try:
            ok = (e.get("metric") == t.metric and eval_label(e) == label and e.get("n") == ev.n
                  and int(e.get("seed") or 0) == ev.seed)
            kimg = float(e["kimg"])
            value = math.nan if e["value"] is None else float(e["value"])  # evaluation records a non-finite value as null
        except (KeyError, TypeError, ValueError):
            continue
        if ok and (best is None or kimg >= best[0]):
            best = (kimg, value)
    return best


def choose(values: list[float | None], higher_is_better: bool) -> int:
    """The index of the best value; a tie goes to the first, None and non-finite values lose; -1 if none is finite."""
    best = -1
    for j, v in enumerate(values):
        if v is None or not math.isfinite(v):
            continue
        if best < 0 or (v > values[best] if higher_is_better else v < values[best]):
            best = j
    return best


def configuration_label(combo: dict) -> str:
    return ", ".join(f"{short_key(k)}={v}" for k, v in combo.items()) or "base"


def decide(out: Path, study: Study, tuning: list[RunSpec], run_dirs: dict[str, Path]) -> tuple[list[dict], dict]:
    """Phase 2's first step, once every tuning run is done: each configuration's choice from its
    candidates' final values, written to OUT/tuning.json (atomically). Returns (chosen values per
    configuration, the record). `run_dirs`: tuning run id -> its folder (the ledger's)."""
    t = study.tune
    assert t is not None
    rec = {"format": FORMAT, "study": study.name, "tune": tune_record(study, tuning), "ties": TIES,
           "configurations": []}
    higher = rec["tune"]["higher_is_better"]
    choices = []
    for combo, pairs in _by_configuration(study, tuning):
        cands, values = [], []
        for cand, run in pairs:
            got = final_value(run_dirs[run.id], study)
            if got is None:
                raise UserError(f"tuning run {run.id} ({configuration_label({**combo, **cand})}) is done but its folder "
                                f"{str(run_dirs[run.id])!r} holds no {t.metric} entry for the setting "
                                f"{rec['tune']['setting_label']!r} at n={study.evaluation.n}; evaluate it, or remove "
                                "the folder so that `diffatlas study run` does the run again")
            kimg, value = got
            entry = {"values": cand, "run": run.id, "value": value if math.isfinite(value) else None, "kimg": kimg}
            if not math.isfinite(value):
                entry["note"] = f"{t.metric} not finite (the run diverged); it loses to every finite value"
            cands.append(entry)
            values.append(value)
        j = choose(values, higher)
        if j < 0:
            raise UserError(f"tuning: every candidate of configuration {configuration_label(combo)} gave a non-finite "
                            f"{t.metric} (each run diverged); change tune.grid")
        rec["configurations"].append({"labels": combo, "candidates": cands, "chosen_index": j, "chosen": pairs[j][0]})
        choices.append(dict(pairs[j][0]))
    atomic_write_text(Path(out) / TUNING_FILE, json.dumps(rec, indent=2, default=str) + "\n")
    return choices, rec


def plan_lines(study: Study, tuning: list[RunSpec]) -> list[str]:
    """What `study plan` says about the tuning of a study (`tuning`: its tuning runs)."""
    t = study.tune
    assert t is not None
    ev = study.evaluation
    budgets = sorted({float(r.config.train.kimg) for r in tuning})
    grid = "; ".join(f"{k} in {v}" for k, v in t.grid.items())
    better = "higher" if direction(t.metric) > 0 else "lower"
    first = (f"tuning first: {len(tuning)} tuning run(s) = {len(study.combinations())} configuration(s) x "
             f"{len(t.candidates())} candidate(s) ({grid}) on the held-out seed {t.seed}, "
             f"{'/'.join(f'{b:g}' for b in budgets)} kimg each, evaluated at the final snapshot with evaluation setting "
             f"{t.setting} ({setting_label(ev.samplers[t.setting])}) on {t.metric} at n={ev.n}")
    second = (f"the seeded runs take each configuration's best candidate ({better} {t.metric} is better; {TIES}): their "
              f"{', '.join(t.keys)} is chosen from the grid, so their ids are known after tuning (listed as 'after "
              "tuning', costed with the first candidate)")
    return [first, second]


def plan_runs(study: Study, resolve: Callable | None = None) -> list[RunSpec]:
    """The runs `study plan` lists: the tuning runs, then the seeded runs with the first candidate
    standing in for the choice (id 'after tuning', the tuned keys labelled 'tuned')."""
    from dataclasses import replace

    if study.tune is None:
        return study.runs(resolve)
    tuning = study.tuning_runs(resolve)
    first = study.tune.candidates()[0]
    seeded = study.runs(resolve, [first] * len(study.combinations()))
    marked = [replace(r, id="after tuning", index=len(tuning) + i,
                      labels={**r.labels, **{k: "tuned" for k in study.tune.keys}}) for i, r in enumerate(seeded)]
    return tuning + marked
