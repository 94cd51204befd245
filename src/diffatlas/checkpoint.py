"""Snapshots as state_dicts: safetensors for weights, weights-only torch files for optimizer and
RNG state, JSON for metadata. Writes are atomic (temporary directory, fsync, rename); loads
never unpickle code."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file

from .errors import UserError

SNAPSHOT_PREFIX = "snapshot-"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a whole text file atomically: temporary file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def append_line(path: str | Path, line: str) -> None:
    """Append one line and fsync (the stats and metrics logs)."""
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines log (stats, metrics); a torn last line (a kill mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(d, dict):
                yield d


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
    root = Path(run_dir) / "snapshots"
    root.mkdir(parents=True, exist_ok=True)
    final = root / snapshot_name(kimg)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        for name, sd in weights.items():
            save_file(contiguous_state(sd), str(tmp / f"{name}.safetensors"))
        torch.save(state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if final.exists():  # an identical snapshot from an interrupted earlier attempt
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def list_snapshots(run_dir: Path) -> list[Path]:
    """Complete snapshots of a run, oldest first (temporary folders of killed writes are ignored)."""
    root = Path(run_dir) / "snapshots"
    if not root.is_dir():
        return []
    snaps = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(SNAPSHOT_PREFIX) and (p / "meta.json").is_file()]
    return sorted(snaps, key=lambda p: float(p.name[len(SNAPSHOT_PREFIX):]))


def load_meta(snapshot: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(snapshot) / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise UserError(f"snapshot {str(snapshot)!r} is incomplete or corrupt (meta.json unreadable)") from None


def load_weights(snapshot: Path, name: str) -> dict[str, torch.Tensor]:
    path = Path(snapshot) / f"{name}.safetensors"
    if not path.is_file():
        raise UserError(f"snapshot {str(snapshot)!r} has no {name}.safetensors")
    try:
        return load_file(str(path))
    except Exception:
        raise UserError(f"snapshot file {str(path)!r} is corrupt (not a readable safetensors file)") from None


def load_state(snapshot: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(snapshot) / "state.pt"
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"snapshot {str(snapshot)!r} has no state.pt") from None
    except Exception:
        raise UserError(f"snapshot file {str(path)!r} is corrupt or holds more than tensors and numbers") from None


def remove_old_snapshots(run_dir: Path, keep: Path) -> None:
    for p in list_snapshots(run_dir):
        if p != keep:
            shutil.rmtree(p, ignore_errors=True)
