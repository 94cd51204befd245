"""Noise-aware classifiers p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021, Sec. 4).

A guidance classifier must classify *noisy* inputs x_t = alpha(t) x0 + sigma(t) eps at every noise
level a sampler visits, so it is trained on x_t drawn exactly as the denoiser was trained: t from
`dynamics.sample_training_t`, x_t from `dynamics.noise`. Like the denoiser's network it never sees
raw t, only c_noise = dynamics.c_noise(t) = log(sigma_hat) / 4, and its input is the unit-variance
rescaling

    x_in = x_t / sqrt(alpha^2 sigma_data^2 + sigma^2)        (= c_in * x_t / alpha, Karras et al. 2022, Table 1)

which stays finite where alpha -> 0 (rectified flow at t = 1). Because x_t / alpha = x0 + sigma_hat eps,
the law of (x_in, c_noise) depends on the dynamics only through sigma_hat: a classifier trained under
one process is a valid p(y | x_t, t) under any other over the same sigma_hat range (recorded in its info).

Interface every guidance classifier has (`NoisyClassifierLike`):

    classifier.num_classes                        K
    classifier.logits(x_t, t, dynamics) -> (N, K)  differentiable in x_t; log_softmax = log p(y | x_t, t)

Implementations: `NoiseAwareClassifier` (a small conv net for images, a FiLM MLP for vectors) and
`MixtureClassifier` (the exact posterior over the components of a Gaussian mixture, an oracle for tests).

Checkpoints are `noisy_classifier.safetensors` + `noisy_classifier.json` (architecture, dynamics, training
record, weights hash); loading never unpickles anything.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import validate
from ..config import load_config, resolve
from ..data import dataset_from_config
from ..denoiser import per_sample
from ..dynamics.base import Dynamics, append_dims
from ..errors import UserError
from ..io import read_saved_module, write_saved_module
from ..metrics.extractors import state_dict_hash
from ..model import make_dynamics
from ..networks.layers import Downsample, NoiseEmbedding, ResBlock, num_groups

NOISY_FORMAT = "diffatlas-noisy-classifier-v1"
# the default training recipe of train_noisy_classifier_for (part of the shared classifier's cache key)
NOISY_RECIPE = {"steps": 2000, "batch": 128, "lr": 1e-3, "seed": 0, "width": 32}
NOISY_WEIGHTS = "noisy_classifier.safetensors"
NOISY_META = "noisy_classifier.json"
_LOG_2PI = math.log(2 * math.pi)


class NoisyClassifierLike(Protocol):
    """What guidance needs from a classifier: K and differentiable logits of p(y | x_t, t)."""

    num_classes: int

    def logits(self, x: Tensor, t: Tensor, dynamics: Dynamics) -> Tensor: ...


# ---- the learned classifier ---------------------------------------------------------------------

class _FiLMBlock(nn.Module):
    """Pre-norm residual MLP block with FiLM modulation by the noise embedding (Perez et al. 2018):
    h + W2 SiLU(W1 (LN(h) (1 + s) + b)), (s, b) = Linear(SiLU(e)). (N, W) -> (N, W)."""

    def __init__(self, width: int, emb_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mod = nn.Linear(emb_dim, 2 * width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, h: Tensor, e_act: Tensor) -> Tensor:
        scale, shift = self.mod(e_act).chunk(2, dim=1)
        return h + self.fc2(F.silu(self.fc1(self.norm(h) * (1 + scale) + shift)))


class NoiseAwareClassifier(nn.Module):
    """p(y | x_t, t) as a network of (x_in, c_noise); per-sample throughout (GroupNorm / LayerNorm, no
    BatchNorm), so the gradient of the summed log-probability is each sample's own gradient.

    Images (C, H, W): the encoder half of a DDPM U-Net, as Dhariwal & Nichol (2021, Sec. 4) build
    their classifier: conv_in, then per level a ResBlock with GroupNorm scale/shift by the noise
    embedding and a strided-conv downsample until the map is 4x4, then GN-SiLU, global mean pool, linear.
    Vectors (D,): Linear -> `depth` FiLM residual MLP blocks -> LN-SiLU-Linear.

    Args:
        shape: per-sample shape, (C, H, W) or (D,).
        num_classes: K.
        width: base channels (images) or hidden width (vectors).
        depth: residual blocks (vectors only).
        sigma_data: data standard deviation of the input scaling (0.5, Karras et al. 2022).
    forward(x_in (N, *shape), c_noise (N,)) -> logits (N, K); `logits(x_t, t, dynamics)` applies the scaling.
    """

    def __init__(self, shape: Sequence[int], num_classes: int, width: int = 32, depth: int = 2,
                 sigma_data: float = 0.5) -> None:
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (1, 3) or any(s < 1 for s in shape):
            raise UserError(f"a noise-aware classifier takes (C, H, W) images or (D,) vectors, got shape {shape}")
        if int(num_classes) < 2:
            raise UserError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.kwargs = {"shape": list(shape), "num_classes": int(num_classes), "width": int(width),
                       "depth": int(depth), "sigma_data": float(sigma_data)}
        self.shape = shape
        self.num_classes = int(num_classes)
        self.sigma_data = float(sigma_data)
        emb = 4 * width
        self.embed = NoiseEmbedding(emb, freq_dim=max(64, width))
        if len(shape) == 3:
            c, h, _ = shape
            self.conv_in = nn.Conv2d(c, width, 3, padding=1)
            blocks: list[nn.Module] = []
            ch, res, mult = width, h, 1
            while True:
                blk = ResBlock(ch, width * mult, emb, scale_shift=True)
                blk.conv2.reset_parameters()  # a classifier needs no identity init; a random one stays non-trivial
                blocks.append(blk)
                ch = width * mult
                if res <= 4:
                    break
                blocks.append(Downsample(ch))
                res = (res + 1) // 2
                mult = min(2 * mult, 4)
            self.blocks = nn.ModuleList(blocks)
            self.norm_out = nn.GroupNorm(num_groups(ch), ch)
            self.head = nn.Linear(ch, self.num_classes)
        else:
            self.inp = nn.Linear(shape[0], width)
            self.blocks = nn.ModuleList(_FiLMBlock(width, emb) for _ in range(depth))
            self.norm_out = nn.LayerNorm(width)
            self.head = nn.Linear(width, self.num_classes)

    def forward(self, x_in: Tensor, c_noise: Tensor) -> Tensor:
        e_act = F.silu(self.embed(c_noise))
        if len(self.shape) == 3:
            h = self.conv_in(x_in)
            for blk in self.blocks:
                h = blk(h, e_act)
            return self.head(F.silu(self.norm_out(h)).mean(dim=(2, 3)))
        h = self.inp(x_in.flatten(1))
        for blk in self.blocks:
            h = blk(h, e_act)
        return self.head(F.silu(self.norm_out(h)))

    def logits(self, x: Tensor, t: Tensor | float, dynamics: Dynamics) -> Tensor:
        """Logits (N, K) of p(y | x_t, t) for x_t (N, *shape); t scalar or (N,). Differentiable in x."""
        t64 = per_sample(t, x).to(torch.float64)
        alpha, sigma = dynamics.alpha(t64), dynamics.sigma(t64)
        # x_in = x_t / std(x_t) with std(x_t)^2 = alpha^2 sigma_data^2 + sigma^2 (finite for alpha = 0)
        std = torch.sqrt(alpha**2 * self.sigma_data**2 + sigma**2)
        dtype = next(self.parameters()).dtype
        x_in = x.to(dtype) / append_dims(std, x.ndim).to(dtype)
        return self(x_in, dynamics.c_noise(t64).to(dtype))


def untrained_classifier(shape: Sequence[int], num_classes: int, seed: int = 0, **kwargs: Any) -> NoiseAwareClassifier:
    """The "misguided" control: a NoiseAwareClassifier of the same architecture with seeded random
    weights, never trained (its gradients carry no information about the classes). Eval mode, frozen."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = NoiseAwareClassifier(shape, num_classes, **kwargs)
    return model.eval().requires_grad_(False)


# ---- the exact classifier of Gaussian-mixture data -------------------------------------------------

class MixtureClassifier:
    """The exact noise-aware classifier of a Gaussian mixture whose classes are its components:

        p(k | x_t) = w_k N(x_t; alpha mu_k, diag(v_k)) / p_t(x_t),   v_k = alpha^2 s_k^2 + sigma^2

    (Bishop 2006, eq. 9.13, for the noised mixture). `logits` returns log w_k N(x_t; alpha mu_k, v_k)
    (N, K), whose log_softmax is log p(k | x_t), in float64 and differentiable in x.
    """

    def __init__(self, mixture: Any) -> None:
        self.mixture = mixture
        self.num_classes = int(mixture.num_components)

    def logits(self, x: Tensor, t: Tensor | float, dynamics: Dynamics) -> Tensor:
        t64 = per_sample(t, x).to(torch.float64)
        a = dynamics.alpha(t64)[:, None, None]
        s = dynamics.sigma(t64)[:, None, None]
        mu = self.mixture.means.to(x.device)[None]            # (1, K, D)
        var = a**2 * self.mixture.stds.to(x.device)[None] ** 2 + s**2  # (N, K, D)
        diff = x.to(torch.float64).flatten(1)[:, None, :] - a * mu
        log_n = -0.5 * (diff**2 / var + torch.log(var) + _LOG_2PI).sum(-1)
        return torch.log(self.mixture.weights.to(x.device))[None] + log_n


# ---- training ---------------------------------------------------------------------------------------

def _level_times(dynamics: Dynamics, levels: int, generator: torch.Generator) -> Tensor:
    """`levels` evaluation times at the (j + 1/2) / levels quantiles of the training-time density, so
    every level covers an equal share of the noise levels the classifier was trained on."""
    t = dynamics.sample_training_t(8192, generator=generator, dtype=torch.float64).to(torch.float64)
    q = (torch.arange(levels, dtype=torch.float64) + 0.5) / levels
    return torch.quantile(t.sort().values, q)


@torch.no_grad()
def accuracy_by_noise_level(model: NoisyClassifierLike, x0: Tensor, y: Tensor, dynamics: Dynamics, *,
                            levels: int = 8, seed: int = 0, batch: int = 512) -> list[dict[str, float]]:
    """Accuracy of `model` on x_t = alpha x0 + sigma eps at `levels` times (quantiles of the training
    density, increasing noise), with noise from a generator seeded by `seed`.

    x0: (N, *shape) clean inputs; y: (N,) labels. Returns [{t, sigma_hat, accuracy}] per level.
    """
    g = torch.Generator().manual_seed(int(seed))
    times = _level_times(dynamics, levels, g)
    dev = x0.device
    out = []
    for tj in times.tolist():
        correct = 0
        for i in range(0, x0.shape[0], batch):
            xb = x0[i:i + batch]
            t = torch.full((xb.shape[0],), tj, dtype=torch.float64, device=dev)
            eps = torch.randn(xb.shape, generator=g, dtype=xb.dtype).to(dev)
            xt = dynamics.noise(xb, t.to(xb.dtype), eps)
            correct += int((model.logits(xt, t, dynamics).argmax(1).cpu() == y[i:i + batch].cpu()).sum())
        sh = float(dynamics.sigma_hat(torch.tensor(tj, dtype=torch.float64)))
        out.append({"t": float(tj), "sigma_hat": sh, "accuracy": correct / max(1, x0.shape[0])})
    return out


def _labelled(dataset: Any, what: str) -> tuple[Tensor, Tensor, int]:
    if getattr(dataset, "labels", None) is None or not getattr(dataset, "num_classes", None):
        raise UserError(f"a noise-aware classifier needs a labelled dataset; the {what} set "
                        f"{getattr(dataset, 'name', '?')!r} has no labels")
    x, y = dataset.get_batch(torch.arange(len(dataset)))
    return x.float().cpu(), y.long().cpu(), int(dataset.num_classes)


def _dynamics_record(dynamics: Dynamics, name: str | None) -> dict[str, Any]:
    opts = json.loads(json.dumps(dynamics.describe(), default=str))
    return {"name": name or type(dynamics).__name__, "options": opts}


def train_noisy_classifier(dataset: Any, dynamics: Dynamics, *, steps: int = 2000, batch: int = 128, lr: float = 1e-3,
                           seed: int = 0, device: str | torch.device = "cpu", log: Callable[[str], Any] | None = print,
                           eval_dataset: Any = None, width: int = 32, eval_levels: int = 8,
                           dynamics_name: str | None = None) -> tuple[NoiseAwareClassifier, dict[str, Any]]:
    """Train a NoiseAwareClassifier across the noise levels of `dynamics`.

    Each step: a batch (x0, y) of `dataset`, t ~ dynamics.sample_training_t, x_t = dynamics.noise(x0, t, eps),
    cross-entropy of logits(x_t, t) against y (Dhariwal & Nichol 2021, Sec. 4); AdamW with a cosine
    learning-rate decay. Deterministic for a seed on a device: init, batches and noise come from seeded
    generators.

    Args:
        dataset: a labelled ImageDataset (x in [-1, 1] of shape (N, *shape), labels (N,)).
        dynamics: the forward process whose training noise levels are used.
        eval_dataset: where the accuracy per noise level is measured (default: `dataset`).
    Returns:
        (model in eval mode on `device`, info) with info["accuracy_by_level"] = [{t, sigma_hat, accuracy}]
        at `eval_levels` quantiles of the training noise density, the chance level, settings and time.
    """
    if steps < 0 or batch < 1 or lr <= 0:
        raise UserError(f"steps must be >= 0, batch >= 1 and lr > 0; got steps={steps}, batch={batch}, lr={lr}")
    x_all, y_all, k = _labelled(dataset, "training")
    x_eval, y_eval, _ = _labelled(eval_dataset, "evaluation") if eval_dataset is not None else (x_all, y_all, k)
    device = torch.device(device)
    model = untrained_classifier(tuple(x_all.shape[1:]), k, seed=seed, width=width).train().requires_grad_(True)
    model.to(device)
    g = torch.Generator().manual_seed(int(seed) + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    start = time.perf_counter()
    n, loss_sum, losses = x_all.shape[0], 0.0, []
    for step in range(int(steps)):
        idx = torch.randint(0, n, (batch,), generator=g)
        x0, y = x_all[idx].to(device), y_all[idx].to(device)
        t = dynamics.sample_training_t(batch, generator=g, dtype=torch.float64).to(device)
        eps = torch.randn(x0.shape, generator=g).to(device)
        xt = dynamics.noise(x0, t.to(x0.dtype), eps)
        loss = F.cross_entropy(model.logits(xt, t, dynamics), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += float(loss.detach())
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            losses.append({"step": step + 1, "loss": loss_sum / max(1, (step + 1) - (losses[-1]["step"] if losses else 0))})
            loss_sum = 0.0
            if log is not None:
                log(f"noisy classifier step {step + 1}/{steps}  loss {losses[-1]['loss']:.4f}")
    model.eval().requires_grad_(False)
    by_level = accuracy_by_noise_level(model, x_eval.to(device), y_eval, dynamics, levels=eval_levels, seed=seed)
    info = {
        "dataset": getattr(dataset, "name", "unknown"),
        "eval_split": getattr(eval_dataset if eval_dataset is not None else dataset, "split", "unknown"),
        "dynamics": _dynamics_record(dynamics, dynamics_name),
        "steps": int(steps), "batch": int(batch), "lr": lr, "seed": int(seed), "width": int(width),
        "chance": 1.0 / k,
        "accuracy_by_level": by_level,
        "mean_accuracy": sum(r["accuracy"] for r in by_level) / len(by_level),
        "loss_curve": losses,
        "train_seconds": round(time.perf_counter() - start, 3),
    }
    if log is not None:
        log("accuracy by noise level: " + "  ".join(f"sigma_hat {r['sigma_hat']:.3g}: {r['accuracy']:.3f}"
                                                   for r in by_level))
    return model, info


# ---- save / load ------------------------------------------------------------------------------------

def save_noisy_classifier(out_dir: str | Path, model: NoiseAwareClassifier, info: dict[str, Any] | None = None) -> Path:
    """Write noisy_classifier.safetensors and noisy_classifier.json (atomically, :func:`io.write_saved_module`)
    into out_dir (created)."""
    path = Path(out_dir)
    record = {"architecture": "NoiseAwareClassifier", "kwargs": model.kwargs, "info": dict(info or {})}
    write_saved_module(model.state_dict(), path / NOISY_META, path / NOISY_WEIGHTS, format=NOISY_FORMAT,
                       record=record, weights_hash=state_dict_hash)
    return path


def load_noisy_classifier(path_dir: str | Path, device: str | torch.device = "cpu") -> NoiseAwareClassifier:
    """Load a classifier written by `save_noisy_classifier` (safetensors + JSON; nothing is unpickled).

    The training record is attached as `model.info`. Raises UserError for a missing folder or file, a
    JSON of another format (e.g. an evaluation classifier) or weights whose hash differs from the record."""
    path = Path(path_dir)
    meta_path, weights_path = path / NOISY_META, path / NOISY_WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        hint = " (that is an evaluation classifier, not a noise-aware one)" if (path / "classifier.json").is_file() else ""
        raise UserError(f"no noise-aware classifier at {str(path)!r}: expected {NOISY_META} and {NOISY_WEIGHTS}{hint}; "
                        "train one with `diffatlas train-classifier --noisy RUN_OR_CONFIG`")
    fix = "train it again with `diffatlas train-classifier --noisy RUN_OR_CONFIG`"
    model, meta = read_saved_module(NoiseAwareClassifier, meta_path, weights_path, format=NOISY_FORMAT,
                                    allowed={"shape", "num_classes", "width", "depth", "sigma_data"},
                                    what="noise-aware classifier", fix=fix, weights_hash=state_dict_hash)
    model.info = meta.get("info", {})  # type: ignore[attr-defined]
    return model.to(device).eval().requires_grad_(False)


# ---- from a run or a config -----------------------------------------------------------------------

def _config_of(run_or_config: str | Path):
    from ..sampling import read_run_config  # on use: keeps the sampling layer out of `diffatlas --help`

    p = Path(run_or_config)
    if p.is_dir():
        return read_run_config(p)
    if p.is_file():
        return load_config(p)
    raise UserError(f"{str(p)!r} is neither a run directory nor a config file")


def train_noisy_classifier_for(run_or_config: str | Path, out_dir: str | Path, *, steps: int = NOISY_RECIPE["steps"],
                               batch: int = NOISY_RECIPE["batch"], lr: float = NOISY_RECIPE["lr"],
                               seed: int = NOISY_RECIPE["seed"], device: str | torch.device = "auto",
                               width: int = NOISY_RECIPE["width"],
                               untrained: bool = False, log: Callable[[str], Any] | None = print
                               ) -> tuple[NoiseAwareClassifier, dict[str, Any]]:
    """Train (or, with untrained=True, only initialise: the misguided control) the noise-aware classifier
    for a run directory or a config file: its dataset (train split; accuracy measured on the test split
    when the dataset has one) and its dynamics. Saves to out_dir; returns (model, info).

    This is what `diffatlas train-classifier --noisy RUN_OR_CONFIG -o OUT_DIR` calls."""
    cfg = resolve(_config_of(run_or_config))
    device = validate.device(device)
    d = cfg.data
    train_set = dataset_from_config(d)
    try:
        test_set = dataset_from_config(d, "test")
    except (UserError, OSError):
        test_set = None
    dynamics = make_dynamics(cfg)
    if untrained:
        x, _, k = _labelled(train_set, "training")
        model = untrained_classifier(tuple(x.shape[1:]), k, seed=seed, width=width)
        ev = test_set if test_set is not None else train_set
        xe, ye, _ = _labelled(ev, "evaluation")
        by_level = accuracy_by_noise_level(model, xe, ye, dynamics, seed=seed)
        info = {"dataset": train_set.name, "untrained": True, "seed": int(seed), "width": int(width), "chance": 1.0 / k,
                "dynamics": _dynamics_record(dynamics, cfg.dynamics.name), "accuracy_by_level": by_level,
                "eval_split": ev.split}
    else:
        model, info = train_noisy_classifier(train_set, dynamics, steps=steps, batch=batch, lr=lr, seed=seed,
                                             device=device, log=log, eval_dataset=test_set, width=width,
                                             dynamics_name=cfg.dynamics.name)
    info["source"] = str(run_or_config)
    save_noisy_classifier(out_dir, model, info)
    model.info = info  # type: ignore[attr-defined]
    return model, info
