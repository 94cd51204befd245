"""Checks of user input at the edge, one function per kind of input.

Every number a user gives (config values, registry options, CLI flags, study fields) goes through
:func:`number` with a :class:`Range`: it must be finite and in range, and the message states the
range. Every key goes through :func:`known_keys` (close-match suggestion, the valid keys listed).
Seeds, devices, output places and memory have a function each, called before any work starts, so
a request that cannot be met is refused with the limit in the message instead of failing (or
allocating) half-way.

The config's ranges live in :data:`CONFIG_RANGES` and :data:`OPTION_RANGES`; `config.resolve`
applies them, so a training run, a study plan and a dry run refuse the same values.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

SEED_MAX = 2**32 - 1          # seeds are unsigned 32-bit integers; per-sample seeds seed..seed+n-1 too
COUNT_MAX = 2**31 - 1         # sample counts and batch sizes (index tensors and loop counters stay in int32)
STEPS_MAX = 100_000           # sampling grid points and discrete diffusion steps
KIMG_MAX = 1e9                # training length: a trillion images
RESOLUTION_MAX = 8192         # image side length
WORKERS_MAX = 256


# ---- numbers ---------------------------------------------------------------------------------

def _fmt(v: float) -> str:
    return f"{int(v)}" if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


@dataclass(frozen=True)
class Range:
    """An interval of accepted values: lo/hi None = unbounded (values must still be finite)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False

    def text(self) -> str:
        """What is accepted, e.g. 'an integer in [1, 2147483647]' or 'a finite number > 0'."""
        kind = "an integer" if self.integer else "a finite number"
        if self.lo is not None and self.hi is not None:
            return (f"{kind} in {'(' if self.lo_open else '['}{_fmt(self.lo)}, {_fmt(self.hi)}"
                    f"{')' if self.hi_open else ']'}")
        if self.lo is not None:
            return f"{kind} {'>' if self.lo_open else '>='} {_fmt(self.lo)}"
        if self.hi is not None:
            return f"{kind} {'<' if self.hi_open else '<='} {_fmt(self.hi)}"
        return kind

    def contains(self, v: float) -> bool:
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            return False
        return True


POSITIVE = Range(0, None, lo_open=True)
NON_NEGATIVE = Range(0, None)
PROBABILITY = Range(0, 1, hi_open=True)
COUNT = Range(1, COUNT_MAX, integer=True)
SEED = Range(0, SEED_MAX, integer=True)
STEPS = Range(1, STEPS_MAX, integer=True)


def number(value: Any, where: str, rng: Range = Range()) -> int | float:
    """`value` as an int (rng.integer) or float, finite and inside `rng`; UserError naming `where` and the
    accepted range otherwise. Strings are parsed ('1e-3', '0x10'); booleans are not numbers."""
    v = value
    if isinstance(v, str):
        text = v.strip()
        try:
            v = int(text, 0)
        except ValueError:
            try:
                v = float(text)
            except ValueError:
                raise UserError(f"{where} must be {rng.text()}, got {value!r}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise UserError(f"{where} must be {rng.text()}, got {value!r}")
    if isinstance(v, float):
        if not math.isfinite(v):
            raise UserError(f"{where} must be {rng.text()}, got {value!r}")
        if rng.integer:
            if not v.is_integer():
                raise UserError(f"{where} must be {rng.text()}, got {value!r}")
            v = int(v)
    if not rng.contains(v):
        raise UserError(f"{where} must be {rng.text()}, got {value!r}")
    return v


def finite_numbers(value: Any, where: str) -> None:
    """Every number inside `value` (nested lists and mappings) is finite."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where} must be a finite number, got {value!r}")
    if isinstance(value, Mapping):
        for k, v in value.items():
            finite_numbers(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            finite_numbers(v, f"{where}[{i}]")


def arg(rng: Range) -> Callable[[str], int | float]:
    """An argparse `type=` for a number in `rng` (argparse prints the message as one line, exit 2)."""
    def parse(text: str) -> int | float:
        try:
            return number(text, "the value", rng)
        except UserError:
            raise argparse.ArgumentTypeError(f"must be {rng.text()}, got {text!r}") from None

    parse.__name__ = "integer" if rng.integer else "number"
    return parse


def number_list(text: str, where: str, rng: Range) -> list:
    """Comma-separated numbers, each in `rng`; at least one."""
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise UserError(f"{where} must be a comma-separated list of {rng.text().replace('a ', '', 1)}s, got {text!r}")
    return [number(s, where, rng) for s in items]


# ---- keys ------------------------------------------------------------------------------------

def suggest(key: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    close = difflib.get_close_matches(str(key), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def known_keys(given: Iterable[Any], valid: Iterable[str], where: str, what: str = "key") -> None:
    """Every key of `given` is one of `valid`; otherwise UserError with a close match and the valid keys."""
    valid = list(valid)
    for key in given:
        if key not in valid:
            listed = ", ".join(valid) if valid else "(none)"
            raise UserError(f"unknown {what} {where}.{key}{suggest(str(key), valid)}; valid {what}s: {listed}")


# ---- the config's numbers --------------------------------------------------------------------

CONFIG_RANGES: dict[str, Range] = {
    "data.resolution": Range(1, RESOLUTION_MAX, integer=True),
    "model.sigma_data": POSITIVE,
    "train.kimg": Range(0, KIMG_MAX, lo_open=True),
    "train.batch": COUNT,
    "train.lr": POSITIVE,
    "train.weight_decay": NON_NEGATIVE,
    "train.betas": Range(0, 1, hi_open=True),
    "train.warmup_kimg": Range(0, KIMG_MAX),
    "train.grad_clip": NON_NEGATIVE,
    "train.ema_halflife_kimg": Range(0, KIMG_MAX),
    "train.ema_rampup": NON_NEGATIVE,
    "train.label_dropout": PROBABILITY,
    "train.seed": SEED,
    "train.tick_kimg": Range(0, KIMG_MAX, lo_open=True),
    "train.snapshot_kimg": Range(0, KIMG_MAX, lo_open=True),
    "sample.steps": Range(0, STEPS_MAX, integer=True),   # 0: the sampler's default
    "sample.n": COUNT,
    "sample.seed": SEED,
}

# Options of registry objects (section.option); other numeric options must be finite.
_WIDTH = Range(1, 65536, integer=True)
_DEPTH = Range(1, 1024, integer=True)
OPTION_RANGES: dict[str, Range] = {
    "dynamics.steps": Range(2, STEPS_MAX, integer=True),
    "dynamics.levels": Range(2, STEPS_MAX, integer=True),
    "network.dropout": PROBABILITY,
    "network.base_channels": _WIDTH,
    "network.ngf": _WIDTH,
    "network.hidden_size": _WIDTH,
    "network.width": _WIDTH,
    "network.emb_dim": _WIDTH,
    "network.freq_dim": _WIDTH,
    "network.num_res_blocks": Range(0, 64, integer=True),
    "network.depth": _DEPTH,
    "network.num_heads": _DEPTH,
    "network.patch_size": _DEPTH,
    "network.mlp_ratio": Range(0, 64, lo_open=True),
    "data.n": COUNT,
    "data.dim": Range(1, 2**20, integer=True),
    "data.seed": SEED,
    "data.std": POSITIVE,
    "data.noise": NON_NEGATIVE,
    "sample.eta": Range(0, 1),
    "sample.S_churn": NON_NEGATIVE,
    "sample.S_noise": POSITIVE,
    "sample.rtol": POSITIVE,
    "sample.atol": POSITIVE,
    "sample.max_nfe": Range(1, 10**7, integer=True),
    "sample.n_steps_each": Range(1, STEPS_MAX, integer=True),
    "sample.corrector_steps": Range(0, STEPS_MAX, integer=True),
    "sample.snr": POSITIVE,
    "sample.step_lr": POSITIVE,
}


def config_numbers(section: str, values: Mapping[str, Any], label: str | None = None) -> None:
    """Check the numbers of one config section (fields and registry options) against the tables.
    `label` names the values in messages when they are not written as section.key (e.g. '--option')."""
    for key, value in values.items():
        where = key_name(label or section, key)
        rng = CONFIG_RANGES.get(f"{section}.{key}") or OPTION_RANGES.get(f"{section}.{key}")
        if rng is None or value is None:
            finite_numbers(value, where)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                number(v, f"{where}[{i}]", rng)
        else:
            number(value, where, rng)


def key_name(where: str, key: Any) -> str:
    """'section.key' for config keys, '--flag key' for command-line flags."""
    return f"{where} {key}" if where.startswith("--") else f"{where}.{key}"


# ---- seeds -----------------------------------------------------------------------------------

def seeds(first: Any, count: int, where: str = "--seed") -> int:
    """The first of `count` per-sample seeds first..first+count-1, all inside [0, SEED_MAX]."""
    first = int(number(first, where, SEED))
    if first + max(int(count), 1) - 1 > SEED_MAX:
        raise UserError(f"{where} {first} with {count} samples: the per-sample seeds {first}..{first + count - 1} must "
                        f"stay within [0, {SEED_MAX}]; use {where} <= {SEED_MAX - count + 1}")
    return first


# ---- devices ---------------------------------------------------------------------------------

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def device_name(name: Any, where: str = "--device") -> str:
    """The device string's form only (auto, cpu, mps, cuda, cuda:N); availability is checked by :func:`device`."""
    text = str(name).strip()
    if not _DEVICE.fullmatch(text):
        raise UserError(f"{where} {str(name)!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    return text


def device(name: Any = "auto", where: str = "--device", local_rank: int = 0) -> str:
    """The one device picker: a usable device for `name` (a string, a torch.device, or None for auto):
    auto -> cuda:<local_rank> when CUDA is available, else cpu. A CUDA or MPS device that this machine does
    not have is refused with what it has. Wrap in torch.device() where a device object is needed."""
    import torch

    text = device_name("auto" if name is None else name, where)
    cuda = torch.cuda.is_available()
    if text == "auto":
        return f"cuda:{local_rank}" if cuda else "cpu"
    if text.startswith("cuda"):
        if not cuda:
            raise UserError(f"{where}={text} but no CUDA device is available; use cpu or auto")
        index = int(text.partition(":")[2] or local_rank)
        count = torch.cuda.device_count()
        if index >= count:
            raise UserError(f"{where}={text} but this machine has {count} CUDA device(s): cuda:0..cuda:{count - 1}")
        return f"cuda:{index}"
    if text == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"{where}=mps but no MPS device is available; use cpu or auto")
    return text


# ---- memory ----------------------------------------------------------------------------------

def _cgroup_free() -> int | None:
    """Memory left under this process's cgroup v2 limit (containers), or None without a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def available_memory(dev: Any = "cpu") -> int | None:
    """Bytes that can still be allocated on `dev` (free GPU memory; MemAvailable of the host, capped by a
    container's limit), or None when unknown."""
    import torch

    d = torch.device(dev)
    if d.type == "cuda":
        return int(torch.cuda.mem_get_info(d)[0])
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            free = None
    cg = _cgroup_free()
    if cg is not None:
        free = cg if free is None else min(free, cg)
    return free


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


def memory(need: float, what: str, dev: Any = "cpu", per_item: float | None = None, item: str = "",
           largest: str = "") -> None:
    """Refuse `what` up front when it needs more than the memory available on `dev`.

    need: estimated bytes; per_item: bytes per unit of what the user chose (a sample, a batch element),
    used to state the largest request that fits (`item` names the unit, e.g. '--n'); or `largest`, a
    ready statement of it for requests that do not grow linearly."""
    avail = available_memory(dev)
    if avail is None or need <= avail:
        return
    if per_item:
        largest = f"at most about {int(avail // per_item):,} {item} fit".rstrip()
    raise UserError(f"{what} needs about {format_bytes(need)} of memory, more than the {format_bytes(avail)} "
                    f"available on {dev}" + (f"; {largest}" if largest else ""))


# ---- places ----------------------------------------------------------------------------------

def can_write(path: Path) -> bool:
    """Whether this process (its effective user) may write into `path`."""
    if os.access in os.supports_effective_ids:
        return os.access(path, os.W_OK | os.X_OK if path.is_dir() else os.W_OK, effective_ids=True)
    return os.access(path, os.W_OK | os.X_OK if path.is_dir() else os.W_OK)


def writable_dir(path: str | Path, what: str) -> Path:
    """A folder that exists or can be created, and can be written: its nearest existing ancestor must be
    a folder this user may write into. Nothing is created here."""
    p = Path(path)
    probe = p
    while not probe.exists():
        if probe.is_symlink():
            raise UserError(f"{what} {str(p)!r} cannot be created: {str(probe)!r} is a broken link")
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        if probe == p:
            raise UserError(f"{what} {str(p)!r} is a file, not a folder; choose another path")
        raise UserError(f"{what} {str(p)!r} cannot be created: {str(probe)!r} is a file, not a folder; "
                        "choose another path")
    if not can_write(probe):
        owner = ""
        try:
            import pwd

            owner = f" (owned by {pwd.getpwuid(probe.stat().st_uid).pw_name})"
        except (ImportError, KeyError, OSError):
            pass
        raise UserError(f"{what} {str(p)!r} cannot be written: {str(probe)!r} is not writable by this user{owner}; "
                        "choose another path or fix its permissions")
    return p


def writable_file(path: str | Path, what: str) -> Path:
    """A file path that can be written: not a folder, not read-only, in a folder that exists or can be
    created (see :func:`writable_dir`)."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{what} {str(p)!r} is a folder; give a file name")
    if p.exists() and not can_write(p):
        raise UserError(f"{what} {str(p)!r} exists and is not writable by this user")
    try:
        writable_dir(p.parent, what)
    except UserError as e:
        raise UserError(str(e).replace(f"{what} {str(p.parent)!r}", f"{what} {str(p)!r}", 1)) from None
    return p


def figure_path(path: str | Path, what: str) -> Path:
    """A writable file path whose suffix is an image format matplotlib writes (png, pdf, svg, ...)."""
    from matplotlib.figure import Figure

    p = writable_file(path, what)
    formats = Figure().canvas.get_supported_filetypes()
    suffix = p.suffix.lstrip(".").lower()
    if suffix and suffix not in formats:
        raise UserError(f"{what} {str(p)!r}: {suffix!r} is not an image format; use one of: {', '.join(sorted(formats))}")
    return p


def folder_name(name: str, where: str) -> str:
    """A name used as one folder name (e.g. a study's default output folder): no separators, not '.' or
    '..', no NUL, at most 255 bytes."""
    bad = (not name or name in (".", "..") or "/" in name or (os.altsep and os.altsep in name) or "\0" in name
           or len(name.encode()) > 255)
    if bad:
        raise UserError(f"{where} {name!r} cannot be a folder name (it contains a path separator, is '.' or '..', "
                        "or is too long); rename it or give the output folder explicitly with --out")
    return name
