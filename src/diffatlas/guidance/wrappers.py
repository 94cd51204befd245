"""Guidance as denoiser -> denoiser wrappers: every sampler and every dynamics works unchanged.

A guided denoiser is again a callable D(x, t, cond) -> x0 estimate with `.dynamics`; the sampler passes
the class labels as `cond` exactly as it does for a conditional model. Whatever x0-estimate a wrapper
returns, the sampler turns it into eps, score or velocity through the same formulas
(score = (alpha D - x) / sigma^2), so guidance in x0 terms is guidance of the score.

Classifier guidance (Dhariwal & Nichol 2021, Sec. 4; Song et al. 2021, Sec. 5 / App. I)
----------------------------------------------------------------------------------------
The guided score adds the gradient of a noise-aware classifier,

    score_g(x_t) = grad log p_t(x_t) + s * grad_x log p(y | x_t, t).

Tweedie's formula ties the x0-estimate to the score: score = (alpha D - x) / sigma^2 (Efron 2011, eq. 2.8).
Asking D_g to satisfy the same relation with score_g:

    (alpha D_g - x) / sigma^2 = (alpha D - x) / sigma^2 + s g        g = grad_x log p(y | x_t, t)
    =>  D_g = D + s * sigma^2 / alpha * g.

In eps terms, eps_g = (x - alpha D_g) / sigma = eps - s * sigma * g, which is Dhariwal & Nichol's
Algorithm 2 (eps - sqrt(1 - alpha_bar) grad log p) for DDPM/DDIM; for the SDE samplers it is the
conditional reverse SDE of Song et al. (2021, eq. 48). Scale 1 with an exact classifier gives exactly the
class-conditional denoiser E[x0 | x_t, y] (Bayes: grad log p(x|y) = grad log p(x) + grad log p(y|x)).

Classifier-free guidance (Ho & Salimans 2022, eq. 6)
---------------------------------------------------
With one network trained with a NULL label (label dropout), D_w = D_u + w (D_c - D_u), D_u = D(x, t, NULL),
D_c = D(x, t, y). eps and the score are affine in D at fixed (x, t) with the same coefficients, so this is
Ho & Salimans' eps_w = (1 + w') eps_c - w' eps_u with w = 1 + w' (w = 1: conditional, w = 0: unconditional).
Both branches go through the network in one batched call of 2N samples.

NFE: a sampler counts calls of the wrapper. One call of the CFG wrapper is one network call on a doubled
batch; one call of the classifier wrapper adds one classifier forward and backward pass.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..denoiser import DENOISER_SIGMA_HAT_MAX, per_sample
from ..dynamics.base import append_dims
from ..errors import UserError


def classifier_log_prob_grad(classifier: Any, x: Tensor, t: Tensor | float, y: Tensor, dynamics: Any) -> Tensor:
    """g = grad_x log p(y | x_t, t) for each sample: (N, *shape), in x's dtype.

    Runs under torch.enable_grad() on a detached copy of x, so it works inside the torch.no_grad() that
    callers wrap samplers in (not inside torch.inference_mode, whose tensors cannot enter autograd).
    Every sample's log-probability depends only on its own x (per-sample networks), so the gradient of
    their sum is each sample's own gradient. No parameter gradients are accumulated.
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        logp = F.log_softmax(classifier.logits(xg, per_sample(t, x), dynamics), dim=-1)  # (N, K)
        chosen = logp.gather(1, y.to(logp.device).long().reshape(-1, 1)).sum()
        (g,) = torch.autograd.grad(chosen, xg)
    return g.detach().to(x.dtype)


class ClassifierGuidedDenoiser:
    """D_g(x, t, y) = D(x, t) + scale * sigma^2 / alpha * grad_x log p(y | x_t, t)  (derivation above).

    Args:
        denoiser: D(x, t, cond) -> x0 with `.dynamics` (a Denoiser, an ExactDenoiser, another wrapper).
        classifier: a noise-aware classifier: `.logits(x_t, t, dynamics) -> (N, K)`, differentiable in x_t.
        scale: guidance scale s; 0 returns the wrapped denoiser's output unchanged (bit for bit: the
            classifier is not evaluated at all).
        pass_cond: give the labels to the wrapped denoiser too (a class-conditional model); False for an
            unconditional model, which then is called as D(x, t).
    Call: x (N, *shape), t scalar or (N,), cond (N,) long = the target classes -> (N, *shape).

    Where alpha -> 0 (rectified flow at t = 1), alpha is replaced by sigma / DENOISER_SIGMA_HAT_MAX as in
    `Denoiser.scalings`, i.e. evaluated within the sigma_hat range the denoiser resolves.
    """

    def __init__(self, denoiser: Any, classifier: Any, scale: float, *, pass_cond: bool = False) -> None:
        self.denoiser = denoiser
        self.classifier = classifier
        self.scale = float(scale)
        self.pass_cond = bool(pass_cond)
        self.dynamics = denoiser.dynamics

    def __call__(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        d = self.denoiser(x, t, cond) if (self.pass_cond and cond is not None) else self.denoiser(x, t)
        if self.scale == 0:
            return d  # short-circuit: exactly the unguided denoiser
        if cond is None:
            raise UserError("classifier guidance needs target classes: pass cond (N,) labels to the sampler")
        g = classifier_log_prob_grad(self.classifier, x, t, cond, self.dynamics)
        t64 = per_sample(t, x).to(torch.float64)
        alpha, sigma = self.dynamics.alpha(t64), self.dynamics.sigma(t64)
        alpha = torch.maximum(alpha, sigma / DENOISER_SIGMA_HAT_MAX)
        coef = append_dims(sigma**2 / alpha, x.ndim)  # sigma^2 / alpha: score -> x0 units
        return (d + (self.scale * coef * g).to(d.dtype)).to(d.dtype)


class CFGDenoiser:
    """D_w(x, t, y) = D(x, t, NULL) + w * (D(x, t, y) - D(x, t, NULL)) (Ho & Salimans 2022, eq. 6).

    Args:
        denoiser: a class-conditional denoiser whose network has a NULL class with index `num_classes`
            (networks.layers.ClassEmbedding), trained with label dropout.
        w: guidance weight. w == 1 short-circuits to ONE conditional call D(x, t, y) (bit for bit the
            conditional model, no extra cost); w == 0 to one call with the NULL class (the unconditional
            model). Otherwise both branches run in one batched call on cat([x, x]) with cat([y, NULL]).
        num_classes: K; the NULL label is K.
    Call: x (N, *shape), t scalar or (N,), cond (N,) long or None -> (N, *shape). cond None samples the
    unconditional model (the NULL class), whatever w.
    """

    def __init__(self, denoiser: Any, w: float, num_classes: int) -> None:
        self.denoiser = denoiser
        self.w = float(w)
        self.num_classes = int(num_classes)
        self.dynamics = denoiser.dynamics

    def __call__(self, x: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        if cond is None:
            return self.denoiser(x, t, torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device))
        if self.w == 1:
            return self.denoiser(x, t, cond)  # short-circuit: exactly the conditional model
        null = torch.full_like(cond, self.num_classes)
        if self.w == 0:
            return self.denoiser(x, t, null)
        t = per_sample(t, x)
        both = self.denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null]))  # one batched call
        d_c, d_u = both.chunk(2)
        return d_u + self.w * (d_c - d_u)


def classifier_guidance(denoiser: Any, scale: float, *, classifier: Any, pass_cond: bool = False) -> ClassifierGuidedDenoiser:
    """Wrap `denoiser` with classifier guidance of strength `scale` (see ClassifierGuidedDenoiser)."""
    _check_scale(scale, "classifier guidance scale")
    return ClassifierGuidedDenoiser(denoiser, classifier, scale, pass_cond=pass_cond)


def classifier_free_guidance(denoiser: Any, scale: float, *, num_classes: int) -> CFGDenoiser:
    """Wrap a class-conditional `denoiser` with classifier-free guidance weight `scale` (see CFGDenoiser)."""
    _check_scale(scale, "classifier-free guidance weight")
    return CFGDenoiser(denoiser, scale, num_classes)


def _check_scale(scale: float, what: str) -> None:
    try:
        v = float(scale)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number >= 0, got {scale!r}") from None
    if not math.isfinite(v) or v < 0:
        raise UserError(f"{what} must be a finite number >= 0, got {scale!r}")
