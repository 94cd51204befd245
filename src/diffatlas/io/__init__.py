"""The files of runs and studies: one reader per format, atomic writes, torn-line-safe appends.

Every file diffatlas reads goes through a reader here. A reader turns any malformation (missing,
a folder, unreadable, not text, not parseable, wrong shape, a field missing or of the wrong kind)
into a one-line :class:`~diffatlas.errors.UserError` that names the file, says what is wrong and
how to recover (the caller's `fix`, e.g. "delete that line: evaluate recomputes missing entries").

Writers never leave a half-written file where a reader looks: whole files are written to a
temporary file in the same folder and renamed; JSON-lines logs are appended under an exclusive
lock, after cutting away a torn last line left by a process killed mid-write, so a new entry
never lands on a fragment. Readers skip such a torn last line (it has no newline yet).

YAML is read with duplicate keys refused and alias expansion bounded (a "billion laughs" file is
refused, not expanded). Torch files are loaded with ``weights_only=True``: nothing is unpickled.

The parts: :mod:`.read` (plain files, safetensors, torch files, the one-line file error),
:mod:`.json_records` (JSON records, JSON-lines logs, :func:`json_clean`), :mod:`.strict_yaml`,
:mod:`.atomic` (whole files and folders), :mod:`.folders` (the cache root, :func:`build_once`,
:func:`exclusive`) and :mod:`.saved_module`. Every public name is importable from here.
"""

from .atomic import (
    DIR_IF_EXISTS,
    atomic_dir,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
)
from .folders import CACHE_ENV, build_once, cache_root, exclusive
from .json_records import (
    FIELD_KINDS,
    append_jsonl,
    field_problem,
    json_clean,
    read_json,
    read_jsonl,
    rewrite_jsonl,
)
from .read import file_error, read_bytes, read_safetensors, read_text, read_torch
from .saved_module import read_saved_module, write_saved_module
from .strict_yaml import YAML_MAX_NODES, parse_yaml, read_yaml

__all__ = [
    "CACHE_ENV", "DIR_IF_EXISTS", "FIELD_KINDS", "YAML_MAX_NODES", "append_jsonl", "atomic_dir", "atomic_write",
    "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "build_once", "cache_root", "exclusive",
    "field_problem", "file_error", "fsync_dir", "json_clean", "parse_yaml", "read_bytes", "read_json", "read_jsonl",
    "read_safetensors", "read_saved_module", "read_text", "read_torch", "read_yaml", "rewrite_jsonl",
    "write_saved_module",
]
