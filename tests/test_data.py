"""The data axis: loaders on small files made here in the standard formats, and the exact
Gaussian-mixture denoiser against closed forms, Monte Carlo and autograd."""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from diffatlas.data import (
    DATASETS,
    TOY2D_KINDS,
    ExactDenoiser,
    GaussianMixture,
    ImageDataset,
    LazyImageDataset,
    gaussian,
    load_dataset,
    pad_or_resize,
    read_idx,
    standard_mixture,
)
from diffatlas.data import idx as idx_mod
from diffatlas.data.download import download_file, md5_file
from diffatlas.errors import UserError
from diffatlas.registry import UnknownNameError


# ---- registry and options -------------------------------------------------------------------------
def test_registry_names():
    assert set(DATASETS.names()) == {
        "digits",
        "fashion-mnist",
        "mnist",
        "cifar10",
        "image-folder",
        "toy2d",
        "gaussian",
    }
    with pytest.raises(UnknownNameError, match="did you mean 'mnist'"):
        load_dataset("mnsit")
    with pytest.raises(UserError, match="no option bogus"):
        load_dataset("toy2d", bogus=1)
    with pytest.raises(UserError, match="takes no root"):
        load_dataset("digits", root="/tmp")


# ---- digits ---------------------------------------------------------------------------------------
def test_digits_shapes_range_labels():
    tr, te, al = (load_dataset("digits", split=s) for s in ("train", "test", "all"))
    assert (len(tr), len(te), len(al)) == (1500, 297, 1797)
    assert tr.shape == (1, 8, 8) and tr.num_classes == 10 and tr.in_memory
    x, y = al.get_batch(torch.arange(len(al)))
    assert x.dtype == torch.float32 and x.shape == (1797, 1, 8, 8)
    assert x.min() == -1.0 and x.max() == 1.0
    # pixel values are k/16 mapped to 2k/16 - 1: an integer k in 0..16
    k = (x + 1) * 8
    assert torch.allclose(k, k.round(), atol=1e-5)
    assert set(y.tolist()) == set(range(10)) and y.dtype == torch.long
    # train and test partition "all": every image of "all" is in exactly one of them, in order
    xt, yt = te.get_batch(torch.arange(len(te)))
    xr, yr = tr.get_batch(torch.arange(len(tr)))
    both = torch.cat([xr, xt]).flatten(1)
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, x.flatten(1).tolist()))
    assert torch.bincount(yt, minlength=10).min() >= 15  # every class is in the test split
    assert torch.equal(load_dataset("digits", split="test").labels, te.labels)  # fixed, not re-drawn
    with pytest.raises(UserError, match="split"):
        load_dataset("digits", split="valid")


def test_digits_padded_to_32():
    small, big = load_dataset("digits", split="test"), load_dataset("digits", split="test", resolution=32)
    assert big.shape == (1, 32, 32)
    xs, xb = small.all_images(), big.all_images()
    assert torch.equal(xb[:, :, 12:20, 12:20], xs)
    border = xb.clone()
    border[:, :, 12:20, 12:20] = -1.0
    assert (border == -1.0).all()


# ---- IDX (MNIST, Fashion-MNIST) -------------------------------------------------------------------
def _idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def _write_idx_set(root: Path, n_train=6, n_test=4, seed=0, gz=True) -> dict:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labs = rng.integers(0, 10, size=n, dtype=np.uint8)
        for stem, arr in ((f"{split}-images-idx3-ubyte", imgs), (f"{split}-labels-idx1-ubyte", labs)):
            data = _idx_bytes(arr)
            if gz:
                (root / (stem + ".gz")).write_bytes(gzip.compress(data))
            else:
                (root / stem).write_bytes(data)
        out[split] = (imgs, labs)
    return out


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_reader_values(tmp_path, name):
    ref = _write_idx_set(tmp_path)
    ds = load_dataset(name, root=str(tmp_path))
    assert len(ds) == 6 and ds.shape == (1, 28, 28) and ds.num_classes == 10
    assert ds.storage_dtype == torch.uint8 and len(ds.class_names) == 10
    x, y = ds.get_batch(torch.tensor([3, 0]))
    imgs, labs = ref["train"]
    expect = torch.from_numpy(imgs[[3, 0]].astype(np.float32)) * (2 / 255) - 1
    assert torch.allclose(x[:, 0], expect, atol=1e-6)
    assert y.tolist() == [int(labs[3]), int(labs[0])]
    assert len(load_dataset(name, root=str(tmp_path), split="test")) == 4
    both = load_dataset(name, root=str(tmp_path), split="all")
    assert len(both) == 10 and torch.equal(
        both.all_images()[6:], load_dataset(name, root=str(tmp_path), split="test").all_images()
    )


def test_idx_uncompressed_and_pad_to_32(tmp_path):
    ref = _write_idx_set(tmp_path, gz=False)
    ds = load_dataset("fashion-mnist", root=str(tmp_path), resolution=32)
    assert ds.shape == (1, 32, 32) and ds.storage_dtype == torch.uint8
    x = ds.all_images()
    expect = torch.from_numpy(ref["train"][0].astype(np.float32)) * (2 / 255) - 1
    assert torch.allclose(x[:, 0, 2:30, 2:30], expect, atol=1e-6)
    ring = x.clone()
    ring[:, :, 2:30, 2:30] = -1
    assert (ring == -1).all()


def test_idx_downsize_matches_pil(tmp_path):
    from PIL import Image

    ref = _write_idx_set(tmp_path)
    ds = load_dataset("mnist", root=str(tmp_path), resolution=14)
    assert ds.shape == (1, 14, 14)
    pil = np.asarray(Image.fromarray(ref["train"][0][2]).resize((14, 14), Image.Resampling.BILINEAR))
    got = ((ds.get_batch([2])[0][0, 0] + 1) * 127.5).round().to(torch.uint8).numpy()
    assert np.array_equal(got, pil)


def test_idx_missing_files_named(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset("mnist", root=str(tmp_path))
    msg = str(e.value)
    assert (
        "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg and str(tmp_path) in msg
    )
    _write_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", root=str(tmp_path), split="test")


@pytest.mark.parametrize("corruption", ["magic", "truncated", "gzip", "count", "label"])
def test_idx_corrupt_files(tmp_path, corruption):
    _write_idx_set(tmp_path)
    img = tmp_path / "train-images-idx3-ubyte.gz"
    lbl = tmp_path / "train-labels-idx1-ubyte.gz"
    good = gzip.decompress(img.read_bytes())
    if corruption == "magic":
        img.write_bytes(gzip.compress(b"\x12\x34" + good[2:]))
    elif corruption == "truncated":
        img.write_bytes(gzip.compress(good[:-5]))
    elif corruption == "gzip":
        img.write_bytes(b"\x1f\x8b not really gzip")
    elif corruption == "count":
        lbl.write_bytes(gzip.compress(_idx_bytes(np.zeros(5, np.uint8))))
    elif corruption == "label":
        lbl.write_bytes(gzip.compress(_idx_bytes(np.full(6, 12, np.uint8))))
    with pytest.raises(UserError, match="idx1-ubyte|idx3-ubyte"):
        load_dataset("mnist", root=str(tmp_path))


def test_read_idx_shape(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx_bytes(arr))
    assert np.array_equal(read_idx(tmp_path / "a"), arr)


def test_download_checks_md5(tmp_path, monkeypatch):
    src = tmp_path / "mirror"
    _write_idx_set(src)
    md5 = {f.name: md5_file(f) for f in src.iterdir()}
    dest = tmp_path / "dest"
    monkeypatch.setattr(idx_mod, "MNIST_MIRRORS", ("file:///nonexistent/", src.as_uri() + "/"))
    monkeypatch.setattr(idx_mod, "MNIST_MD5", md5)
    ds = load_dataset("mnist", root=str(dest), download=True, split="all")
    assert len(ds) == 10 and sorted(p.name for p in dest.iterdir()) == sorted(md5)
    with pytest.raises(UserError, match="MD5"):
        download_file([(src / "t10k-labels-idx1-ubyte.gz").as_uri()], tmp_path / "x.gz", "0" * 32)
    assert not (tmp_path / "x.gz").exists() and not (tmp_path / "x.gz.part").exists()


# ---- CIFAR-10 -------------------------------------------------------------------------------------
def _write_cifar(root: Path, per_batch=3, protocol=2) -> dict:
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        batch = {
            b"batch_label": b"x",
            b"labels": labels,
            b"data": data,
            b"filenames": [b"f%d.png" % i for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        out[name] = (data, labels)
    return out


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_reader(tmp_path, protocol):
    ref = _write_cifar(tmp_path, protocol=protocol)
    ds = load_dataset("cifar10", root=str(tmp_path))
    assert len(ds) == 15 and ds.shape == (3, 32, 32) and ds.storage_dtype == torch.uint8
    assert ds.class_names[0] == "airplane"
    x, y = ds.get_batch(torch.tensor([4]))  # second image of data_batch_2
    data, labels = ref["data_batch_2"]
    row = data[1].astype(np.float32) * (2 / 255) - 1
    assert torch.allclose(x[0, 0], torch.from_numpy(row[:1024].reshape(32, 32)))  # red plane
    assert torch.allclose(x[0, 2], torch.from_numpy(row[2048:].reshape(32, 32)))  # blue plane
    assert y.tolist() == [labels[1]]
    te = load_dataset("cifar10", root=str(tmp_path / "cifar-10-batches-py"), split="test")
    assert te.labels.tolist() == ref["test_batch"][1]


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_refuses_malicious_pickle(tmp_path):
    _write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(
        pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2)
    )
    with pytest.raises(UserError, match="not allowed"):
        load_dataset("cifar10", root=str(tmp_path))
    assert not marker.exists()


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(UserError, match="data_batch_1.*data_batch_5.*cifar-10-batches-py"):
        load_dataset("cifar10", root=str(tmp_path))
    _write_cifar(tmp_path)
    f = tmp_path / "cifar-10-batches-py" / "test_batch"
    f.write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2))
    with pytest.raises(UserError, match="3072"):
        load_dataset("cifar10", root=str(tmp_path), split="test")
    f.write_bytes(b"\x80\x02garbage")
    with pytest.raises(UserError, match="test_batch"):
        load_dataset("cifar10", root=str(tmp_path), split="test")


# ---- image folder ---------------------------------------------------------------------------------
def _write_folder(root: Path) -> None:
    from PIL import Image

    for cls, color in (("cats", (0, 255, 0)), ("dogs", (255, 255, 255))):
        (root / cls / "sub").mkdir(parents=True)
        # 40 wide x 20 high: the centre 20x20 crop is columns 10..29, all `color`
        arr = np.zeros((20, 40, 3), np.uint8)
        arr[:, :10] = (255, 0, 0)
        arr[:, 10:30] = color
        arr[:, 30:] = (0, 0, 255)
        Image.fromarray(arr).save(root / cls / "a.png")
        Image.fromarray(np.full((24, 24), 0, np.uint8)).save(root / cls / "sub" / "b.bmp")  # grayscale
    (root / "notes.txt").write_text("not an image")


def test_image_folder(tmp_path):
    _write_folder(tmp_path)
    ds = load_dataset("image-folder", root=str(tmp_path), resolution=16, labels=True)
    assert len(ds) == 4 and ds.shape == (3, 16, 16) and ds.in_memory
    assert ds.class_names == ["cats", "dogs"] and ds.labels.tolist() == [0, 0, 1, 1]
    x, _ = ds.get_batch(torch.arange(4))
    assert torch.allclose(x[0], torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 16, 16))  # green
    assert (x[1] == -1).all() and (x[2] == 1).all()
    lazy = load_dataset("image-folder", root=str(tmp_path), resolution=16, labels=True, in_memory=False)
    assert isinstance(lazy, LazyImageDataset) and not lazy.in_memory
    xl, yl = lazy.get_batch(torch.tensor([2, 0]))
    assert torch.equal(xl, x[[2, 0]]) and yl.tolist() == [1, 0]
    unl = load_dataset("image-folder", root=str(tmp_path), resolution=8)
    assert unl.labels is None and unl.num_classes is None


def test_image_folder_errors(tmp_path):
    with pytest.raises(UserError, match="resolution"):
        load_dataset("image-folder", root=str(tmp_path))
    with pytest.raises(UserError, match="no images"):
        load_dataset("image-folder", root=str(tmp_path), resolution=8)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="broken.png"):
        load_dataset("image-folder", root=str(tmp_path), resolution=8)
    with pytest.raises(UserError, match="class subfolder"):
        load_dataset("image-folder", root=str(tmp_path), resolution=8, labels=True)


# ---- batches --------------------------------------------------------------------------------------
def test_get_batch_determinism_and_to():
    ds = load_dataset("digits")
    idx = torch.tensor([5, 1, 5, 1499])
    a, b = ds.get_batch(idx), ds.get_batch(idx)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[0][0], a[0][2])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(ds.sample_batch(7, g1)[0], ds.sample_batch(7, g2)[0])
    assert ds.to("cpu") is ds and ds.device.type == "cpu"
    with pytest.raises(UserError, match="out of range"):
        ds.get_batch(torch.tensor([1500]))


def test_uint8_storage_and_pad_resize_helpers():
    u8 = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ds = ImageDataset(u8, None, name="t")
    assert torch.allclose(ds.all_images(), u8.float() / 127.5 - 1, atol=1e-6)
    padded = pad_or_resize(u8, 8, "pad")
    assert (
        padded.dtype == torch.uint8 and torch.equal(padded[:, :, 1:6, 1:6], u8) and padded.sum() == u8.sum()
    )
    with pytest.raises(UserError, match="cannot pad"):
        pad_or_resize(u8, 4, "pad")
    assert pad_or_resize(u8, 3).shape == (2, 3, 3, 3)
    assert pad_or_resize(torch.zeros(2, 1, 4, 4), 8, "resize").shape == (2, 1, 8, 8)


@pytest.mark.parametrize("kind", TOY2D_KINDS)
def test_toy2d(kind):
    tr = load_dataset("toy2d", kind=kind, n=20000, seed=1)
    again = load_dataset("toy2d", kind=kind, n=20000, seed=1)
    te = load_dataset("toy2d", kind=kind, n=20000, seed=1, split="test")
    x = tr.all_images()
    assert tr.shape == (2,) and x.dtype == torch.float32 and tr.labels is None
    assert torch.equal(x, again.all_images()) and not torch.equal(x, te.all_images())
    assert x.mean(0).abs().max() < 0.05 and ((x.std(0) - 1).abs() < 0.1).all()
    assert (tr.mixture is not None) == (kind == "gaussian-mixture")


def test_gaussian_dataset():
    ds = load_dataset("gaussian", dim=3, std=[0.5, 1.0, 2.0], mean=1.0, n=40000)
    x = ds.all_images().double()
    assert ds.shape == (3,)
    assert torch.allclose(x.mean(0), torch.ones(3, dtype=torch.float64), atol=0.03)
    assert torch.allclose(x.std(0), torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64), rtol=0.03)
    assert torch.allclose(ds.mixture.stds[0], torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64))
    with pytest.raises(UserError):
        load_dataset("gaussian", dim=3, std=[1.0, 2.0])


# ---- the exact denoiser ---------------------------------------------------------------------------
def _mixture() -> GaussianMixture:
    means = torch.tensor([[-1.0, 0.5], [1.2, -0.3], [0.2, 1.5]], dtype=torch.float64)
    stds = torch.tensor([[0.3, 0.5], [0.4, 0.2], [0.25, 0.25]], dtype=torch.float64)
    return GaussianMixture(means, stds, torch.tensor([0.5, 0.3, 0.2]))


def test_single_gaussian_closed_form():
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    s = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    law = gaussian(3, mu, s)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64) * 2
    alpha = torch.rand(7, generator=g, dtype=torch.float64) + 0.1
    sigma = torch.rand(7, generator=g, dtype=torch.float64) * 2 + 0.01
    a, sg = alpha[:, None], sigma[:, None]
    # posterior mean for N(mu, s^2): mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu)
    expect = mu + a * s**2 / (a**2 * s**2 + sg**2) * (x - a * mu)
    assert torch.allclose(law.denoise(x, alpha, sigma), expect, atol=1e-12)
    assert torch.allclose(law.score(x, alpha, sigma), (a * mu - x) / (a**2 * s**2 + sg**2), atol=1e-12)
    # scalar alpha, sigma broadcast over the batch
    assert torch.allclose(law.denoise(x, 0.7, 0.4), mu + 0.7 * s**2 / (0.49 * s**2 + 0.16) * (x - 0.7 * mu))


def test_mixture_denoiser_vs_monte_carlo():
    mix = _mixture()
    g = torch.Generator().manual_seed(1)
    x0 = mix.sample(400_000, g)
    alpha, sigma = 0.8, 0.6
    xt = torch.tensor([[0.0, 0.0], [1.0, 0.2], [-0.8, 0.6], [0.3, 1.1]], dtype=torch.float64)
    # self-normalized importance sampling: E[x0 | x_t] = E_p0[x0 N(x_t; alpha x0, sigma^2)] / E_p0[N(...)]
    logw = -0.5 * ((xt[:, None, :] - alpha * x0[None]) ** 2).sum(-1) / sigma**2
    w = torch.softmax(logw, dim=1)
    mc = w @ x0
    exact = mix.denoise(xt, alpha, sigma)
    assert torch.allclose(exact, mc, atol=0.01), (exact, mc)


def test_mixture_score_matches_autograd_and_tweedie():
    mix = _mixture()
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(6, 2, generator=g, dtype=torch.float64) * 1.5).requires_grad_(True)
    alpha = torch.rand(6, generator=g, dtype=torch.float64) * 0.9 + 0.1
    sigma = torch.rand(6, generator=g, dtype=torch.float64) + 0.05
    (grad,) = torch.autograd.grad(mix.log_prob(x, alpha, sigma).sum(), x)
    score = mix.score(x.detach(), alpha, sigma)
    assert torch.allclose(score, grad, atol=1e-10)
    # Tweedie: alpha E[x0 | x_t] = x_t + sigma^2 score
    den = mix.denoise(x.detach(), alpha, sigma)
    assert torch.allclose(alpha[:, None] * den, x.detach() + sigma[:, None] ** 2 * score, atol=1e-10)


def test_mixture_log_prob_and_moments():
    mix = _mixture()
    x = torch.tensor([[0.1, 0.2], [-1.0, 0.4], [3.0, -2.0]], dtype=torch.float64)
    comp = torch.distributions.Independent(torch.distributions.Normal(mix.means, mix.stds), 1)
    ref = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(mix.weights), comp)
    assert torch.allclose(mix.log_prob(x), ref.log_prob(x), atol=1e-12)
    noised = mix.noised(0.6, 0.9)
    assert torch.allclose(mix.log_prob(x, 0.6, 0.9), noised.log_prob(x), atol=1e-12)
    s = mix.sample(200_000, torch.Generator().manual_seed(4))
    assert torch.allclose(s.mean(0), mix.mean, atol=0.01)
    assert torch.allclose(torch.cov(s.T), mix.covariance, atol=0.01)


def test_mixture_denoiser_stable_and_batched():
    mix = standard_mixture(2)
    x = torch.tensor([[50.0, -40.0], [1.3, 0.0]], dtype=torch.float64)
    d = mix.denoise(
        x, 1.0, 1e-6
    )  # tiny noise, far from every mode: responsibilities underflow without logsumexp
    assert torch.isfinite(d).all()
    assert torch.allclose(d[1], torch.tensor([1.3, 0.0], dtype=torch.float64), atol=1e-6)
    # alpha = 0 (pure prior): the posterior mean is the data mean
    assert torch.allclose(mix.denoise(x, 0.0, 1.0), mix.mean.expand(2, 2), atol=1e-12)
    # arbitrary leading batch dims, float32 in -> float32 out
    xb = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(5))
    sig = torch.full((3, 4), 0.5)
    out = mix.denoise(xb, 0.9, sig)
    assert out.dtype == torch.float32 and out.shape == (3, 4, 2)
    assert torch.allclose(out[1], mix.denoise(xb[1], 0.9, 0.5))


class _CosineVP:
    """alpha = cos(pi t / 2), sigma = sin(pi t / 2): enough of the dynamics interface for the denoiser."""

    def alpha(self, t):
        return torch.cos(0.5 * math.pi * t)

    def sigma(self, t):
        return torch.sin(0.5 * math.pi * t)


def test_exact_denoiser_interface():
    mix = gaussian(4, 0.5, 0.7)
    dyn = _CosineVP()
    den = ExactDenoiser(mix, dyn)
    assert den.dynamics is dyn
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 5, dtype=torch.float64)
    expect = mix.denoise(x, dyn.alpha(t), dyn.sigma(t))
    assert torch.allclose(den(x, t), expect) and torch.allclose(den(x, t, cond=None), expect)
    img = x.reshape(5, 1, 2, 2)
    assert torch.allclose(den(img, t), expect.reshape(5, 1, 2, 2))
    assert torch.allclose(den(x, 0.3), mix.denoise(x, math.cos(0.15 * math.pi), math.sin(0.15 * math.pi)))
