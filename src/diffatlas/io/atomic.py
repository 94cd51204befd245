"""Atomic writes: a whole file, or a whole folder, is written beside its place and renamed there, so a
reader never sees a half-written one.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

# ---- whole files -----------------------------------------------------------------------------

def fsync_dir(path: str | Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _new_temp_file(folder: Path, name: str) -> tuple[int, Path]:
    """A fresh file '.<name>.<random>.tmp' in `folder`, open for writing, with the permissions a plain open()
    gives (0o666 less the umask; tempfile.mkstemp would make it 0o600, unreadable to a shared group)."""
    while True:
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write a whole file atomically: `write(f)` fills a temporary file in the same folder (a binary file
    object), which is fsynced and renamed over `path`. A reader sees the old file or the new one, never a
    part; if `write` fails the temporary file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_temp_file(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a whole file atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a whole UTF-8 text file atomically (see :func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, record: Any, *, indent: int | None = 1, sort_keys: bool = False,
                      default: Callable[[Any], Any] | None = None) -> None:
    """Write `record` as a JSON file atomically (see :func:`atomic_write`), ending with a newline."""
    atomic_write_text(path, json.dumps(record, indent=indent, sort_keys=sort_keys, default=default) + "\n")


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (and root itself), so a rename publishes data on disk."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(folder)


DIR_IF_EXISTS = ("error", "replace", "keep")


@contextmanager
def atomic_dir(final: str | Path, *, if_exists: str = "error") -> Iterator[Path]:
    """Publish a folder atomically: the block fills a fresh temporary folder beside `final`
    ('.tmp-<name>-<random>', yielded), which is then fsynced and renamed to `final`, so a reader sees the
    whole folder or none of it. The temporary folder is gone afterwards whatever happened; if the block
    raises, nothing is published.

    An empty folder at `final` is replaced. A non-empty one: if_exists="error" raises OSError (the caller
    checked beforehand that nothing is there), "replace" deletes it first (a rewrite of the same thing,
    e.g. a snapshot of an interrupted attempt), "keep" keeps it and drops the new folder (another process
    published the same thing first)."""
    if if_exists not in DIR_IF_EXISTS:
        raise ValueError(f"if_exists must be one of {DIR_IF_EXISTS}, got {if_exists!r}")
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    while True:  # permissions of a plain mkdir (tempfile.mkdtemp would make the published folder 0o700)
        tmp = final.parent / f".tmp-{final.name}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            break
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        elif final.exists() and if_exists == "replace":
            shutil.rmtree(final)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (if_exists == "keep" and final.is_dir()):
                raise
        fsync_dir(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
