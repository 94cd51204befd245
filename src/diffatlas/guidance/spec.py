"""Choosing guidance: the GUIDANCE registry, the `--guidance SPEC` parser, and the guidance (and class
labels) for a loaded run, as `diffatlas sample` and the guidance sweep use them."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import UserError
from ..registry import Registry
from ..rundir import RunDir
from .classifier import NoiseAwareClassifier, load_noisy_classifier, untrained_classifier
from .wrappers import classifier_free_guidance, classifier_guidance

# Each kind registers the builder of its wrapper: builder(run, scale, *, classifier, classifier_dir, device)
# -> (denoiser -> guided denoiser); make_guidance looks it up, so a new kind is one builder and its entry.
GUIDANCE: Registry[Callable[..., Callable[[Any], Any]]] = Registry("guidance")

SPEC_HELP = "classifier:SCALE or cfg:W with a number >= 0, e.g. classifier:2 or cfg:3"


def parse_guidance_spec(spec: str | None) -> tuple[str, float] | None:
    """'classifier:2' -> ('classifier', 2.0); None or '' -> None; anything else malformed -> UserError."""
    if spec is None or not str(spec).strip():
        return None
    text = str(spec).strip()
    if ":" not in text:
        raise UserError(f"--guidance {text!r} is malformed; use {SPEC_HELP}")
    kind, value = (s.strip() for s in text.split(":", 1))
    if kind not in GUIDANCE:
        raise UserError(f"--guidance {text!r}: {GUIDANCE.unknown_message(kind)}")
    try:
        scale = float(value)
    except ValueError:
        raise UserError(f"--guidance {text!r}: {value!r} is not a number; use {SPEC_HELP}") from None
    if not math.isfinite(scale) or scale < 0:
        raise UserError(f"--guidance {text!r}: the scale must be a finite number >= 0")
    return kind, scale


def _run_dir(run: Any) -> Path | None:
    snap = getattr(run, "snapshot", None)
    return Path(snap).parent.parent if snap is not None else None  # RUN/snapshots/snapshot-<kimg>


def dataset_num_classes(run: Any) -> int | None:
    """Number of classes of a loaded run's dataset (from its dataset.json), None if unlabelled."""
    if getattr(run, "num_classes", None):
        return int(run.num_classes)

    d = _run_dir(run)
    if d is None or not RunDir(d).dataset_file.exists():
        return None
    k = RunDir(d).dataset().num_classes
    return int(k) if k else None


def resolve_classifier(run: Any, classifier_dir: str | Path | None, device: str | torch.device = "cpu"
                       ) -> NoiseAwareClassifier:
    """The guidance classifier for `run`: a saved one (DIR), or 'untrained' / 'untrained:SEED' for the
    misguided control (seeded random weights of the same architecture). Checks shape and classes."""
    if classifier_dir is None or not str(classifier_dir).strip():
        raise UserError("classifier guidance needs a noise-aware classifier: pass --classifier DIR (train one with "
                        "`diffatlas train-classifier --noisy RUN`) or --classifier untrained for the control")
    text = str(classifier_dir).strip()
    if text == "untrained" or text.startswith("untrained:"):
        k = dataset_num_classes(run)
        if not k:
            raise UserError("classifier guidance needs a labelled dataset; this run's dataset has no classes")
        seed_txt = text.partition(":")[2] or "0"
        try:
            seed = int(seed_txt)
        except ValueError:
            raise UserError(f"--classifier {text!r}: use untrained or untrained:SEED with an integer seed") from None
        return untrained_classifier(tuple(run.shape), k, seed=seed).to(device)
    clf = load_noisy_classifier(text, device=device)
    if tuple(clf.shape) != tuple(run.shape):
        raise UserError(f"classifier {text!r} takes inputs of shape {tuple(clf.shape)}, the run makes {tuple(run.shape)}")
    k = dataset_num_classes(run)
    if k is not None and clf.num_classes != k:
        raise UserError(f"classifier {text!r} has {clf.num_classes} classes, the run's dataset {k}")
    return clf


@GUIDANCE.register("classifier", "classifier:SCALE, gradient of a noise-aware classifier added to the score "
                                 "(Dhariwal & Nichol 2021); needs --classifier DIR or --classifier untrained")
def _classifier_guidance_for(run: Any, scale: float, *, classifier: Any = None,
                             classifier_dir: str | Path | None = None,
                             device: str | torch.device = "cpu") -> Callable[[Any], Any]:
    clf = classifier if classifier is not None else resolve_classifier(run, classifier_dir, device)
    conditional = getattr(run, "num_classes", None) is not None
    return lambda den: classifier_guidance(den, scale, classifier=clf, pass_cond=conditional)


@GUIDANCE.register("cfg", "cfg:W, classifier-free guidance D_u + W (D_c - D_u) of a conditional run trained with "
                          "label dropout (Ho & Salimans 2022)")
def _classifier_free_guidance_for(run: Any, scale: float, **_: Any) -> Callable[[Any], Any]:
    if getattr(run, "num_classes", None) is None:
        raise UserError("cfg guidance needs a class-conditional run (train with network.conditional=true "
                        "train.label_dropout=0.1); this run is unconditional")
    cfg = getattr(run, "cfg", None)
    if cfg is not None and scale != 1 and float(cfg.train.label_dropout) == 0:
        raise UserError("cfg guidance needs a run trained with label dropout (train.label_dropout > 0): this "
                        "run's null class was never trained; use cfg:1 for the plain conditional model")
    k = int(run.num_classes)
    return lambda den: classifier_free_guidance(den, scale, num_classes=k)


def make_guidance(run: Any, kind: str, scale: float, *, classifier: Any = None, classifier_dir: str | Path | None = None,
                  device: str | torch.device = "cpu") -> Callable[[Any], Any]:
    """A function denoiser -> guided denoiser for a loaded run (see `guidance_from_args` for the checks):
    the registered builder of `kind` (GUIDANCE)."""
    if kind not in GUIDANCE:
        raise UserError(f"unknown guidance {kind!r}; choose one of: {', '.join(GUIDANCE.names())}")
    return GUIDANCE.get(kind)(run, scale, classifier=classifier, classifier_dir=classifier_dir, device=device)


def guidance_from_args(run: Any, klass: int | None, spec: str | None, classifier_dir: str | Path | None, n: int,
                       device: str | torch.device = "cpu") -> tuple[Tensor | None, Callable[[Any], Any] | None]:
    """Labels and guidance for `diffatlas sample`.

    Args:
        run: a LoadedRun (sampling.load_run).
        klass: the class of every sample, or None: classes cycle 0, 1, ..., K-1 over the n samples.
        spec: 'classifier:SCALE', 'cfg:W' or None (plain class-conditional sampling of a conditional run).
        classifier_dir: noise-aware classifier directory, or 'untrained[:SEED]' (classifier guidance only).
        n: number of samples.
    Returns:
        (cond LongTensor (n,) on the CPU, or None; wrapper denoiser -> guided denoiser, or None).
    Raises UserError (one line) for a class the dataset does not have, classifier guidance without a
    classifier, cfg on an unconditional run, a malformed spec, or class labels for an unconditional run
    without guidance.
    """
    parsed = parse_guidance_spec(spec)
    k = dataset_num_classes(run)
    conditional = getattr(run, "num_classes", None) is not None
    if parsed is None and not conditional:
        raise UserError("--class needs a class-conditional run (network.conditional=true) or "
                        "--guidance classifier:SCALE with --classifier DIR")
    if parsed is not None and parsed[0] == "classifier" and not k:
        raise UserError("classifier guidance needs a labelled dataset; this run's dataset has no classes")
    wrapper = None
    if parsed is not None:
        wrapper = make_guidance(run, parsed[0], parsed[1], classifier_dir=classifier_dir, device=device)
    if not k:
        raise UserError("class labels need a labelled dataset; this run's dataset has no classes")
    if klass is not None:
        if not 0 <= int(klass) < k:
            raise UserError(f"class {klass} not in 0..{k - 1}")
        cond = torch.full((int(n),), int(klass), dtype=torch.long)
    else:
        cond = torch.arange(int(n), dtype=torch.long) % k
    return cond, wrapper
