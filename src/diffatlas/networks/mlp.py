"""A residual MLP denoiser for toy 2-D / vector data (and, flattened, tiny images).

    h = Linear(D -> W)(x)
    repeat depth times:  h = h + Linear(SiLU(Linear(LN(h) * (1 + s) + b))),   (s, b) = Linear(e)
    out = Linear(W -> D)(SiLU(LN(h)))

e is the noise embedding (Fourier features of c_noise + MLP), plus a label embedding when
`num_classes` is set. The scale/shift conditioning is the adaLN/FiLM form (Perez et al. 2018;
Peebles & Xie 2023); the residual MLP blocks follow the pre-norm transformer MLP.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .layers import ClassEmbedding, Dropout, NoiseEmbedding


class _MLPBlock(nn.Module):
    def __init__(self, width: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.mod = nn.Linear(emb_dim, 2 * width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.drop = Dropout(dropout)

    def forward(self, h: Tensor, e_act: Tensor) -> Tensor:
        scale, shift = self.mod(e_act).chunk(2, dim=1)
        z = self.norm(h) * (1 + scale) + shift
        return h + self.fc2(self.drop(F.silu(self.fc1(z))))


class MLPDenoiser(nn.Module):
    """``net(x (N, *shape), c_noise (N,), cond (N,) long | None) -> (N, *shape)``.

    `shape` is the per-sample shape, e.g. (2,) for 2-D toy data; larger shapes are flattened to
    D = prod(shape). `width` is the hidden width, `depth` the number of residual blocks.
    """

    def __init__(
        self,
        shape: Sequence[int] = (2,),
        width: int = 256,
        depth: int = 4,
        num_classes: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_shape = tuple(int(s) for s in shape)
        dim = math.prod(self.in_shape)
        emb_dim = width
        self.embed = NoiseEmbedding(emb_dim, freq_dim=max(64, width // 2 * 2))
        self.class_embed = ClassEmbedding(num_classes, emb_dim) if num_classes else None
        self.num_classes = num_classes
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(_MLPBlock(width, emb_dim, dropout) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        e = self.embed(c_noise)
        if self.class_embed is not None:
            e = e + self.class_embed(cond, x.shape[0], x.device)
        e_act = F.silu(e)
        h = self.inp(x.flatten(1))
        for blk in self.blocks:
            h = blk(h, e_act)
        return self.out(F.silu(self.norm_out(h))).reshape(x.shape)

    @classmethod
    def from_shape(cls, shape: Sequence[int], num_classes: int | None = None, **kwargs) -> MLPDenoiser:
        """Build for any per-sample shape (D,) or (C, H, W) (flattened)."""
        kwargs.pop("_explicit", None)
        if len(shape) == 0 or any(int(s) < 1 for s in shape):
            raise UserError(f"mlp: needs a per-sample shape of positive sizes such as (2,), got {tuple(shape)}")
        return cls(shape=shape, num_classes=num_classes, **kwargs)
