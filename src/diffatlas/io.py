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
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import yaml

from .errors import UserError

try:  # POSIX advisory locks; without them (Windows) appends and run locks are unguarded
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

YAML_MAX_NODES = 100_000  # a config or study file expands to at most this many YAML nodes


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


# ---- places ----------------------------------------------------------------------------------

CACHE_ENV = "DIFFATLAS_CACHE"


def cache_root() -> Path:
    """The folder of everything diffatlas caches (downloaded data, reference statistics, evaluation
    classifiers): $DIFFATLAS_CACHE when set and not empty, else ~/.cache/diffatlas."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "diffatlas"


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


# ---- YAML ------------------------------------------------------------------------------------

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (merge keys `<<` may be overridden)."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it
                    continue
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"found the key {key!r} twice (first at line {first + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, limit: int) -> int:
    """Number of nodes `node` stands for once every alias is expanded, counted without expanding; a
    value above `limit` stops the count. A node that contains itself counts as over the limit."""
    memo: dict[int, int] = {}
    busy: set[int] = set()

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in memo:
            return memo[key]
        if key in busy:
            return limit + 1
        busy.add(key)
        total = 1
        if isinstance(n, yaml.SequenceNode):
            children = list(n.value)
        elif isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        else:
            children = []
        for c in children:
            total += size(c)
            if total > limit:
                break
        busy.discard(key)
        memo[key] = total
        return total

    return size(node)


def parse_yaml(text: str, source: str, fix: str = "") -> Any:
    """Parse YAML text (a file's content, or a command-line value named by `source`) strictly."""
    loader = None
    try:
        loader = _StrictLoader(text)  # the reader refuses control characters already here
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, YAML_MAX_NODES) > YAML_MAX_NODES:
            raise UserError(f"{source} expands to more than {YAML_MAX_NODES:,} YAML values through its aliases "
                            "(&anchor / *alias), or refers to itself; write the values out" + (f"; {fix}" if fix else ""))
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None)
        raise UserError(f"{source} does not parse as YAML{where}" + (f": {problem}" if problem else "")
                        + (f"; {fix}" if fix else "")) from None
    except RecursionError:
        raise UserError(f"{source} is nested too deeply to be a config" + (f"; {fix}" if fix else "")) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | Path, what: str, fix: str = "") -> Any:
    """A YAML file's content, parsed strictly (see :func:`parse_yaml`)."""
    text = read_text(path, what, fix)
    return parse_yaml(text, f"{what} {str(path)!r}", fix)


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
