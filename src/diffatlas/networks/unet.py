"""The DDPM U-Net (Ho et al. 2020, Appendix B), a PixelCNN++-style Wide-ResNet U-Net.

Layout for channel_mult (m_0..m_{L-1}), base width ch and R res blocks per level:

    conv_in(3x3, C_in -> ch)
    down: level l: R x ResBlock(-> ch*m_l) [+ attention if the level's resolution is in attn_resolutions],
          then a strided-conv Downsample except at the last level
    mid:  ResBlock, attention, ResBlock
    up:   level l (reverse): (R + 1) x ResBlock on concat(h, skip) [+ attention], Upsample except at level 0
    out:  GroupNorm, SiLU, conv_out(3x3, ch -> C_out), zero-initialised

With ch=128, mult (1,2,2,2), R=2, attention at 16x16 on 32x32x3 images this has 35.7M parameters,
the CIFAR-10 model of Ho et al. 2020 (Section 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .layers import (
    AttnBlock,
    ClassEmbedding,
    Downsample,
    GroupNorm,
    NoiseEmbedding,
    ResBlock,
    Upsample,
    num_groups,
    zero_,
)


class _ResAttn(nn.Module):
    """A ResBlock optionally followed by attention; `skip` marks up-path blocks that take a skip input."""

    def __init__(self, res: ResBlock, attn: AttnBlock | None, skip: bool) -> None:
        super().__init__()
        self.res = res
        self.attn = attn if attn is not None else nn.Identity()
        self.skip = skip

    def forward(self, x: Tensor, e_act: Tensor) -> Tensor:
        return self.attn(self.res(x, e_act))


class UNet(nn.Module):
    """DDPM U-Net: ``net(x (N, C, H, W), c_noise (N,), cond (N,) long | None) -> (N, C_out, H, W)``.

    Arguments follow Ho et al. 2020: `base_channels` (ch), `channel_mult`, `num_res_blocks`,
    `attn_resolutions` (feature-map sizes that get self-attention), `dropout`. `resolution` is the
    training image size; it decides where attention sits, and any size divisible by
    2^(len(channel_mult) - 1) can be fed at call time. `num_classes` adds a label table
    (+1 NULL row) whose embedding is summed with the noise embedding. `scale_shift=True` switches
    the ResBlock conditioning from Ho et al.'s additive bias to GroupNorm scale/shift
    (Dhariwal & Nichol 2021), at about +7% parameters on the CIFAR-10 config. `norm_groups` sets one
    GroupNorm group count for every layer (as diffusers' UNet2DModel's `norm_num_groups`; needed to
    export a narrow U-Net to diffusers); the default None gives each width `num_groups(width)`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        base_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        num_classes: int | None = None,
        resolution: int = 32,
        scale_shift: bool = False,
        attn_heads: int = 1,
        norm_groups: int | None = None,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        ch = base_channels
        emb_dim = 4 * ch  # Ho et al.: timestep MLP to 4 * ch
        self.in_shape = (in_channels, resolution, resolution)
        self.num_classes = num_classes
        self.levels = len(channel_mult)
        # Resolved architecture (after any resolution adaptation), for reports and benchmarks.
        self.config = {
            "in_channels": in_channels, "out_channels": out_channels, "base_channels": ch,
            "channel_mult": tuple(channel_mult), "num_res_blocks": num_res_blocks,
            "attn_resolutions": tuple(attn_resolutions), "dropout": dropout, "num_classes": num_classes,
            "resolution": resolution, "scale_shift": scale_shift, "attn_heads": attn_heads,
            "norm_groups": norm_groups,
        }
        self.embed = NoiseEmbedding(emb_dim, freq_dim=ch)
        self.class_embed = ClassEmbedding(num_classes, emb_dim) if num_classes else None

        def block(cin: int, cout: int, res: int, skip: bool) -> _ResAttn:
            attn = AttnBlock(cout, attn_heads, norm_groups) if res in attn_resolutions else None
            return _ResAttn(ResBlock(cin, cout, emb_dim, dropout, scale_shift, norm_groups), attn, skip)

        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        down: list[nn.Module] = []
        skip_ch = [ch]
        cur, res = ch, resolution
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                down.append(block(cur, ch * mult, res, skip=False))
                cur = ch * mult
                skip_ch.append(cur)
            if level != self.levels - 1:
                down.append(Downsample(cur))
                skip_ch.append(cur)
                res //= 2
        self.down = nn.ModuleList(down)
        self.mid = nn.ModuleList(
            [
                _ResAttn(ResBlock(cur, cur, emb_dim, dropout, scale_shift, norm_groups),
                         AttnBlock(cur, attn_heads, norm_groups), False),
                _ResAttn(ResBlock(cur, cur, emb_dim, dropout, scale_shift, norm_groups), None, False),
            ]
        )
        up: list[nn.Module] = []
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                up.append(block(cur + skip_ch.pop(), ch * mult, res, skip=True))
                cur = ch * mult
            if level != 0:
                up.append(Upsample(cur))
                res *= 2
        self.up = nn.ModuleList(up)
        self.norm_out = GroupNorm(norm_groups or num_groups(cur), cur)
        self.conv_out = zero_(nn.Conv2d(cur, out_channels, 3, padding=1))

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        e = self.embed(c_noise)
        if self.class_embed is not None:
            e = e + self.class_embed(cond, x.shape[0], x.device)
        e_act = F.silu(e)  # SiLU(emb) once, shared by every ResBlock's projection
        h = self.conv_in(x)
        hs = [h]
        for m in self.down:
            h = m(h, e_act)
            hs.append(h)
        for m in self.mid:
            h = m(h, e_act)
        for m in self.up:
            if getattr(m, "skip", False):
                h = torch.cat([h, hs.pop()], dim=1)
            h = m(h, e_act)
        return self.conv_out(F.silu(self.norm_out(h)))

    @classmethod
    def from_shape(cls, shape: Sequence[int], num_classes: int | None = None, **kwargs) -> UNet:
        """Build for per-sample shape (C, H, H), adapting the preset to the resolution.

        Rule (documented for `build_network`): levels are dropped from the end of `channel_mult`
        until the coarsest feature map is at least 4x4 and the resolution divides evenly
        (8x8 input -> 2 levels: 8, 4; 28x28 -> 3 levels: 28, 14, 7); attention goes
        to the levels whose resolution is in `attn_resolutions`, and if none of them exists at this
        resolution, to the coarsest level (8x8 digits: attention at 4x4; 256x256: at the lowest level).
        Explicit `channel_mult` / `attn_resolutions` overrides are kept as given.
        """
        c, res = _square_image(shape, "unet")
        given = set(kwargs.pop("_explicit", ()))
        mult = tuple(kwargs.pop("channel_mult", (1, 2, 2, 2)))
        if "channel_mult" not in given:
            while len(mult) > 1 and (res % 2 ** (len(mult) - 1) or res // 2 ** (len(mult) - 1) < 4):
                mult = mult[:-1]
        if res % 2 ** (len(mult) - 1):
            raise UserError(
                f"unet: resolution {res} is not divisible by 2^{len(mult) - 1} for channel_mult {mult}; "
                f"use a resolution that is a multiple of {2 ** (len(mult) - 1)}"
            )
        ladder = [res // 2**i for i in range(len(mult))]
        attn = tuple(kwargs.pop("attn_resolutions", (16,)))
        if "attn_resolutions" not in given and not set(attn) & set(ladder):
            attn = (ladder[-1],)
        groups = kwargs.get("norm_groups")
        if groups is not None and (isinstance(groups, bool) or not isinstance(groups, int) or groups < 1):
            raise UserError(f"unet: norm_groups must be a positive integer or None, got {groups!r}")
        try:
            return cls(c, channel_mult=mult, attn_resolutions=attn, num_classes=num_classes, resolution=res, **kwargs)
        except ValueError as e:
            if groups is None or "divisible" not in str(e):
                raise
            raise UserError(f"unet: norm_groups={groups} does not divide the width of every layer "
                            f"(base_channels {kwargs.get('base_channels')}, channel_mult {mult})") from None


def _square_image(shape: Sequence[int], family: str) -> tuple[int, int]:
    if len(shape) != 3 or shape[1] != shape[2] or shape[1] < 4:
        raise UserError(f"{family}: needs a square image shape (C, H, H) with H >= 4, got {tuple(shape)}")
    return int(shape[0]), int(shape[1])
