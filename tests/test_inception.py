"""The FID Inception-v3 in plain torch: the layout of the standard weights file, TF 1.x resizing, the
FID graph's pooling, loading by keys, the extractor's input handling, `diffatlas evaluate --extractor
inception` end to end on a weights file of the real layout with random values, and (where torch-fidelity
can be imported) agreement with torch-fidelity's own network."""

from __future__ import annotations

import json
import math
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import diffatlas.metrics.extractors as ex
from diffatlas.cli import main
from diffatlas.config import load_config
from diffatlas.errors import UserError
from diffatlas.metrics import EXTRACTORS
from diffatlas.metrics.inception import FIDInceptionV3, InceptionE, load_fid_inception, resize_bilinear_tf1
from diffatlas.train import train

# The standard file's BasicConv2d blocks, named as torch-fidelity's converter maps the TF graph's
# nodes (utils/util_convert_inception_weights.py: conv -> Conv2d_1a_3x3, mixed/tower/conv_1 ->
# Mixed_5b.branch5x5_2, ...), each holding conv.weight and bn.{weight, bias, running_mean, running_var}.
_A = ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3", "branch_pool"]
_B = ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]
_C = ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3",
      "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"]
_D = ["branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4"]
_E = ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3a",
      "branch3x3dbl_3b", "branch_pool"]
BLOCKS = {"Mixed_5b": _A, "Mixed_5c": _A, "Mixed_5d": _A, "Mixed_6a": _B, "Mixed_6b": _C, "Mixed_6c": _C, "Mixed_6d": _C,
          "Mixed_6e": _C, "Mixed_7a": _D, "Mixed_7b": _E, "Mixed_7c": _E}
STEM = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
# A few shapes read off the TF graph (kernels HWIO, transposed to OIHW by the converter)
SHAPES = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
          "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1), "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
          "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3), "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
          "Mixed_6e.branch7x7dbl_4.conv.weight": (192, 192, 7, 1), "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
          "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1), "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
          "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1), "Mixed_7c.branch_pool.bn.running_var": (192,),
          "fc.weight": (1008, 2048), "fc.bias": (1008,)}


def standard_keys() -> set[str]:
    prefixes = STEM + [f"{b}.{name}" for b, names in BLOCKS.items() for name in names]
    keys = {f"{p}.conv.weight" for p in prefixes}
    keys |= {f"{p}.bn.{s}" for p in prefixes for s in ("weight", "bias", "running_mean", "running_var")}
    return keys | {"fc.weight", "fc.bias"}


def random_standard_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values in the layout of the standard file: He-scaled convolutions and batch-norm
    statistics near the identity, so activations keep their scale through the 94 layers."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    with torch.device("meta"):
        layout = FIDInceptionV3().state_dict()
    for key, v in layout.items():
        if key.endswith("num_batches_tracked"):
            continue  # the converted file has none
        r = torch.randn(v.shape, generator=g)
        if key.endswith("conv.weight"):
            state[key] = r * math.sqrt(2.0 / v[0].numel())
        elif key.endswith("running_var"):
            state[key] = 1.0 + 0.1 * r.abs()
        elif key.endswith("bn.weight"):
            state[key] = 1.0 + 0.1 * r
        elif key == "fc.weight":
            state[key] = r / math.sqrt(v.shape[1])
        else:  # bn.bias, running_mean, fc.bias
            state[key] = 0.1 * r
    return state


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inception") / ex.INCEPTION_WEIGHTS_FILE
    torch.save(random_standard_state(0), path)
    return path


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    for name in ("socket", "create_connection", "getaddrinfo"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_layout_is_the_standard_weights_file():
    state = {k: v for k, v in FIDInceptionV3().state_dict().items() if not k.endswith("num_batches_tracked")}
    assert set(state) == standard_keys() and len(state) == 94 * 5 + 2
    for key, shape in SHAPES.items():
        assert tuple(state[key].shape) == shape, key
    params = sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var")))
    assert params == 23_850_960  # torchvision inception_v3: 27,161,264 - aux head 3,326,696 + 8 classes x 2049


def test_tf1_resize_samples_like_tensorflow():
    # TF 1.x (no half-pixel centres): [a, b] -> 4 samples at 0, 0.5, 1, 1.5, the last clamped to b
    x = torch.tensor([[1.0, 3.0]]).reshape(1, 1, 1, 2).expand(1, 1, 2, 2)
    assert resize_bilinear_tf1(x, 4)[0, 0, 0].tolist() == [1.0, 2.0, 3.0, 3.0]
    # against a direct loop over TF's formula (resize_bilinear_op.cc), 32 -> 299 and 9 -> 299
    g = torch.Generator().manual_seed(0)
    for size in (32, 9):
        img = torch.randint(0, 256, (2, 3, size, size), generator=g).to(torch.float64)
        ref = np.zeros((2, 3, 299, 299))
        s = np.arange(299, dtype=np.float32) * np.float32(size / 299)
        lo = np.floor(s).astype(int)
        hi = np.minimum(lo + 1, size - 1)
        w = (s - lo).astype(np.float64)
        a = img.numpy()
        for i in range(299):
            top = a[:, :, lo[i], lo] + (a[:, :, lo[i], hi] - a[:, :, lo[i], lo]) * w
            bot = a[:, :, hi[i], lo] + (a[:, :, hi[i], hi] - a[:, :, hi[i], lo]) * w
            ref[:, :, i] = top + (bot - top) * w[i]
        np.testing.assert_allclose(resize_bilinear_tf1(img, 299).numpy(), ref, rtol=0, atol=1e-9)
    # ... which is not torch's bilinear (half-pixel centres)
    torch_bilinear = F.interpolate(img, size=(299, 299), mode="bilinear", align_corners=False)
    assert (torch_bilinear - resize_bilinear_tf1(img, 299)).abs().max() > 1.0


def test_fid_graph_pooling():
    torch.manual_seed(0)
    x = torch.randn(1, 8, 5, 5)
    # a constant map stays constant under TF's SAME average pool (padding is left out of the mean)
    block = InceptionE(8, pool="avg").eval()
    pooled = {}
    block.branch_pool.register_forward_hook(lambda m, inp, out: pooled.__setitem__("x", inp[0]))
    block(torch.ones(1, 8, 5, 5))
    assert torch.allclose(pooled["x"], torch.ones(1, 8, 5, 5))
    # the last block pools by max
    block = InceptionE(8, pool="max").eval()
    block.branch_pool.register_forward_hook(lambda m, inp, out: pooled.__setitem__("x", inp[0]))
    block(x)
    assert torch.equal(pooled["x"], F.max_pool2d(x, 3, stride=1, padding=1))
    net = FIDInceptionV3()
    assert net.Mixed_7b.pool == "avg" and net.Mixed_7c.pool == "max"


def test_loading_by_keys_and_bad_files(weights, tmp_path):
    net = load_fid_inception(weights)
    state = torch.load(weights, weights_only=True)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    # num_batches_tracked (in state dicts saved from torchvision-style modules) is neither missing nor unexpected
    missing = {k: v for k, v in state.items() if k != "fc.bias"} | {"Conv2d_1a_3x3.bn.num_batches_tracked": torch.tensor(0)}
    wrong = dict(state, **{"fc.weight": torch.zeros(1000, 2048)})
    for name, bad, needle in (("missing", missing, "1 keys missing ['fc.bias'], 0 unexpected"),
                              ("wrong", wrong, "fc.weight (1000, 2048)")):
        torch.save(bad, tmp_path / f"{name}.pth")
        with pytest.raises(UserError, match=re.escape(needle)) as e:
            load_fid_inception(tmp_path / f"{name}.pth")
        assert "\n" not in str(e.value)
    (tmp_path / "junk.pth").write_bytes(b"not a weights file")
    with pytest.raises(UserError, match="not a readable weights file"):
        load_fid_inception(tmp_path / "junk.pth")


def test_extractor_input_handling(weights, no_network):
    ext = EXTRACTORS.get("inception")(weights)
    assert (ext.feature_dim, ext.num_classes) == (2048, 1008) and ext.weights_hash == ex.file_hash(weights)
    assert ext.standard is False and ext.describe()["standard"] is False
    g = torch.Generator().manual_seed(1)
    grey = torch.rand(1, 1, 8, 8, generator=g) * 2 - 1
    f, logits = ext.features_and_logits(grey)
    assert f.shape == (1, 2048) and logits.shape == (1, 1008) and f.std() > 1e-3
    # grey images are the RGB image with three equal channels; values are read as 8-bit pixels
    assert torch.allclose(ext.features(grey.expand(-1, 3, -1, -1)), f, atol=1e-5)
    assert torch.allclose(ext.features(grey + 1e-3 / 255), f, atol=1e-5)
    pixels = ((grey + 1) * 127.5).round().expand(-1, 3, -1, -1)
    with torch.no_grad():
        pool3 = ext.net(pixels)
        assert torch.allclose(f, pool3, atol=1e-5)
        # the Inception score's logits: pool3 times the softmax weights, without the bias
        assert torch.allclose(logits, pool3 @ ext.net.fc.weight.T, atol=1e-4)
    with pytest.raises(UserError, match="1- or 3-channel"):
        ext.features(torch.zeros(1, 2, 8, 8))


def test_missing_weights_say_how_to_fetch(tmp_path, monkeypatch, no_network):
    missing = tmp_path / "nowhere" / ex.INCEPTION_WEIGHTS_FILE
    monkeypatch.setenv(ex.INCEPTION_ENV, str(missing))
    with pytest.raises(UserError) as e:
        EXTRACTORS.get("inception")()
    msg = str(e.value)
    assert str(missing) in msg and ex.INCEPTION_WEIGHTS_URL in msg and "check_hash=True" in msg and "\n" not in msg
    # default location: torch hub's checkpoints folder, under either published file name
    monkeypatch.delenv(ex.INCEPTION_ENV)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    folder = tmp_path / "th" / "hub" / "checkpoints"
    assert ex.inception_weights_path() == folder / ex.INCEPTION_WEIGHTS_FILE
    folder.mkdir(parents=True)
    (folder / "pt_inception-2015-12-05-6726825d.pth").write_bytes(b"")
    assert ex.inception_weights_path() == folder / "pt_inception-2015-12-05-6726825d.pth"


def _image_folder(root: Path, n: int = 6) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    g = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(g.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def test_evaluate_with_inception_end_to_end(weights, tmp_path, monkeypatch, capsys, no_network):
    """`diffatlas evaluate --extractor inception` on a tiny run: FID, IS and KID logged with the extractor's hash."""
    monkeypatch.setenv("DIFFATLAS_CACHE", str(tmp_path / "cache"))
    folder = _image_folder(tmp_path / "images")
    run = tmp_path / "run"
    train(load_config(None, ["data.name=image-folder", f"data.root={folder}", "data.resolution=8",
                             "network.preset=unet-xs", "network.dropout=0.0", "train.batch=6", "train.kimg=0.012",
                             "train.tick_kimg=0.012", "train.snapshot_kimg=0.012", "train.warmup_kimg=0.006",
                             "train.doctor=false", "train.device=cpu", "dynamics.steps=20"]),
          run, progress=False, log=lambda *_: None)
    argv = ["evaluate", str(run), "--extractor", "inception", "--extractor-path", str(weights), "--metrics", "fid,is,kid",
            "--n", "4", "--sampler", "ddim", "--steps", "2", "--snapshots", "last", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "not the standard FID weights file" in out
    entries = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["metric"] for e in entries] == ["fid", "is", "kid"]
    for e in entries:
        assert e["extractor"] == "inception" and e["extractor_hash"] == ex.file_hash(weights)
        assert e["n"] == 4 and math.isfinite(e["value"])
    assert entries[0]["n_real"] == 6 and entries[0]["value"] > 0  # reference statistics over the 6 images
    # the reference statistics are cached under the extractor's hash; a second evaluation recomputes nothing
    assert list((tmp_path / "cache" / "refstats").glob(f"*inception-{ex.file_hash(weights)}*"))
    assert main(argv) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_features_agree_with_torch_fidelity(weights):
    """Where torch-fidelity can be imported, its network on the same weights file gives the same features."""
    fidelity = pytest.importorskip(
        "torch_fidelity.feature_extractor_inceptionv3",
        reason="torch-fidelity is not installed: it needs torchvision, which cannot run beside this CPU torch build")
    ref = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                               feature_extractor_weights_path=str(weights))
    ext = EXTRACTORS.get("inception")(weights)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    f, logits = ext.features_and_logits(x)
    with torch.no_grad():
        rf, rl = ref(((x + 1) * 127.5).round().to(torch.uint8))
    torch.testing.assert_close(f, rf, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, rl, rtol=1e-4, atol=1e-3)
