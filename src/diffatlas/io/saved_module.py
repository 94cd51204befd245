"""A module saved as safetensors weights beside a JSON record of its architecture and weights hash."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .atomic import atomic_write_bytes, atomic_write_json
from .json_records import read_json
from .read import file_error, read_safetensors


def read_saved_module(cls: Callable[..., Any], meta_path: Path, weights_path: Path, *, format: str,
                      allowed: set[str], what: str, fix: str, weights_hash: Callable[[dict], str]) -> tuple[Any, dict]:
    """A module saved as a JSON record {format, kwargs, weights_hash, ...} beside its safetensors weights:
    (module built from kwargs with the weights loaded, record). Anything that does not fit is a UserError."""
    meta = read_json(meta_path, f"{what} record", fix)
    if meta.get("format") != format:
        raise file_error(meta_path, f"{what} record", f"is not a diffatlas {what} (format {format} expected)", fix)
    kwargs = meta.get("kwargs")
    if not isinstance(kwargs, dict) or set(kwargs) - allowed:
        bad = sorted(set(kwargs) - allowed) if isinstance(kwargs, dict) else kwargs
        raise file_error(meta_path, f"{what} record", f"has unknown architecture settings {bad}", fix)
    try:
        module = cls(**kwargs)
    except (TypeError, ValueError, RuntimeError):
        raise file_error(meta_path, f"{what} record", f"has architecture settings {kwargs} that cannot be built",
                         fix) from None
    state = read_safetensors(weights_path, f"{what} weights", fix)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError:
        raise file_error(weights_path, f"{what} weights", f"do not match the architecture recorded in {meta_path}",
                         fix) from None
    if meta.get("weights_hash") and meta["weights_hash"] != weights_hash(state):
        raise file_error(weights_path, f"{what} weights", f"do not have the weights hash recorded in {meta_path} "
                         "(corrupt or replaced)", fix)
    return module, meta


def write_saved_module(state: Mapping[str, Any], meta_path: Path, weights_path: Path, *, format: str,
                       record: Mapping[str, Any], weights_hash: Callable[[dict], str]) -> None:
    """Save a module the way :func:`read_saved_module` reads it: its state as safetensors (metadata
    {"format": format}) and the JSON record {format, weights_hash, **record} (record: kwargs, architecture,
    info, ...), each written atomically, the weights first, so a record never names weights not yet there."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write_bytes(weights_path, save(state, metadata={"format": format}))
    atomic_write_json(meta_path, {"format": format, "weights_hash": weights_hash(state), **record}, sort_keys=True,
                      default=str)
