"""Diffusion Transformer (Peebles & Xie 2023) with adaLN-Zero conditioning.

    patchify: p x p conv stride p, (N, C, H, W) -> (N, L = HW/p^2, D), + fixed 2-D sin-cos positions
    c = NoiseEmbedding(c_noise) + ClassEmbedding(cond)                       (N, D)
    depth x block:  (s1, b1, g1, s2, b2, g2) = Linear(SiLU(c))  zero-initialised (adaLN-Zero)
                    x = x + g1 * Attn(LN(x) * (1 + s1) + b1)
                    x = x + g2 * MLP(LN(x) * (1 + s2) + b2)
    final: LN with adaLN (shift, scale), Linear(D -> p^2 C) zero-initialised, unpatchify

DiT-S: D=384, depth 12, 6 heads (33M parameters at 32x32x4 latents with patch 2, Table 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .layers import AdaLNModulation, ClassEmbedding, NoiseEmbedding, modulate, sincos_pos_embed_2d, zero_
from .unet import _square_image


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero. x (N, L, D), c (N, D) -> (N, L, D)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.ada = AdaLNModulation(dim, dim, 6)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        n, length, d = x.shape
        s1, b1, g1, s2, b2, g2 = self.ada(c)
        qkv = self.qkv(modulate(self.norm1(x), b1, s1)).reshape(n, length, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (N, heads, L, d_head)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, d)
        x = x + g1.unsqueeze(1) * self.proj(a)
        h = self.fc2(F.gelu(self.fc1(modulate(self.norm2(x), b2, s2)), approximate="tanh"))
        return x + g2.unsqueeze(1) * h


class DiT(nn.Module):
    """``net(x (N, C, H, W), c_noise (N,), cond (N,) long | None) -> (N, C, H, W)``.

    `hidden_size` (D), `depth`, `num_heads`, `patch_size` (p; H and W divisible by p) as in
    Peebles & Xie 2023. `resolution` fixes the token grid (positions are a fixed buffer).
    `num_classes` adds a label table with a NULL row (index num_classes) for classifier-free guidance.
    """

    def __init__(
        self,
        in_channels: int,
        resolution: int = 32,
        patch_size: int = 2,
        hidden_size: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        num_classes: int | None = None,
        freq_dim: int = 256,
    ) -> None:
        super().__init__()
        if resolution % patch_size:
            raise ValueError(f"resolution {resolution} is not divisible by patch size {patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by {num_heads} heads")
        self.in_shape = (in_channels, resolution, resolution)
        self.patch = patch_size
        self.num_classes = num_classes
        self.grid = resolution // patch_size
        self.patch_embed = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.register_buffer(
            "pos", sincos_pos_embed_2d(hidden_size, self.grid, self.grid)[None], persistent=False
        )
        self.embed = NoiseEmbedding(hidden_size, freq_dim=freq_dim)
        self.class_embed = ClassEmbedding(num_classes, hidden_size, init_std=0.02) if num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth))
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.ada_out = AdaLNModulation(hidden_size, hidden_size, 2)
        self.out = nn.Linear(hidden_size, patch_size * patch_size * in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT initialisation: Xavier-uniform linears, patch embedding like a linear, noise MLP N(0, 0.02),
        # adaLN modulations and the output layer zero (adaLN-Zero, Peebles & Xie 2023, Sec. 3.2).
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.embed.fc1.weight, std=0.02)
        nn.init.normal_(self.embed.fc2.weight, std=0.02)
        for blk in self.blocks:
            zero_(blk.ada.linear)
        zero_(self.ada_out.linear)
        zero_(self.out)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        n, ch, hh, ww = x.shape
        p = self.patch
        c = self.embed(c_noise)
        if self.class_embed is not None:
            c = c + self.class_embed(cond, n, x.device)
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos  # (N, L, D)
        for blk in self.blocks:
            h = blk(h, c)
        shift, scale = self.ada_out(c)
        h = self.out(modulate(self.norm_out(h), shift, scale))  # (N, L, p*p*C)
        # unpatchify: (N, gh, gw, p, p, C) -> (N, C, gh*p, gw*p)
        h = h.reshape(n, hh // p, ww // p, p, p, ch).permute(0, 5, 1, 3, 2, 4)
        return h.reshape(n, ch, hh, ww)

    @classmethod
    def from_shape(cls, shape: Sequence[int], num_classes: int | None = None, **kwargs) -> DiT:
        """Build for per-sample shape (C, H, H); H must be divisible by the patch size."""
        kwargs.pop("_explicit", None)
        c, res = _square_image(shape, "dit")
        p = int(kwargs.get("patch_size", 2))
        if res % p:
            raise UserError(f"dit: resolution {res} is not divisible by patch_size {p}; use patch_size 2 or 4 dividing it")
        return cls(c, resolution=res, num_classes=num_classes, **kwargs)
