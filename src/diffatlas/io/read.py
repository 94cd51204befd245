"""The readers of plain files, safetensors and torch files: each turns any malformation (missing, a
folder, unreadable, not text, corrupt) into a one-line UserError that names the file and the fix.

Torch files are loaded with ``weights_only=True``: nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError


def file_error(path: str | Path, what: str, problem: str, fix: str) -> UserError:
    """The one-line error of a malformed file: '<what> '<path>' <problem>; <fix>'."""
    return UserError(f"{what} {str(path)!r} {problem}" + (f"; {fix}" if fix else ""))


# ---- bytes and text --------------------------------------------------------------------------

def read_bytes(path: str | Path, what: str, fix: str = "") -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise file_error(path, what, "does not exist", fix) from None
    except IsADirectoryError:
        raise file_error(path, what, "is a folder, not a file", fix) from None
    except PermissionError:
        raise file_error(path, what, "cannot be read by this user (permission denied)", fix) from None
    except OSError as e:
        raise file_error(path, what, f"cannot be read ({e.strerror or e})", fix) from None


def read_text(path: str | Path, what: str, fix: str = "") -> str:
    data = read_bytes(path, what, fix)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise file_error(path, what, "is not a UTF-8 text file (binary or corrupt)", fix) from None


# ---- tensors ---------------------------------------------------------------------------------

def read_safetensors(path: str | Path, what: str, fix: str = "") -> dict:
    """The tensors of a safetensors file (CPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        read_bytes(p, what, fix)  # the precise reason: missing, a folder, unreadable
    try:
        return load_file(str(p))
    except PermissionError:
        raise file_error(p, what, "cannot be read by this user (permission denied)", fix) from None
    except (SafetensorError, OSError, ValueError, RuntimeError, UnicodeDecodeError):
        raise file_error(p, what, "is not a readable safetensors file (corrupt or truncated)", fix) from None


def read_torch(path: str | Path, what: str, fix: str = "", map_location: Any = "cpu") -> Any:
    """A torch.save file of tensors, numbers and containers, loaded with weights_only=True (no code runs)."""
    import torch

    p = Path(path)
    if not p.is_file():
        read_bytes(p, what, fix)
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except PermissionError:
        raise file_error(p, what, "cannot be read by this user (permission denied)", fix) from None
    except Exception:  # noqa: BLE001 - any unpickling failure of a foreign or damaged file
        raise file_error(p, what, "is corrupt or holds more than tensors and numbers", fix) from None
