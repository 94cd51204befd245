"""Snapshots as state_dicts: safetensors for weights, weights-only torch files for optimizer and
RNG state, JSON for metadata. Writes are atomic (temporary directory, fsync, rename); loads
never unpickle code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .errors import UserError
from .io import atomic_dir, file_error, read_json, read_jsonl, read_safetensors, read_torch

SNAPSHOT_PREFIX = "snapshot-"


# ---- the logs and records of a run directory -------------------------------------------------

STATS_FILE = "stats.jsonl"
STATS_FIELDS = {"kimg": "number"}
DATASET_FILE = "dataset.json"
DATASET_FIELDS = {"shape": "shape", "num_classes": "integer or null"}
META_FIELDS = {"kimg": "number", "step": "integer"}


def read_stats(run_dir: str | Path) -> list[dict[str, Any]]:
    """The tick records of RUN/stats.jsonl (a torn last line is skipped)."""
    path = Path(run_dir) / STATS_FILE
    return read_jsonl(path, "training log", fields=STATS_FIELDS,
                      fix="delete or repair that line (the ticks after the last snapshot are rewritten on resume)")


def read_dataset_info(run_dir: str | Path) -> dict[str, Any]:
    """RUN/dataset.json: {name, split, shape, num_classes, size} of the data the run was trained on."""
    path = Path(run_dir) / DATASET_FILE
    info = read_json(path, "dataset record", fields=DATASET_FIELDS,
                     fix=f"delete it and run `diffatlas train --run-dir {run_dir}` again, which writes it from the "
                         "run's config (a finished run is not retrained)")
    if info["num_classes"] is not None and info["num_classes"] < 1:
        raise file_error(path, "dataset record", f"has num_classes={info['num_classes']}, not a positive integer",
                         f"delete it and run `diffatlas train --run-dir {run_dir}` again")
    return info


def contiguous_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def snapshot_name(kimg: float) -> str:
    return f"{SNAPSHOT_PREFIX}{kimg:010.3f}"


def save_snapshot(run_dir: Path, kimg: float, weights: dict[str, dict[str, torch.Tensor]],
                  state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write run_dir/snapshots/snapshot-<kimg>/ atomically.

    weights: name -> state_dict, each saved as <name>.safetensors; state: nested tensors/numbers
    (optimizer, RNG, data order) saved with torch.save and loaded with weights_only=True; meta: JSON.
    """
    final = Path(run_dir) / "snapshots" / snapshot_name(kimg)
    # if_exists="replace": a snapshot already there is an identical one from an interrupted earlier attempt
    with atomic_dir(final, if_exists="replace") as tmp:
        for name, sd in weights.items():
            save_file(contiguous_state(sd), str(tmp / f"{name}.safetensors"))
        torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return final


def _snapshot_fix(path: Path) -> str:
    return (f"delete {str(path)!r} or move it out of snapshots/ (training resumes from the snapshot before it, "
            "evaluation uses the others)")


def list_snapshots(run_dir: Path) -> list[Path]:
    """Complete snapshots of a run, oldest first. Temporary folders of interrupted writes (.tmp-*) are
    not snapshots; anything else named snapshot-* that is not a snapshot folder is a UserError."""
    root = Path(run_dir) / "snapshots"
    if not root.is_dir():
        return []
    snaps = []
    for p in root.iterdir():
        if not p.name.startswith(SNAPSHOT_PREFIX):
            continue
        try:
            kimg = float(p.name[len(SNAPSHOT_PREFIX):])
        except ValueError:
            raise file_error(p, "snapshot folder", "is not named snapshot-<kimg>", _snapshot_fix(p)) from None
        if not p.is_dir():
            raise file_error(p, "snapshot", "is a file, not a snapshot folder", _snapshot_fix(p))
        if not (p / "meta.json").exists():
            raise file_error(p, "snapshot folder", "has no meta.json (incomplete, or not written by diffatlas)",
                             _snapshot_fix(p))
        snaps.append((kimg, p))
    return [p for _, p in sorted(snaps)]


def remove_interrupted_writes(run_dir: Path) -> list[Path]:
    """Delete the temporary folders of snapshot writes that were killed before their rename
    (snapshots/.tmp-*); only the process that trains the run may call this. Returns what was removed."""
    root = Path(run_dir) / "snapshots"
    gone = sorted(root.glob(".tmp-*")) if root.is_dir() else []
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def load_meta(snapshot: Path) -> dict[str, Any]:
    """A snapshot's meta.json: {kimg, step, images}."""
    return read_json(Path(snapshot) / "meta.json", "snapshot record", fields=META_FIELDS,
                     fix=_snapshot_fix(Path(snapshot)))


def load_weights(snapshot: Path, name: str) -> dict[str, torch.Tensor]:
    """The state_dict `name` (model or ema) of a snapshot."""
    return read_safetensors(Path(snapshot) / f"{name}.safetensors", "snapshot weights", _snapshot_fix(Path(snapshot)))


STATE_KEYS = ("optimizer", "data", "noise", "torch_rng")


def load_state(snapshot: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Optimizer, data-order and RNG state of a snapshot (weights-only load: nothing is unpickled)."""
    path = Path(snapshot) / "state.pt"
    state = read_torch(path, "snapshot state", _snapshot_fix(Path(snapshot)), map_location=map_location)
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise file_error(path, "snapshot state", f"lacks {', '.join(missing)}", _snapshot_fix(Path(snapshot)))
    return state


def snapshot_mismatch(snapshot: Path, what: str) -> UserError:
    """The error for a snapshot whose contents do not fit the run (another network, another optimizer)."""
    return file_error(snapshot, "snapshot", f"does not match the {what} of the run's config (copied from another "
                      "run?)", _snapshot_fix(Path(snapshot)))


def remove_old_snapshots(run_dir: Path, keep: Path) -> None:
    for p in list_snapshots(run_dir):
        if p != keep:
            shutil.rmtree(p, ignore_errors=True)
