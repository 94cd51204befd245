"""JSON records and JSON-lines logs: required fields of a given kind, torn-line-safe reads and locked
appends, and a JSON-safe copy of numbers.

A JSON-lines log is appended under an exclusive lock, after cutting away a torn last line left by a
process killed mid-write, so a new entry never lands on a fragment. Readers skip such a torn last
line (it has no newline yet).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_text
from .read import file_error, read_bytes, read_text

try:  # POSIX advisory locks; without them (Windows) appends and run locks are unguarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


# ---- record fields ---------------------------------------------------------------------------

def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# A field kind is a predicate with a name for the message.
FIELD_KINDS: dict[str, Callable[[Any], bool]] = {
    "number": _is_number,
    "number or null": lambda v: v is None or _is_number(v),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "integer or null": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
    "string": lambda v: isinstance(v, str),
    "shape": lambda v: (isinstance(v, list) and len(v) > 0
                        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in v)),
}


def field_problem(record: Any, fields: Mapping[str, str] | None) -> str | None:
    """What is wrong with a JSON record (not an object, a required field missing or of the wrong kind)."""
    if not isinstance(record, dict):
        return f"is not a JSON object (got {type(record).__name__})"
    for name, kind in (fields or {}).items():
        if name not in record:
            return f"lacks the field {name!r}"
        if not FIELD_KINDS[kind](record[name]):
            return f"has {name}={record[name]!r}, not a {kind}" if kind != "integer" else \
                f"has {name}={record[name]!r}, not an integer"
    return None


# ---- JSON ------------------------------------------------------------------------------------

def read_json(path: str | Path, what: str, fix: str = "", fields: Mapping[str, str] | None = None) -> dict:
    """A JSON object with the given required fields (name -> kind of :data:`FIELD_KINDS`)."""
    text = read_text(path, what, fix)
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        where = f" at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise file_error(path, what, f"is not valid JSON{where}", fix) from None
    problem = field_problem(record, fields)
    if problem:
        raise file_error(path, what, problem, fix)
    return record


def read_jsonl(path: str | Path, what: str, fix: str = "", fields: Mapping[str, str] | None = None,
               missing_ok: bool = True) -> list[dict]:
    """The records of a JSON-lines log, in order. A last line without its newline that does not parse
    is a write cut short (a killed process) and is skipped; any other bad line is a UserError naming
    its number. A missing file is an empty log (missing_ok)."""
    p = Path(path)
    if missing_ok and not p.exists() and not p.is_symlink():
        return []
    data = read_bytes(p, what, fix)
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    out = []
    for i, raw in enumerate(lines, 1):
        rec = _jsonl_record(raw, p, what, fix, fields, i, torn_ok=False)
        if rec is not None:
            out.append(rec)
    if tail.strip():
        rec = _jsonl_record(tail, p, what, fix, fields, len(lines) + 1, torn_ok=True)
        if rec is not None:
            out.append(rec)
    return out


def _jsonl_record(raw: bytes, path: Path, what: str, fix: str, fields: Mapping[str, str] | None, lineno: int,
                  torn_ok: bool) -> dict | None:
    if not raw.strip():
        return None
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        if torn_ok:
            return None
        raise file_error(path, what, f"line {lineno} is not a JSON record", fix) from None
    problem = field_problem(rec, fields)
    if problem:
        if torn_ok and not isinstance(rec, dict):
            return None
        raise file_error(path, what, f"line {lineno} {problem}", fix)
    return rec


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _cut_torn_tail(fd: int) -> None:
    """If the file does not end with a newline, its last line was cut short by a killed writer: remove it
    (or, if it is a whole record that only lacks its newline, add the newline)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    start, block = size, 4096
    while start > 0:  # find the last newline
        lo = max(0, start - block)
        chunk = os.pread(fd, start - lo, lo)
        k = chunk.rfind(b"\n")
        if k >= 0:
            start = lo + k + 1
            break
        start = lo
    tail = os.pread(fd, size - start, start)
    try:
        whole = isinstance(json.loads(tail.decode("utf-8")), dict)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        whole = False
    if whole:
        _write_all(fd, b"\n")
    else:
        os.ftruncate(fd, start)


def append_jsonl(path: str | Path, record: Mapping[str, Any] | str) -> None:
    """Append one record (a mapping, or a JSON line) to a JSON-lines log and fsync it. Concurrent
    appenders take turns (an exclusive lock); a torn last line is cut away first."""
    line = record if isinstance(record, str) else json.dumps(record)
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        _cut_torn_tail(fd)
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)  # releases the lock


def rewrite_jsonl(path: str | Path, records: list[Mapping[str, Any]]) -> None:
    """Replace a JSON-lines log atomically by `records`."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def json_clean(v: Any) -> Any:
    """JSON-safe copy: NaN/inf become None, numpy scalars plain numbers."""
    if isinstance(v, dict):
        return {str(k): json_clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_clean(x) for x in v]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.ndarray):
        return json_clean(v.tolist())
    return v
