"""The guidance axis: classifier guidance and classifier-free guidance as denoiser wrappers.

    wrapped = classifier_guidance(denoiser, 2.0, classifier=load_noisy_classifier("clf/"))
    wrapped = classifier_free_guidance(denoiser, 3.0, num_classes=10)
    sampler(wrapped, x, ts, generator=g, cond=labels)         # any sampler, any dynamics

`GUIDANCE` (spec.py) names the kinds (CLI words `classifier:SCALE`, `cfg:W`); `guidance_from_args` is what
`diffatlas sample --class K --guidance SPEC --classifier DIR` calls; `guidance_sweep` (sweep.py) measures
class accuracy and FID/IS against the guidance scale.
"""

from __future__ import annotations

from typing import Any

from .classifier import (
    MixtureClassifier,
    NoiseAwareClassifier,
    NoisyClassifierLike,
    accuracy_by_noise_level,
    load_noisy_classifier,
    save_noisy_classifier,
    train_noisy_classifier,
    train_noisy_classifier_for,
    untrained_classifier,
)
from .spec import (
    GUIDANCE,
    dataset_num_classes,
    guidance_from_args,
    make_guidance,
    parse_guidance_spec,
    resolve_classifier,
)
from .wrappers import (
    CFGDenoiser,
    ClassifierGuidedDenoiser,
    classifier_free_guidance,
    classifier_guidance,
    classifier_log_prob_grad,
)


def __getattr__(name: str) -> Any:
    # the sweep imports the metrics and sampling stacks: load it on first use only
    if name == "guidance_sweep":
        from .sweep import guidance_sweep
        return guidance_sweep
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GUIDANCE", "CFGDenoiser", "ClassifierGuidedDenoiser", "MixtureClassifier", "NoiseAwareClassifier",
    "NoisyClassifierLike", "accuracy_by_noise_level", "classifier_free_guidance", "classifier_guidance",
    "classifier_log_prob_grad", "dataset_num_classes", "guidance_from_args", "guidance_sweep", "load_noisy_classifier",
    "make_guidance", "parse_guidance_spec", "resolve_classifier", "save_noisy_classifier", "train_noisy_classifier",
    "train_noisy_classifier_for", "untrained_classifier",
]
