"""Typed, frozen configuration: one dataclass per axis, loaded from YAML plus dotted overrides.

    cfg = load_config("run.yaml", ["train.lr=2e-4", "network.preset=unet-s", "dynamics.steps=500"])

A section whose object comes from a registry (data, network, dynamics, sample) takes the
object's own keyword arguments as extra keys (stored under `options`): `dynamics.steps=500`
is `DDPM(steps=500)`. `resolve(cfg)` fills in every default, so the saved config of a run
states everything that decided its result. Unknown keys, wrong types and unknown registry
names raise UserError with one line naming the valid choices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from . import validate
from .errors import UserError
from .io import parse_yaml
from .io import read_yaml as read_yaml_file


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    root: str | None = None
    split: str = "train"
    resolution: int | None = None
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class NetworkConfig:
    preset: str = "unet-xs"
    conditional: bool = False  # class-conditional with a null class (classifier-free guidance)
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DynamicsConfig:
    name: str = "ddpm"
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    parameterization: str = "eps"
    weighting: str = "simple"
    sigma_data: float | None = None  # None: the parameterization's default


@dataclass(frozen=True)
class TrainConfig:
    kimg: float = 200.0                 # training length in thousands of images seen
    batch: int = 128                    # global batch size (split across processes)
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_kimg: float = 10.0           # linear learning-rate warm-up
    grad_clip: float = 1.0              # max global gradient norm; 0 disables
    ema_halflife_kimg: float = 10.0     # EMA half-life in kimg (Karras et al. 2022, App. F)
    ema_rampup: float | None = 0.05     # half-life at most this fraction of images seen so far
    label_dropout: float = 0.0          # probability of the null class (classifier-free guidance training)
    seed: int = 0
    tick_kimg: float = 5.0              # one stats.jsonl line every tick
    snapshot_kimg: float = 50.0         # one snapshot every this many kimg (and at the end)
    keep_snapshots: bool = True         # keep every snapshot (for convergence curves) or only the latest
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    precision: str = "fp32"             # fp32 | bf16 (autocast on CUDA)
    compile: bool = False               # torch.compile the network (CUDA)
    compile_mode: str = "default"       # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune[-no-cudagraphs]
    channels_last: bool = False
    tf32: bool = True                   # allow TF32 matmuls on CUDA
    doctor: bool = True                 # run the noise/label-sensitivity check at the end of training
    tensorboard: bool = True            # event files in RUN/tensorboard (training and evaluation) when installed


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class SampleConfig:
    sampler: str = "auto"               # auto: ancestral for discrete, heun otherwise; classic: the process's own
    steps: int = 0                      # 0: the process's own T steps (discrete), else 50 (samplers.plan)
    grid: str = "auto"                  # auto: "logsnr" (on a discrete process, snapped to its steps)
    clip: str = "auto"                  # x0 clipping: auto (static for images), none, static, dynamic:P
    n: int = 64
    seed: int = 0
    ema: bool = True
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


SECTIONS = {f.name: f.type for f in fields(Config)}
_SECTION_CLASSES = {"data": DataConfig, "network": NetworkConfig, "dynamics": DynamicsConfig,
                    "model": ModelConfig, "train": TrainConfig, "sample": SampleConfig}


# ---- conversion ------------------------------------------------------------------------------

def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, tuple):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def config_hash(cfg: Any, run_dir: str | Path | None = None) -> str:
    """The identity of a resolved config: 12 hex digits of sha256(JSON of the config, sorted keys). With
    `run_dir`, of {"config": ..., "run_dir": ...} (a finished run evaluated where it is). A study's run id;
    `diffatlas train` without --run-dir names its folder by the first 8."""
    record = to_dict(cfg) if run_dir is None else {"config": to_dict(cfg), "run_dir": str(run_dir)}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:12]


_suggest = validate.suggest


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check and convert a parsed YAML value to the annotated type; one-line error otherwise."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: a list of any length
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], where) for v in value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise UserError(f"{where}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{where}: expected a string, got {value!r}")
    return value


def _section_from_dict(cls: type, data: dict, section: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"config section {section!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        if key in hints:
            kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
        elif "options" in hints:
            extra[key] = value  # keyword argument of the registry object, checked in resolve()
        else:
            raise UserError(f"unknown config key {section}.{key}{_suggest(key, names)}; valid keys: {', '.join(names)}")
    if extra:
        kwargs["options"] = {**kwargs.get("options", {}), **extra}
    return cls(**kwargs)


def from_dict(data: dict | None) -> Config:
    data = data or {}
    if not isinstance(data, dict):
        raise UserError(f"a config file must be a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}")
    sections = {}
    for key, value in data.items():
        if key not in _SECTION_CLASSES:
            raise UserError(f"unknown config section {key!r}{_suggest(key, list(SECTIONS))}; valid sections: {', '.join(SECTIONS)}")
        sections[key] = _section_from_dict(_SECTION_CLASSES[key], value or {}, key)
    return Config(**sections)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"override {text!r} is not of the form section.key=value (e.g. train.lr=2e-4)")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) < 2 or not all(path):
        raise UserError(f"override {text!r} must name a section and a key, e.g. train.lr=2e-4")
    return path, parse_value(raw)


def parse_value(raw: str) -> Any:
    """A command-line value as YAML (numbers, booleans, lists, mappings); text that is not YAML stays text,
    YAML with a key given twice or runaway aliases is refused."""
    if not raw.strip():
        return None
    try:
        yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return parse_yaml(raw, f"value {raw!r}")


def parse_key_values(items: list[str], what: str = "--option", example: str = "") -> dict[str, Any]:
    """Command-line KEY=VALUE items as a mapping, each value read by parse_value; a UserError (one line)
    names the item that has no '='."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"{what} {item!r} must be KEY=VALUE" + (f", e.g. {example}" if example else ""))
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v)
    return out


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set dotted keys in a plain-dict config (before typing)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in (data or {}).items()}
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
            node[part] = nxt = dict(nxt)
            node = nxt
        node[path[-1]] = value
    return data


def parse_yaml_file(path: str | Path, what: str = "config file") -> Any:
    """A YAML file's content; a missing, non-text or malformed file (a key given twice, aliases that
    expand without bound) is a one-line UserError."""
    return read_yaml_file(path, what, fix="fix the file")


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    data = parse_yaml_file(p)
    if data is not None and not isinstance(data, dict):
        raise UserError(f"config file {str(p)!r} must hold a mapping of sections ({', '.join(SECTIONS)})")
    return data or {}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, resolve_defaults: bool = True) -> Config:
    data = read_yaml(path) if path is not None else {}
    cfg = from_dict(apply_overrides(data, list(overrides or [])))
    return resolve(cfg) if resolve_defaults else cfg


# ---- resolution: every default filled in, every name checked ------------------------------

def _call_defaults(fn: Any, given: dict, where: str, skip: tuple[str, ...] = ()) -> dict:
    """Merge a callable's keyword defaults with the given options; unknown option = error."""
    params = {n: p for n, p in inspect.signature(fn).parameters.items()
              if n not in skip and n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    out = {}
    for name, p in params.items():
        if p.default is not inspect.Parameter.empty:
            out[name] = p.default
    for key, value in given.items():
        if key not in params and not accepts_any:
            raise UserError(f"unknown option {where}.{key}{_suggest(key, list(params))}; valid options: {', '.join(params) or '(none)'}")
        default = params[key].default if key in params else None
        if isinstance(default, (bool, int, float, str)) and default is not None:
            value = _coerce(value, type(default) if not (type(default) is int and isinstance(value, float)) else float,
                            f"{where}.{key}")
        out[key] = value
    return out


def _check_numbers(cfg: Config) -> None:
    """Every number of every section is finite and inside its range (validate.CONFIG_RANGES)."""
    for section in _SECTION_CLASSES:
        values = {f.name: getattr(getattr(cfg, section), f.name) for f in fields(getattr(cfg, section))
                  if f.name != "options"}
        validate.config_numbers(section, values)


def check_options(fn: Any, given: dict, where: str, skip: tuple[str, ...] = (), fields_too: tuple[str, ...] = (),
                  label: str | None = None) -> dict:
    """The options `given` for callable `fn` (a registry object's keyword arguments), checked without
    filling defaults: every key is a parameter of `fn` (close match suggested), a number where the
    default is a number (YAML 1.1 text such as 1e-3 becomes a float), true/false where it is a
    boolean, and inside validate.OPTION_RANGES. Returns the options with such text converted.
    where: the config section whose ranges apply; label: how messages name the options (default `where`);
    fields_too: the section's own keys, offered beside the options when a key is unknown."""
    label = label or where
    sig = inspect.signature(fn).parameters
    params = {n: p for n, p in sig.items() if n not in skip and n != "self"
              and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for key in given:
        if key not in params:
            valid = [*fields_too, *params]
            raise UserError(f"unknown key {validate.key_name(label, key)}{validate.suggest(str(key), valid)}; "
                            f"valid keys: {', '.join(valid) or '(none)'}")
    out = {}
    for key, value in given.items():
        default = params[key].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise UserError(f"{validate.key_name(label, key)} must be true or false, got {value!r}")
        elif isinstance(default, (int, float)) and isinstance(value, str):
            value = float(validate.number(value, validate.key_name(label, key)))
        out[key] = value
    validate.config_numbers(where, out, label)
    return out


SAMPLER_CALL_ARGS = ("denoiser", "x", "ts", "generator", "cond", "denoise_final")


def sampler_options(sampler: str, given: dict, label: str = "--option") -> dict:
    """Options for sampler `sampler` (a SAMPLERS name), checked by :func:`check_options` before any sampling.
    A rule (auto, classic) names a sampler only per process, so it takes no options."""
    # on use: config imports no torch; these registries' modules do
    from .samplers import SAMPLER_RULES, SAMPLERS

    if sampler in SAMPLER_RULES:
        if given:
            raise UserError(f"sampler {sampler!r} differs between processes: options need a named sampler")
        return {}
    return check_options(SAMPLERS.get(sampler).fn, given, "sample", skip=SAMPLER_CALL_ARGS, label=label)


def resolve(cfg: Config) -> Config:
    """Check every name, key and number and fill every default into the config."""
    # on use: config imports no torch; these registries' modules do
    from .dynamics import DYNAMICS
    from .losses import WEIGHTINGS
    from .parameterization import PARAMETERIZATIONS

    _check_numbers(cfg)
    dyn_cls = DYNAMICS.get(cfg.dynamics.name)
    check_options(dyn_cls.__init__, cfg.dynamics.options, "dynamics", fields_too=_own_keys(DynamicsConfig))
    dyn_opts = _call_defaults(dyn_cls.__init__, cfg.dynamics.options, "dynamics")
    validate.config_numbers("dynamics", dyn_opts)  # before building: steps=10**12 would allocate a table
    try:
        dyn = dyn_cls(**dyn_opts)
    except (TypeError, ValueError) as e:
        raise UserError(f"dynamics {cfg.dynamics.name}: {e}") from None
    PARAMETERIZATIONS.get(cfg.model.parameterization)
    WEIGHTINGS.get(cfg.model.weighting)
    t = cfg.train
    if t.precision not in ("fp32", "bf16"):
        raise UserError(f"train.precision must be fp32 or bf16, got {t.precision!r}")
    if t.compile_mode not in COMPILE_MODES:
        raise UserError(f"train.compile_mode must be one of {', '.join(COMPILE_MODES)}, got {t.compile_mode!r}")
    validate.device_name(t.device, "train.device")
    validate.seeds(cfg.sample.seed, cfg.sample.n, "sample.seed")
    cfg = replace(cfg, dynamics=replace(cfg.dynamics, options=dyn.describe() | {k: v for k, v in dyn_opts.items()}))
    cfg = _resolve_registries(cfg, dyn)
    return cfg


DATA_SPLITS = ("train", "test", "all")


def _own_keys(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.name != "options")


def _resolve_registries(cfg: Config, dyn: Any) -> Config:
    """Names and options of the data, network and sampler axes; these registries live in optional modules."""
    # on use: config imports no torch; these registries' modules do
    from .data import DATASETS
    from .networks import NETWORKS, PRESETS
    from .samplers import SAMPLERS, parse_clip, plan_sampling, resolve_sampler
    from .schedules import GRIDS

    d = cfg.data
    data_opts = check_options(DATASETS.get(d.name).load, d.options, "data", skip=("root", "split", "resolution", "download"),
                              fields_too=_own_keys(DataConfig))
    if d.split not in DATA_SPLITS:
        raise UserError(f"data.split must be one of {', '.join(DATA_SPLITS)}, got {d.split!r}")
    family = NETWORKS.get(PRESETS.get(cfg.network.preset).family)
    net_opts = check_options(family.__init__, cfg.network.options, "network",
                             skip=("in_channels", "resolution", "shape", "num_classes"),
                             fields_too=_own_keys(NetworkConfig))
    s = cfg.sample
    sampler = resolve_sampler(dyn, s.sampler)
    sample_opts = check_options(SAMPLERS.get(sampler).fn, s.options, "sample", skip=SAMPLER_CALL_ARGS,
                                fields_too=_own_keys(SampleConfig))
    if s.grid != "auto":
        GRIDS.get(s.grid)
    parse_clip(s.clip)
    try:
        plan = plan_sampling(dyn, sampler, steps=s.steps, grid=s.grid, options=sample_opts)
    except UserError as e:
        raise UserError(f"sample: {e}") from None
    # The options stay the user's: the plan's resolved ones depend on steps and budget, which a later
    # request may change; every result records the options it ran with.
    return replace(cfg, data=replace(d, options=data_opts), network=replace(cfg.network, options=net_opts),
                   sample=replace(s, sampler=plan.sampler, grid=plan.grid, steps=plan.steps, options=sample_opts))


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
