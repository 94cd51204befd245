"""The Inception-v3 of the original FID code, in plain torch (no torchvision).

Heusel et al. (2017) compute FID with the TensorFlow graph ``classify_image_graph_def.pb`` of
``inception-2015-12-05.tgz``: Inception-v3 (Szegedy et al. 2016) with 1008 output classes. Its
weights were converted to a PyTorch state dict, ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid)
= ``weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity), whose keys follow torchvision's
module names (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch_pool.bn.running_var``, ``fc.weight``,
...). :class:`FIDInceptionV3` has exactly those names and shapes, so the file loads by its keys.

Where the TF graph differs from torchvision's Inception-v3 (facts documented by pytorch-fid's
``inception.py`` and torch-fidelity's ``feature_extractor_inceptionv3.py``):

* every 3x3 average pool inside a mixed block excludes the zero padding from its mean
  (TF's ``avg_pool`` with SAME padding: ``count_include_pad=False``);
* the pooling branch of the last block (``Mixed_7c``) is a 3x3 *max* pool, not an average pool;
* batch normalisation uses eps = 0.001, convolutions have no bias;
* the input is resized inside the graph by TF 1.x ``ResizeBilinear`` (align_corners=False, no
  half-pixel centres) from uint8 values to 299x299, then scaled by (x - 128) / 128.

pool3 is the 2048-d global average of ``Mixed_7c``. The Inception score of Salimans et al. (2016)
uses ``pool3 @ W`` of the 1008-way softmax layer *without* its bias (their ``get_inception_score``
multiplies pool3 by the ``softmax/logits/MatMul`` weights), which torch-fidelity calls
``logits_unbiased``; :meth:`FIDInceptionV3.logits` gives both forms.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError

INPUT_SIZE = 299
NUM_CLASSES = 1008
FEATURE_DIM = 2048
# sha256 prefix of the standard weights file (the hash suffix of both published file names)
STANDARD_SHA256_PREFIX = "6726825d"
# Number of parameters (weights, BN affine terms, fc) of the standard file: torchvision's
# inception_v3 (27,161,264 with its auxiliary head and 1000 classes) minus the auxiliary head
# (3,326,696) plus 8 more classes (8 * 2048 + 8).
NUM_PARAMETERS = 23_850_960


class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU, named ``conv`` and ``bn`` as in the weights file."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_same(x: Tensor) -> Tensor:
    """TF's 3x3/1 average pool with SAME padding: the mean over the window's in-image pixels only."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _chain(x: Tensor, *layers: nn.Module) -> Tensor:
    for layer in layers:
        x = layer(x)
    return x


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 -> 64 + 64 + 96 + pool_features channels."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            _chain(x, self.branch5x5_1, self.branch5x5_2),
            _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
            self.branch_pool(_avg_pool_same(x)),
        ], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 -> 384 + 96 + cin channels."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (c7 inner channels) -> 4 x 192 channels."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        row = {"kernel": (1, 7), "padding": (0, 3)}  # a 1x7 convolution
        col = {"kernel": (7, 1), "padding": (3, 0)}  # a 7x1 convolution
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            _chain(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
            _chain(x, self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                   self.branch7x7dbl_5),
            self.branch_pool(_avg_pool_same(x)),
        ], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2 -> 320 + 192 + cin channels."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            _chain(x, self.branch3x3_1, self.branch3x3_2),
            _chain(x, self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs -> 320 + 768 + 768 + 192 = 2048 channels.

    pool: "avg" (Mixed_7b, padding excluded from the mean) or "max" (Mixed_7c: the FID graph's max pool).
    """

    def __init__(self, cin: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3_1(x)
        b = _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2)
        pooled = _avg_pool_same(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(a), self.branch3x3_2b(a),
            self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b),
            self.branch_pool(pooled),
        ], 1)


def resize_bilinear_tf1(x: Tensor, size: int) -> Tensor:
    """TF 1.x ``resize_bilinear`` with align_corners=False and no half-pixel centres: (N, C, H, W) -> (N, C, size, size).

    Output pixel j samples the input at s = j * (in / out) (computed in float32, as TF does), between
    rows floor(s) and min(floor(s) + 1, in - 1), with TF's lerp order: top = tl + (tr - tl) dx,
    bottom = bl + (br - bl) dx, out = top + (bottom - top) dy (tensorflow/core/kernels/resize_bilinear_op.cc).
    This is not torch's bilinear mode, which samples at (j + 0.5) * in / out - 0.5.
    """

    def taps(n_in: int) -> tuple[Tensor, Tensor, Tensor]:
        s = torch.arange(size, dtype=torch.float32) * torch.tensor(n_in / size, dtype=torch.float32)
        lo = s.long()  # floor: s >= 0
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo.to(x.device), hi.to(x.device), (s - lo.float()).to(x.device, x.dtype)

    ylo, yhi, dy = taps(x.shape[-2])
    xlo, xhi, dx = taps(x.shape[-1])
    top, bottom = x.index_select(-2, ylo), x.index_select(-2, yhi)
    tl, tr = top.index_select(-1, xlo), top.index_select(-1, xhi)
    bl, br = bottom.index_select(-1, xlo), bottom.index_select(-1, xhi)
    top = tl + (tr - tl) * dx
    bottom = bl + (br - bl) * dx
    return top + (bottom - top) * dy[:, None]


class FIDInceptionV3(nn.Module):
    """Inception-v3 of the FID graph: pixel values (N, 3, H, W) in [0, 255] -> pool3 features (N, 2048).

    The module names and parameter shapes are those of the standard weights file (see the module
    docstring); :func:`load_fid_inception` fills them. Feature maps: 299 -> 149 -> 147 -> 73 (max pool)
    -> 71 -> 35 (max pool) -> Mixed_5b..5d (35x35: 256, 288, 288 channels) -> Mixed_6a..6e (17x17, 768)
    -> Mixed_7a..7c (8x8: 1280, 2048, 2048) -> global average = pool3.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, pixels: Tensor) -> Tensor:
        """pool3 features (N, 2048) of pixel values (N, 3, H, W) in [0, 255] (uint8 or float)."""
        x = resize_bilinear_tf1(pixels.to(self.fc.weight.dtype), INPUT_SIZE)   # N x 3 x 299 x 299
        x = (x - 128) / 128                                                     # the graph's Sub and Mul
        if self.Conv2d_1a_3x3.conv.weight.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)                 # the weights' layout (faster on CPUs)
        x = _chain(x, self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3)   # N x 64 x 147 x 147
        x = F.max_pool2d(x, 3, stride=2)                                        # N x 64 x 73 x 73
        x = _chain(x, self.Conv2d_3b_1x1, self.Conv2d_4a_3x3)                  # N x 192 x 71 x 71
        x = F.max_pool2d(x, 3, stride=2)                                        # N x 192 x 35 x 35
        x = _chain(x, self.Mixed_5b, self.Mixed_5c, self.Mixed_5d)             # N x 288 x 35 x 35
        x = _chain(x, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e)  # N x 768 x 17 x 17
        x = _chain(x, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c)             # N x 2048 x 8 x 8
        return x.mean(dim=(2, 3))                                               # pool3: N x 2048

    def logits(self, pool3: Tensor, bias: bool = False) -> Tensor:
        """The 1008 class logits of pool3 features (N, 2048): pool3 W^T, plus the bias when bias=True."""
        out = pool3 @ self.fc.weight.T
        return out + self.fc.bias if bias else out


def load_fid_inception(path: str | Path) -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` and load the weights file at `path` by its keys (weights-only load).

    ``num_batches_tracked`` entries, present in state dicts saved from a torchvision module and absent
    from the converted file, are ignored: they play no part in evaluation. Any other missing or
    unexpected key, or a shape that differs, is a UserError naming the first few.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:  # corrupt, or pickled code
        raise UserError(f"{path} is not a readable weights file: torch.load(weights_only=True) refused it "
                        f"({type(e).__name__}); a state dict of tensors is expected") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{path} does not hold a state dict of tensors")
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    with torch.device("meta"):  # shapes only: every value comes from the file (no initialisation cost)
        net = FIDInceptionV3()
    counters = {k: torch.zeros((), dtype=torch.long) for k in net.state_dict() if k.endswith("num_batches_tracked")}
    own = {k: v for k, v in net.state_dict().items() if k not in counters}
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise UserError(f"{path} is not the FID Inception-v3 weights file: {len(missing)} keys missing "
                        f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}")
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in own.items()
             if state[k].shape != v.shape]
    if wrong:
        raise UserError(f"{path} is not the FID Inception-v3 weights file: shapes differ: {', '.join(wrong[:3])}")
    net.load_state_dict({**{k: v.to(torch.float32) for k, v in state.items()}, **counters}, strict=True, assign=True)
    return net.eval().requires_grad_(False)
