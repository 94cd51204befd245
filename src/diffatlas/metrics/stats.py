"""Sample statistics and distances between feature distributions, in float64.

Everything here works on feature arrays, never on images: an extractor (``extractors.py``)
turns images into features ``(N, D)`` and logits ``(N, K)``; this module turns those into numbers.

* :class:`StreamingMoments`  -- mean and unbiased covariance accumulated batch by batch.
* :func:`frechet_distance`   -- ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})  (Heusel et al. 2017, eq. 6;
  Dowson & Landau 1982).  :class:`FrechetReference` caches the reference side.
* :func:`inception_score`    -- exp(E_x KL(p(y|x) || p(y)))  (Salimans et al. 2016, sec. 4).
* :func:`kid`                -- unbiased MMD^2 with the cubic polynomial kernel (Binkowski et al. 2018, eq. 3 & 4).
* :func:`precision_recall`   -- k-NN manifold precision and recall (Kynkaanniemi et al. 2019, eq. 1-3).
* :func:`fid_infinity`       -- FID extrapolated to infinitely many samples (Chong & Forsyth 2020, sec. 3.2).
* :func:`bootstrap_ci`       -- percentile bootstrap interval of any of the above (Efron & Tibshirani 1993).

Memory: statistics are O(D^2); pairwise computations (KID, precision/recall) run in chunks so that
no (N, N) matrix is ever held for large N.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError

# Elements of one pairwise-distance block (rows x cols); 2^24 float64 = 128 MiB.
_BLOCK_ELEMENTS = 1 << 24


def as_float64(a: Tensor | np.ndarray, name: str = "features", ndim: int = 2) -> np.ndarray:
    """Return `a` as a C-contiguous float64 numpy array, checking its number of dimensions."""
    if isinstance(a, Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    arr = np.ascontiguousarray(np.asarray(a, dtype=np.float64))
    if arr.ndim != ndim:
        raise UserError(f"{name} must be a {ndim}-D array, got shape {tuple(arr.shape)}")
    if not np.all(np.isfinite(arr)):
        raise UserError(f"{name} contain NaN or infinite values; check the generated images")
    return arr


# ------------------------------------------------------------------------------------------------
# Streaming mean and covariance
# ------------------------------------------------------------------------------------------------
class StreamingMoments:
    """Mean and unbiased covariance of features seen batch by batch, accumulated in float64.

    The state is (n, mean, M2) with M2 = sum_i (x_i - mean)(x_i - mean)^T.  Batches are merged with
    the pairwise update of Chan, Golub & LeVeque (1979):

        delta = mean_b - mean_a,   n = n_a + n_b
        mean  = mean_a + delta * n_b / n
        M2    = M2_a + M2_b + delta delta^T * n_a n_b / n

    This is the same information as (n, sum x, sum x x^T) but does not lose digits to the cancellation
    in  sum x x^T - n mean mean^T  when features have a large mean.

    >>> m = StreamingMoments()
    >>> for batch in batches: m.update(batch)      # batch: (B, D)
    >>> m.mean, m.cov                              # (D,), (D, D)
    """

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim
        self.n = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def update(self, features: Tensor | np.ndarray) -> StreamingMoments:
        """Add a batch of features, shape (B, D)."""
        x = as_float64(features)
        if self.dim is None:
            self.dim = x.shape[1]
        if x.shape[1] != self.dim:
            raise UserError(f"feature batch has dimension {x.shape[1]}, expected {self.dim}")
        nb = x.shape[0]
        if nb == 0:
            return self
        mean_b = x.mean(axis=0)
        xc = x - mean_b
        m2_b = xc.T @ xc
        self._merge(nb, mean_b, m2_b)
        return self

    def merge(self, other: StreamingMoments) -> StreamingMoments:
        """Fold another accumulator (e.g. from another process) into this one."""
        if other.n == 0:
            return self
        if self.dim is not None and other.dim != self.dim:
            raise UserError(f"cannot merge moments of dimension {other.dim} into dimension {self.dim}")
        self.dim = other.dim
        self._merge(other.n, other._mean.copy(), other._m2.copy())  # type: ignore[union-attr]
        return self

    def _merge(self, nb: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        if self.n == 0:
            self.n, self._mean, self._m2 = nb, mean_b, m2_b
            return
        na = self.n
        n = na + nb
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (nb / n)
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (na * nb / n)
        self.n = n

    @property
    def mean(self) -> np.ndarray:
        """Mean, shape (D,), float64."""
        if self.n == 0:
            raise UserError("no features were accumulated")
        return self._mean.copy()  # type: ignore[union-attr]

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance sum (x - mean)(x - mean)^T / (n - 1), shape (D, D), float64."""
        if self.n < 2:
            raise UserError(f"a covariance needs at least 2 samples, got {self.n}")
        return self._m2 / (self.n - 1)  # type: ignore[operator]


def mean_cov(features: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    m = StreamingMoments().update(features)
    return m.mean, m.cov


# ------------------------------------------------------------------------------------------------
# Frechet distance
# ------------------------------------------------------------------------------------------------
def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix via eigh.

    Eigenvalues below the numerical-rank tolerance are set to 0 (see :func:`_clip_eigenvalues`)."""
    a = 0.5 * (a + a.T)
    w, v = np.linalg.eigh(a)
    w = _clip_eigenvalues(w)
    return (v * np.sqrt(w)) @ v.T


def _clip_eigenvalues(w: np.ndarray) -> np.ndarray:
    """Zero the eigenvalues of a PSD matrix that are indistinguishable from 0 in float64.

    eigh computes eigenvalues to within about D * eps * max|w|; below that a value (possibly negative) is
    rounding noise of a zero eigenvalue.  Zeroing it keeps sqrt(w), whose slope is infinite at 0, from
    turning noise of 1e-16 into an error of 1e-8 per null direction (rank-deficient covariances are the rule
    for ReLU features with dead units, and for N <= D)."""
    if w.size == 0:
        return w
    tol = w.size * np.finfo(np.float64).eps * max(float(np.abs(w).max()), 0.0)
    return np.where(w > tol, w, 0.0)


class FrechetReference:
    """The reference side (mu_r, S_r) of a Frechet distance, with S_r^{1/2} computed once.

    Tr (S_r S)^{1/2} is computed as Tr (S_r^{1/2} S S_r^{1/2})^{1/2}: S_r S is similar to the
    symmetric PSD matrix S_r^{1/2} S S_r^{1/2} (multiply by S_r^{1/2} and its pseudo-inverse), so both have
    the same non-negative eigenvalues lambda_i and the trace of the square root is sum_i sqrt(lambda_i).
    One symmetric eigen-decomposition (eigvalsh) per distance, no complex arithmetic; eigenvalues below
    the float64 rounding level (including slightly negative ones) are set to 0.  Repeated distances to the same reference
    (bootstrap, sample-size sweeps) pay for sqrt(S_r) only once.
    """

    def __init__(self, mu: Tensor | np.ndarray, cov: Tensor | np.ndarray) -> None:
        self.mu = as_float64(mu, "reference mean", ndim=1)
        self.cov = as_float64(cov, "reference covariance", ndim=2)
        d = self.mu.shape[0]
        if self.cov.shape != (d, d):
            raise UserError(f"reference covariance has shape {self.cov.shape}, expected ({d}, {d})")
        self.cov_sqrt = _psd_sqrt(self.cov)
        self.trace = float(np.trace(self.cov))

    def distance(self, mu: Tensor | np.ndarray, cov: Tensor | np.ndarray) -> float:
        """Frechet distance between N(mu, cov) and the reference (Heusel et al. 2017, eq. 6)."""
        mu = as_float64(mu, "mean", ndim=1)
        cov = as_float64(cov, "covariance", ndim=2)
        if mu.shape != self.mu.shape or cov.shape != self.cov.shape:
            raise UserError(
                f"feature dimension {mu.shape[0]} does not match the reference's {self.mu.shape[0]};"
                " were both computed with the same extractor?"
            )
        m = self.cov_sqrt @ cov @ self.cov_sqrt
        lam = _clip_eigenvalues(np.linalg.eigvalsh(0.5 * (m + m.T)))
        tr_sqrt = float(np.sqrt(lam).sum())
        diff = mu - self.mu
        d2 = float(diff @ diff) + float(np.trace(cov)) + self.trace - 2.0 * tr_sqrt
        # d^2 >= 0 exactly; a tiny negative value is rounding of two equal distributions.
        return max(d2, 0.0)

    def distance_features(self, features: Tensor | np.ndarray) -> float:
        """Frechet distance between the Gaussian fitted to features (N, D) and the reference."""
        mu, cov = mean_cov(features)
        return self.distance(mu, cov)


def frechet_distance(
    mu1: Tensor | np.ndarray,
    cov1: Tensor | np.ndarray,
    mu2: Tensor | np.ndarray,
    cov2: Tensor | np.ndarray,
    method: str = "eigh",
) -> float:
    """Frechet (2-Wasserstein) distance squared between N(mu1, cov1) and N(mu2, cov2), in float64.

        d^2 = ||mu1 - mu2||^2 + Tr(cov1 + cov2 - 2 (cov1 cov2)^{1/2})      (Heusel et al. 2017, eq. 6)

    Args:
        mu1, mu2: means, shape (D,).
        cov1, cov2: covariances, shape (D, D), symmetric PSD.
        method: "eigh" (default): eigen-decomposition of the symmetric product
            cov2^{1/2} cov1 cov2^{1/2} (see :class:`FrechetReference`);
            "sqrtm": scipy.linalg.sqrtm of the non-symmetric product cov1 cov2, as in the reference
            TensorFlow/pytorch-fid code; a non-finite result is retried with 1e-6 added to both
            diagonals, and the imaginary part (rounding) is dropped.
    Returns:
        the distance squared (what papers call FID when the features are Inception pool3), >= 0.
    """
    if method == "eigh":
        return FrechetReference(mu2, cov2).distance(mu1, cov1)
    if method != "sqrtm":
        raise UserError(f"unknown matrix square root method {method!r}; choose 'eigh' or 'sqrtm'")
    import scipy.linalg

    mu1, mu2 = as_float64(mu1, "mean", 1), as_float64(mu2, "mean", 1)
    cov1, cov2 = as_float64(cov1, "covariance"), as_float64(cov2, "covariance")
    covmean = scipy.linalg.sqrtm(cov1 @ cov2)
    if not np.all(np.isfinite(covmean)):
        offset = np.eye(cov1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    covmean = np.real(covmean)
    diff = mu1 - mu2
    d2 = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(covmean))
    return max(d2, 0.0)


# ------------------------------------------------------------------------------------------------
# Inception score
# ------------------------------------------------------------------------------------------------
def inception_score(
    logits: Tensor | np.ndarray, splits: int = 10, from_logits: bool = True
) -> tuple[float, float]:
    """Inception score IS = exp(E_x KL(p(y|x) || p(y)))  (Salimans et al. 2016, sec. 4).

    The N samples are cut into `splits` consecutive groups; p(y) is the mean of p(y|x) within a
    group, and the score is reported as mean and (population) standard deviation over groups, as in
    the reference implementation.

    Args:
        logits: (N, K) class logits, or probabilities when from_logits=False.
        splits: number of groups, 1 <= splits <= N.
    Returns:
        (mean, std) over splits; 1 <= IS <= K.
    """
    a = as_float64(logits, "logits")
    n = a.shape[0]
    if not 1 <= splits <= n:
        raise UserError(f"inception score splits must be between 1 and the sample count {n}, got {splits}")
    if from_logits:
        # log p(y|x) = log_softmax(logits), computed stably in float64
        logp = a - a.max(axis=1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    else:
        if np.any(a < 0) or not np.allclose(a.sum(axis=1), 1.0, atol=1e-4):
            raise UserError("probabilities must be non-negative and sum to 1 over classes")
        logp = np.log(np.clip(a, 1e-300, None))
    p = np.exp(logp)
    scores = []
    for idx in np.array_split(np.arange(n), splits):
        py = p[idx].mean(axis=0)  # marginal p(y) of the group
        # KL(p(y|x) || p(y)) = sum_y p(y|x) (log p(y|x) - log p(y))
        kl = (p[idx] * (logp[idx] - np.log(np.clip(py, 1e-300, None)))).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    s = np.asarray(scores)
    return float(s.mean()), float(s.std())


# ------------------------------------------------------------------------------------------------
# KID
# ------------------------------------------------------------------------------------------------
def _generator(generator: torch.Generator | None, seed: int) -> torch.Generator:
    if generator is not None:
        return generator
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between samples x (m, D) and y (n, D) with k(a, b) = (a.b / D + 1)^3.

        MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (n (n-1))
                  - 2 sum_{i, j} k(x_i, y_j) / (m n)                       (Binkowski et al. 2018, eq. 3-4)
    """
    d = x.shape[1]
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise UserError("KID needs at least 2 samples on each side")
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    term_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    term_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(term_xx + term_yy - 2.0 * k_xy.mean())


def kid(
    fake: Tensor | np.ndarray,
    real: Tensor | np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018, sec. 3 & app. D).

    The unbiased MMD^2 of :func:`polynomial_mmd2_unbiased` is averaged over `subsets` random subsets
    of m = min(subset_size, N_fake, N_real) samples drawn without replacement from each side, which
    bounds memory at O(m^2) whatever N is.

    Args:
        fake, real: features (N_fake, D), (N_real, D).
    Returns:
        (mean, standard error) over subsets; the standard error is std(ddof=1) / sqrt(subsets)
        (0 when subsets == 1).  KID is unbiased, so it can be slightly negative for equal distributions.
    """
    x, y = as_float64(fake, "fake features"), as_float64(real, "real features")
    if x.shape[1] != y.shape[1]:
        raise UserError(f"fake features have dimension {x.shape[1]}, real ones {y.shape[1]}")
    if subsets < 1:
        raise UserError(f"KID subsets must be >= 1, got {subsets}")
    m = min(subset_size, x.shape[0], y.shape[0])
    g = _generator(generator, seed)
    vals = np.empty(subsets)
    for s in range(subsets):
        ix = torch.randperm(x.shape[0], generator=g)[:m].numpy()
        iy = torch.randperm(y.shape[0], generator=g)[:m].numpy()
        vals[s] = polynomial_mmd2_unbiased(x[ix], y[iy])
    stderr = float(vals.std(ddof=1) / np.sqrt(subsets)) if subsets > 1 else 0.0
    return float(vals.mean()), stderr


# ------------------------------------------------------------------------------------------------
# Precision and recall
# ------------------------------------------------------------------------------------------------
def _sq_dists(a: torch.Tensor, b: torch.Tensor, b_sq: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (rows of a) x (rows of b), via |a|^2 + |b|^2 - 2 a.b, clipped at 0."""
    d = (a * a).sum(1, keepdim=True) + b_sq[None, :] - 2.0 * (a @ b.T)
    return d.clamp_min_(0.0)


def _chunk_rows(n_cols: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(1, n_cols))


def knn_radii(features: Tensor | np.ndarray, k: int = 3, device: str | torch.device = "cpu") -> Tensor:
    """Squared distance from each sample to its k-th nearest other sample, shape (N,), float64.

    Computed in row chunks: memory O(chunk * N), never O(N^2) at once."""
    x = torch.from_numpy(as_float64(features)).to(device)
    n = x.shape[0]
    if not 1 <= k < n:
        raise UserError(f"k-NN radius needs 1 <= k < number of samples ({n}), got k={k}")
    x_sq = (x * x).sum(1)
    out = torch.empty(n, dtype=torch.float64, device=device)
    step = _chunk_rows(n)
    for i in range(0, n, step):
        d = _sq_dists(x[i : i + step], x, x_sq)
        # the k+1 smallest include the sample itself at distance 0
        out[i : i + step] = d.topk(k + 1, dim=1, largest=False).values[:, k]
    return out.cpu()


def manifold_membership(
    queries: Tensor, support: Tensor, radii_sq: Tensor, device: str | torch.device = "cpu"
) -> np.ndarray:
    """For each query point, whether it lies in at least one ball B(support_j, radius_j), shape (N_q,) bool.

    f(q) = 1 iff ||q - s_j|| <= NND_k(s_j) for some j   (Kynkaanniemi et al. 2019, eq. 1)."""
    q = queries.to(device)
    s = support.to(device)
    r = radii_sq.to(device)
    s_sq = (s * s).sum(1)
    out = np.empty(q.shape[0], dtype=bool)
    step = _chunk_rows(s.shape[0])
    for i in range(0, q.shape[0], step):
        d = _sq_dists(q[i : i + step], s, s_sq)
        # relative slack absorbs the rounding of the |a|^2 + |b|^2 - 2ab expansion for coincident points
        out[i : i + step] = (d <= r[None, :] * (1 + 1e-9) + 1e-12).any(dim=1).cpu().numpy()
    return out


def precision_recall_indicators(
    fake: Tensor | np.ndarray, real: Tensor | np.ndarray, k: int = 3, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample indicators behind :func:`precision_recall`: (fake in real manifold (N_fake,),
    real in fake manifold (N_real,)); precision and recall are their means (Kynkaanniemi et al. 2019, eq. 2-3)."""
    x = torch.from_numpy(as_float64(fake, "fake features"))
    y = torch.from_numpy(as_float64(real, "real features"))
    if x.shape[1] != y.shape[1]:
        raise UserError(f"fake features have dimension {x.shape[1]}, real ones {y.shape[1]}")
    in_real = manifold_membership(x, y, knn_radii(y, k, device), device)
    in_fake = manifold_membership(y, x, knn_radii(x, k, device), device)
    return in_real, in_fake


def precision_recall(
    fake: Tensor | np.ndarray, real: Tensor | np.ndarray, k: int = 3, device: str | torch.device = "cpu"
) -> tuple[float, float]:
    """Improved precision and recall with k-NN manifolds (Kynkaanniemi et al. 2019, sec. 2, eq. 1-3).

    The real manifold is the union of balls around each real feature with radius the distance to its
    k-th nearest real neighbour; precision = fraction of fake samples inside it.  Recall swaps the roles.

    Args:
        fake, real: features (N_fake, D), (N_real, D).
        k: neighbourhood size (the paper uses k = 3).
    Returns:
        (precision, recall), each in [0, 1].
    """
    in_real, in_fake = precision_recall_indicators(fake, real, k, device)
    return float(in_real.mean()), float(in_fake.mean())


# ------------------------------------------------------------------------------------------------
# FID infinity
# ------------------------------------------------------------------------------------------------
@dataclass
class ExtrapolationResult:
    """A metric extrapolated to N = infinity from values at several N.

    value: the intercept of the least-squares line metric(N) = value + slope / N.
    ns, values: the sample counts and the metric measured at each.
    """

    value: float
    slope: float
    ns: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


def extrapolate_to_infinity(ns: Sequence[int], values: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit values = a + b / n; returns (a, b): the value at 1/n = 0 and the slope."""
    inv = 1.0 / np.asarray(ns, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if len(inv) < 2 or np.ptp(inv) == 0:
        raise UserError("extrapolation needs at least two different sample counts")
    design = np.stack([np.ones_like(inv), inv], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, v, rcond=None)
    return float(a), float(b)


def fid_infinity(
    fake: Tensor | np.ndarray,
    reference: FrechetReference,
    ns: Sequence[int] | None = None,
    num_points: int = 15,
    min_n: int | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> ExtrapolationResult:
    """FID_infinity (Chong & Forsyth 2020, sec. 3.2): FID is biased as FID_N = FID_inf + b / N + o(1/N).

    FID_N is measured on random subsets (without replacement, a fresh permutation per N) of the fake
    features at `num_points` evenly spaced N in [min_n, N_fake] (the paper: 5k..50k, 15 points), a line
    is fitted to FID_N against 1/N, and its intercept at 1/N = 0 is returned.

    Args:
        fake: fake features (N_fake, D).
        reference: the real side, see :class:`FrechetReference`.
        ns: explicit sample counts (overrides num_points/min_n).
    """
    x = as_float64(fake, "fake features")
    n = x.shape[0]
    if ns is None:
        lo = min_n if min_n is not None else max(2, n // 10)
        ns = sorted({int(v) for v in np.linspace(lo, n, num_points)})
    ns = [int(v) for v in ns]
    if any(v < 2 or v > n for v in ns):
        raise UserError(f"FID-infinity sample counts must lie in [2, {n}], got {ns}")
    g = _generator(generator, seed)
    fids = []
    for m in ns:
        idx = torch.randperm(n, generator=g)[:m].numpy()
        fids.append(reference.distance_features(x[idx]))
    a, b = extrapolate_to_infinity(ns, fids)
    return ExtrapolationResult(value=a, slope=b, ns=list(ns), values=fids)


# ------------------------------------------------------------------------------------------------
# Bootstrap
# ------------------------------------------------------------------------------------------------
@dataclass
class BootstrapResult:
    """A statistic with its percentile bootstrap interval.

    value: fn on the original data; low, high: the alpha/2 and 1 - alpha/2 quantiles of fn over
    n_boot resamples; samples: the bootstrap values themselves."""

    value: float
    low: float
    high: float
    alpha: float
    n_boot: int
    samples: np.ndarray


def bootstrap_ci(
    fn: Callable[..., float],
    *features: Tensor | np.ndarray,
    n_boot: int = 100,
    seed: int = 0,
    alpha: float = 0.05,
    generator: torch.Generator | None = None,
    paired: bool = False,
) -> BootstrapResult:
    """Percentile bootstrap interval of fn(*features) (Efron & Tibshirani 1993, ch. 13).

    Each array in `features` (rows = samples) is resampled with replacement n_boot times, and fn is
    evaluated on every resample.  Arrays are resampled independently (two samples, e.g. fake and real),
    or with the same row indices when paired=True (several views of one sample, e.g. features and logits).

    Args:
        fn: a statistic of one or more arrays, e.g. ``lambda f: ref.distance_features(f)``.
        features: arrays (N_i, ...) passed to fn in order.
    """
    if n_boot < 1:
        raise UserError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise UserError(f"alpha must be in (0, 1), got {alpha}")
    arrays = [f.detach().cpu().numpy() if isinstance(f, Tensor) else np.asarray(f) for f in features]
    g = _generator(generator, seed)
    value = float(fn(*arrays))
    samples = np.empty(n_boot)
    if paired and len({a.shape[0] for a in arrays}) > 1:
        raise UserError("paired bootstrap needs arrays with the same number of rows")
    for b in range(n_boot):
        if paired:
            idx = torch.randint(0, arrays[0].shape[0], (arrays[0].shape[0],), generator=g).numpy()
            resampled = [a[idx] for a in arrays]
        else:
            resampled = [a[torch.randint(0, a.shape[0], (a.shape[0],), generator=g).numpy()] for a in arrays]
        samples[b] = fn(*resampled)
    low, high = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(value, float(low), float(high), alpha, n_boot, samples)
