"""The report's "What was tuned" section: a study's tuning (its `tune` section, study.tuning) as
recorded in tuning.json of the study folder or of its export: the grid, the held-out seed, the
budget, and per configuration every candidate's final metric and the choice."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import read_json
from ..study.spec import short_key
from ..study.tuning import TUNING_FILE, configuration_label

TITLE = "What was tuned"


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "not finite"
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def tuning_table(folder: str | Path) -> tuple[list[str], list[str], list[list[str]]] | None:
    """(text, table header, table rows) of the study's tuning, or None when `folder` holds no tuning.json."""
    path = Path(folder) / TUNING_FILE
    if not path.is_file():
        return None
    fix = "export the study again, or move it away and run `diffatlas study run` to decide the tuning again"
    rec = read_json(path, "tuning record", fix)
    try:
        t = rec["tune"]
        confs = rec["configurations"]
        grid = {str(k): list(v) for k, v in t["grid"].items()}
        cand_labels = [configuration_label(c["values"]) for c in confs[0]["candidates"]] if confs else []
        better = "higher" if t["higher_is_better"] else "lower"
        budget = t["budget_kimg"]
        text = [
            f"Before the seeded comparison every configuration trained the held-out seed {t['seed']} (not one of the "
            f"comparison's seeds) once per candidate of the grid "
            + "; ".join(f"{short_key(k)} ({k}) in {v}" for k, v in grid.items())
            + f": the same {len(cand_labels)} candidate(s) and "
            f"{'/'.join(f'{b:g}' for b in budget) if isinstance(budget, list) else f'{budget:g}'} kimg of training for "
            f"every configuration. Each tuning run was evaluated at its final snapshot with the evaluation setting "
            f"{t['setting_label']} on {t['metric']} (n = {t['n']}, {t['extractor']} features, per-sample seeds from "
            f"{t['evaluation_seed']}); each configuration's seeded runs use its best candidate ({better} "
            f"{t['metric']} is better; {rec.get('ties', 'the first candidate in grid order wins a tie')}; a non-finite "
            "value loses). The tuning runs are not part of any comparison above or below. The table: the final "
            f"{t['metric']} of each candidate on the held-out seed, and the choice."]
        header = ["configuration", *(f"{label}: {t['metric']}" for label in cand_labels), "chosen"]
        rows = []
        for c in confs:
            cands = c["candidates"]
            if [configuration_label(x["values"]) for x in cands] != cand_labels:
                raise ValueError("configurations with different candidates")
            rows.append([configuration_label(c["labels"]), *(_fmt(x["value"]) for x in cands),
                         configuration_label(c["chosen"])])
        edges = _edge_choices(grid, confs)
        if edges:
            text.append(f"The choice lies at the edge of the grid for {len(edges)} of {len(confs)} configuration(s) ("
                        + "; ".join(edges) + "): the best value may lie beyond the grid, so those configurations may "
                        "still be mistuned; a wider grid would tell.")
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise UserError(f"tuning record {str(path)!r} is damaged ({type(e).__name__}: {e}); {fix}") from None
    return text, header, rows


def _edge_choices(grid: dict[str, list], confs: list[dict]) -> list[str]:
    """'configuration: key=value, its smallest/largest value' for each configuration whose chosen value
    of a numeric key with at least 3 candidates is the grid's smallest or largest."""
    out = []
    for c in confs:
        ends = []
        for key, values in grid.items():
            nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            v = c["chosen"].get(key)
            if len(nums) < 3 or len(nums) != len(values) or v not in nums:
                continue
            if v in (min(nums), max(nums)):
                ends.append(f"{short_key(key)}={v:g}, its {'smallest' if v == min(nums) else 'largest'} value")
        if ends:
            out.append(f"{configuration_label(c['labels'])}: {', '.join(ends)}")
    return out


def tuning_sections(folder: str | Path, section: Callable[..., Any], table: Callable[..., Any]) -> list:
    """[the "What was tuned" section] (empty without tuning.json), built with the report's Section and
    Table classes (passed in: report.build imports this module)."""
    got = tuning_table(folder)
    if got is None:
        return []
    text, header, rows = got
    return [section(TITLE, text, [table(header, rows)])]
