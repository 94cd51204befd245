"""Shared folders: the cache root, a cached folder built once across concurrent processes, and the
exclusive use of a folder by one process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import UserError
from .atomic import atomic_dir

try:  # POSIX advisory locks; without them (Windows) appends and run locks are unguarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


# ---- places ----------------------------------------------------------------------------------

CACHE_ENV = "DIFFATLAS_CACHE"


def cache_root() -> Path:
    """The folder of everything diffatlas caches (downloaded data, reference statistics, evaluation
    classifiers): $DIFFATLAS_CACHE when set and not empty, else ~/.cache/diffatlas."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "diffatlas"


@contextmanager
def build_once(final: str | Path, ready: str | None = None) -> Iterator[Path | None]:
    """Build a cached folder once across concurrent processes (study workers): the first takes a lock
    file beside `final` and gets a temporary folder to fill (published with atomic_dir); the others wait
    on the lock and then get None, because `final` exists (`ready`, a file inside it, says it is
    complete when given). Yields None at once when it is already there."""
    final = Path(final)

    def done() -> bool:
        return (final / ready).is_file() if ready else final.is_dir() and any(final.iterdir())

    if done():
        yield None
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when the process dies
        if done():
            yield None
            return
        with atomic_dir(final, if_exists="replace") as tmp:
            yield tmp


# ---- exclusive use of a folder ---------------------------------------------------------------

@contextmanager
def exclusive(path: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on folder `path` (released on exit, or when the process dies); a second
    holder is refused at once with a UserError instead of writing beside the first."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{what} {str(path)!r} is in use by another diffatlas process; wait for it to finish "
                            "or stop it") from None
        yield
    finally:
        os.close(fd)
