"""Building blocks shared by the network families.

Every network sees the noise level only as ``c_noise = log(sigma_hat) / 4`` (Karras et al. 2022,
Table 1), a float roughly in [-3, 3], never an integer timestep. It is embedded with fixed Fourier
features followed by an MLP (`NoiseEmbedding`); the frequencies are a buffer computed once, so a
forward pass does no Python work for them.

Conventions: N = batch, C = channels, H x W = spatial size, E = embedding width, L = tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def num_groups(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """GroupNorm group count: at most 32 groups (Wu & He 2018; Ho et al. 2020) with at least 4 channels
    per group, as in the DDPM CIFAR-10 model (128 channels / 32 groups). Narrow ladder presets thus get
    fewer groups (16 channels -> 4 groups) instead of one channel per group, which would make GroupNorm
    an instance norm that erases the additive per-channel noise embedding of a DDPM ResBlock."""
    return math.gcd(max_groups, max(1, channels // min_group_size))


def zero_(module: nn.Module) -> nn.Module:
    """Zero-initialise a layer's weight and bias (Ho et al. 2020 output convs; Peebles & Xie 2023 adaLN-Zero)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class FourierFeatures(nn.Module):
    """Fixed sinusoidal features of a scalar: [cos(w_i c), sin(w_i c)] for geometric w_i.

    The frequencies run geometrically from `min_freq` to `max_freq` radians per unit of c_noise,
    the continuous analogue of the transformer/DDPM sinusoidal embedding (Vaswani et al. 2017;
    Ho et al. 2020, Appendix B) rescaled to the c_noise range: the slowest wave has a period
    (2 pi / 0.25 ~ 25) longer than the whole range [-3, 3], so it is monotone over it, and the
    fastest (64 rad) resolves the ~1e-3 spacing of neighbouring DDPM steps.

    Input: c (N,) float. Output: (N, dim) in the buffer's dtype (float32 unless the module was cast).
    """

    def __init__(self, dim: int, min_freq: float = 0.25, max_freq: float = 64.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"Fourier feature width must be even, got {dim}")
        half = dim // 2
        freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), half, dtype=torch.float64))
        # Derived from constructor arguments, so not part of the state_dict.
        self.register_buffer("freqs", freqs.float(), persistent=False)
        self.dim = dim

    def forward(self, c: Tensor) -> Tensor:
        arg = c.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


class NoiseEmbedding(nn.Module):
    """c_noise -> Fourier features (freq_dim) -> Linear -> SiLU -> Linear -> (N, dim).

    The DDPM U-Net's timestep MLP (Ho et al. 2020: sinusoid(ch) -> dense 4ch -> swish -> dense 4ch)
    and DiT's TimestepEmbedder (Peebles & Xie 2023) have exactly this form.
    """

    def __init__(self, dim: int, freq_dim: int | None = None) -> None:
        super().__init__()
        freq_dim = freq_dim or dim
        self.fourier = FourierFeatures(freq_dim)
        self.fc1 = nn.Linear(freq_dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, c_noise: Tensor) -> Tensor:
        return self.fc2(F.silu(self.fc1(self.fourier(c_noise))))


class ClassEmbedding(nn.Module):
    """Label table with `num_classes + 1` rows; row `num_classes` is the NULL class used for
    classifier-free guidance (Ho & Salimans 2022). ``cond=None`` selects the NULL class for every sample.

    Input: cond (N,) long or None, batch size n. Output: (N, dim).
    """

    def __init__(self, num_classes: int, dim: int, init_std: float = 1.0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.table.weight, std=init_std)

    def forward(self, cond: Tensor | None, n: int, device: torch.device) -> Tensor:
        if cond is None:
            cond = torch.full((n,), self.num_classes, dtype=torch.long, device=device)
        return self.table(cond)


def _squeeze_1x1(state_dict: dict, key: str) -> None:
    """Accept a 1x1-convolution weight (C_out, C_in, 1, 1) for a GEMM weight (C_out, C_in): snapshots
    written when these layers were ``nn.Conv2d`` load unchanged."""
    w = state_dict.get(key)
    if w is not None and w.ndim == 4 and w.shape[2:] == (1, 1):
        state_dict[key] = w.flatten(1)


class ChannelLinear(nn.Linear):
    """A 1x1 convolution written as a matrix product over the channel axis:
    (N, C_in, H, W) -> (N, C_out, H, W), the same function and parameter count as
    ``nn.Conv2d(C_in, C_out, 1)`` (the weight is stored (C_out, C_in), as a Linear's).

    On a channels_last tensor the channels are already the innermost axis, so the layer is one
    GEMM over N*H*W rows with no copy; that is cheaper than the convolution path on the small
    feature maps of a U-Net (on CPU about a third less per call, forward + backward, at 4x4-8x8).
    Other layouts go through ``conv2d`` with a 1x1 view of the weight.
    """

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _squeeze_1x1(state_dict, prefix + "weight")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if x.is_contiguous(memory_format=torch.channels_last):
            return F.linear(x.permute(0, 2, 3, 1), self.weight, self.bias).permute(0, 3, 1, 2)
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (Wu & He 2018), the same parameters and state_dict.

    `compiled_form` (a class default that an instance may override) chooses how torch.compile
    sees a channels_last input on a GPU: "native" (the default) traces the native op; "moments"
    traces `group_norm_from_channel_moments`. Why the second exists: Inductor's decomposition of
    the native op's backward reshapes the gradient to (N, G, C/G, H*W) and so writes an
    (N, C, H, W)-ordered intermediate that the next kernels transpose back (four tiled transposing
    kernels per ResBlock in the generated Triton code at 128x128x32x32; layout work was ~22% of an
    H200 training step at the DDPM CIFAR-10 size), and its forward reads each group's channels
    with a stride of C. The moment form's generated code has no transposing kernel: its reductions
    run over H*W with the channels innermost. It is not the default because its GPU speed is not
    measured yet (`benchmarks/gpu_groupnorm_ab.sh`). On the CPU it is slower compiled (C++
    Inductor handles the native op well), and eager the native kernel (one pass) is always used.
    """

    compiled_form = "native"

    def forward(self, x: Tensor) -> Tensor:
        if (self.compiled_form == "moments" and torch.compiler.is_compiling() and x.is_cuda
                and x.dim() == 4 and self.affine
                and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()):
            return group_norm_from_channel_moments(x, self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x)


def group_norm_from_channel_moments(
    x: Tensor, groups: int, weight: Tensor, bias: Tensor, eps: float
) -> Tensor:
    """GroupNorm of (N, C, H, W) from per-channel moments: the mean and (biased) variance of each
    channel over H x W, combined over the channels of a group exactly (Chan et al. 1979:
    var_g = mean_c(var_c) + mean_c((mean_c - mean_g)^2), all channels holding H*W values), then
    y = x * scale + shift with per-(sample, channel) scale = weight / sqrt(var_g + eps) and
    shift = bias - mean_g * scale. Computed in float32 at least (as autocast runs GroupNorm); the
    result has the promoted dtype of x and the weight, as the native op under autocast."""
    n, c = x.shape[:2]
    acc = torch.promote_types(x.dtype, torch.float32)
    xf = x.to(acc)
    var_c, mean_c = torch.var_mean(xf, dim=(2, 3), correction=0)
    mean_c, var_c = mean_c.view(n, groups, -1), var_c.view(n, groups, -1)
    mean_g = mean_c.mean(2, keepdim=True)
    var_g = var_c.mean(2, keepdim=True) + (mean_c - mean_g).square().mean(2, keepdim=True)
    scale = torch.rsqrt(var_g + eps) * weight.to(acc).view(groups, -1)
    shift = bias.to(acc).view(groups, -1) - mean_g * scale
    y = torch.addcmul(shift.view(n, c, 1, 1), xf, scale.view(n, c, 1, 1))
    return y.to(torch.promote_types(x.dtype, weight.dtype))


class Dropout(nn.Dropout):
    """``nn.Dropout`` (keep each element with probability 1 - p, scale kept ones by 1 / (1 - p)).

    On the CPU the mask is drawn from the global generator's raw 64-bit output, cut into four
    16-bit uniforms: element i is kept when its 16-bit uniform is >= round(p * 2^16), so p is
    rounded to a multiple of 2^-16 (6e-6 off at p = 0.1; a p that this moves by more than 0.1% of
    itself takes the float32 ``rand >= p`` path, 2^-24 resolution) and the kept elements are
    scaled by 1 / (1 - p_rounded), which keeps E[dropout(x)] = x exact. It is a quarter of the
    generator calls of one float32 uniform per element: 644 vs 976 us forward + backward at
    64x64x8x8 (and ``bernoulli_`` is slower still); dropout was ~8% of a small U-Net's CPU step.
    Eager on a GPU it is ``nn.Dropout`` (CUDA's fused kernel); under torch.compile, a float32
    ``rand_like(x) >= p`` that Inductor fuses with its neighbours.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p in (0.0, 1.0) or self.inplace:
            return super().forward(x)
        if torch.compiler.is_compiling():
            # Inductor's own lowering of dropout draws uniforms in the input's dtype and compares
            # them with p rounded to it: a bf16 input drops with probability bf16(p) (0.5039 for
            # p = 0.5029, measured at 16M draws). float32 uniforms keep p exact; the kernel is the same.
            keep = torch.rand_like(x, dtype=torch.float32) >= self.p
            return x * keep * (1.0 / (1.0 - self.p))
        if x.device.type != "cpu":
            return super().forward(x)
        return x * cpu_dropout_mask(x, self.p)


_LANE = 1 << 16  # values of one 16-bit lane


def cpu_dropout_mask(x: Tensor, p: float) -> Tensor:
    """A mask with x's shape, strides and dtype: 0 where dropped (probability ~p), 1 / P(keep) where
    kept, drawn from the global CPU generator (see `Dropout`)."""
    drops = round(p * _LANE)
    dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
    if dense and 0 < drops < _LANE and abs(drops / _LANE - p) <= 1e-3 * p:
        n = x.numel()
        # random_(-2**63, None) draws the full 64-bit range (plain random_() leaves the sign bit 0,
        # which would make every fourth lane non-negative). The lanes are laid out in x's memory
        # order, so the comparison below is one sequential pass for contiguous and channels_last.
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
        lanes = words.view(torch.int16)[:n].as_strided(x.shape, x.stride())
        keep = lanes >= drops - _LANE // 2  # int16 is uniform on [-2^15, 2^15)
        return keep.to(x.dtype).mul_(_LANE / (_LANE - drops))
    # float32 even for bf16 input, so that P(keep) = 1 - p is not rounded to a bf16 grid
    return torch.rand_like(x, dtype=torch.float32).ge_(p).mul_(1.0 / (1.0 - p)).to(x.dtype)


class ResBlock(nn.Module):
    """DDPM residual block (Ho et al. 2020, Appendix B; the Wide-ResNet block of Zagoruyko & Komodakis 2016):

        h = conv1(SiLU(GN(x)))
        h = h + W e                                  (additive, Ho et al.)     or
        h = GN(h) * (1 + scale) + shift, (scale, shift) = W e    (scale_shift=True; Dhariwal & Nichol 2021)
        h = conv2(dropout(SiLU(GN(h))))              conv2 zero-initialised (Ho et al.)
        out = skip(x) + h                            skip = 1x1 conv (ChannelLinear) when channels change

    `e_act` is SiLU(embedding), shape (N, E), computed once by the network for all blocks.
    `groups`: GroupNorm group count of both norms (default: `num_groups` of each width).
    Input (N, C_in, H, W) -> output (N, C_out, H, W).
    """

    def __init__(
        self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, scale_shift: bool = False,
        groups: int | None = None,
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = GroupNorm(groups or num_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch * (2 if scale_shift else 1))
        self.norm2 = GroupNorm(groups or num_groups(out_ch), out_ch)
        self.drop = Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = ChannelLinear(in_ch, out_ch) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, e_act: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb(e_act)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Spatial self-attention with a residual (Ho et al. 2020 at 16x16; Vaswani et al. 2017, eq. 1):
    out = x + proj(softmax(q k^T / sqrt(d)) v), q, k, v = per-pixel linear maps (1x1 convs) of GN(x);
    proj zero-initialised. The H*W pixels are the tokens: on a channels_last input they are a view,
    q, k and v come from one GEMM and reach `scaled_dot_product_attention` with the head width
    innermost, as its fused kernels want. `groups` as in ResBlock. Input and output (N, C, H, W)."""

    def __init__(self, channels: int, heads: int = 1, groups: int | None = None) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = GroupNorm(groups or num_groups(channels), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_(nn.Linear(channels, channels))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("qkv.weight", "proj.weight"):
            _squeeze_1x1(state_dict, prefix + name)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor, e_act: Tensor | None = None) -> Tensor:
        n, c, hh, ww = x.shape
        d = c // self.heads
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(n, hh * ww, c)  # (N, L, C); a view if channels_last
        q, k, v = self.qkv(tokens).view(n, hh * ww, 3, self.heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v)  # (N, heads, L, d)
        a = self.proj(a.transpose(1, 2).reshape(n, hh * ww, c))
        return x + a.view(n, hh, ww, c).permute(0, 3, 1, 2)


class Downsample(nn.Module):
    """Strided 3x3 convolution, halves H and W (Ho et al. 2020). (N, C, H, W) -> (N, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor, e_act: Tensor | None = None) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling then a 3x3 convolution (Ho et al. 2020). (N, C, H, W) -> (N, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, e_act: Tensor | None = None) -> Tensor:
        return self.conv(upsample_nearest2x(x))


def upsample_nearest2x(x: Tensor) -> Tensor:
    """Nearest-neighbour 2x upsampling, ``F.interpolate(x, scale_factor=2, mode="nearest")``.

    Under torch.compile a channels_last input is upsampled as `upsample_nearest2x_broadcast`,
    whose gradient Inductor generates as a sum over each 2x2 block; its own lowering of the
    interpolation's gradient is an index-put with atomic adds (~4x the time forward + backward on
    the CPU at 4x4x32, batch 64; 0.35 ms of an H200 training step at the DDPM CIFAR-10 size).
    Eager, the native kernel is the fastest (the broadcast form's reduction over two strided axes
    is ~7x slower on the CPU), so it is used for every other case."""
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    if torch.compiler.is_compiling() and channels_last:
        return upsample_nearest2x_broadcast(x)
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def upsample_nearest2x_broadcast(x: Tensor) -> Tensor:
    """Nearest 2x upsampling of a channels_last (N, C, H, W) tensor as a broadcast + reshape of its
    (N, H, W, C) view; the output is channels_last."""
    n, c, h, w = x.shape
    y = x.permute(0, 2, 3, 1)[:, :, None, :, None, :].expand(n, h, 2, w, 2, c)
    return y.reshape(n, 2 * h, 2 * w, c).permute(0, 3, 1, 2)


# ---- adaLN helpers (Peebles & Xie 2023, Section 3.2) ---------------------------------------------
def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: x * (1 + scale) + shift, with (N, D) shift/scale broadcast over the token axis of (N, L, D)."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


class AdaLNModulation(nn.Module):
    """SiLU -> Linear(E, k*D), zero-initialised (adaLN-Zero): returns k chunks of shape (N, D).
    At initialisation every modulated residual branch is the identity (Peebles & Xie 2023, Sec. 3.2)."""

    def __init__(self, emb_dim: int, dim: int, chunks: int) -> None:
        super().__init__()
        self.chunks = chunks
        self.linear = zero_(nn.Linear(emb_dim, chunks * dim))

    def forward(self, e: Tensor) -> tuple[Tensor, ...]:
        return self.linear(F.silu(e)).chunk(self.chunks, dim=1)


def sincos_pos_embed_2d(dim: int, h: int, w: int) -> Tensor:
    """Fixed 2-D sine-cosine positional embedding (Vaswani et al. 2017; as used by MAE and DiT):
    half the channels encode the row, half the column. Returns (h*w, dim) float32."""
    if dim % 4:
        raise ValueError(f"positional embedding width must be divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )

    def emb(pos: Tensor) -> Tensor:
        a = pos.reshape(-1, 1) * omega[None, :]
        return torch.cat([torch.sin(a), torch.cos(a)], dim=1)

    return torch.cat([emb(ys), emb(xs)], dim=1).float()
