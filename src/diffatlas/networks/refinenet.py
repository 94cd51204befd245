"""NCSN's score network (Song & Ermon 2019, Appendix B.1) and NCSNv2's variant (Song & Ermon 2020).

Both are RefineNet-style (Lin et al. 2017) encoder-decoders with dilated convolutions instead of
deep downsampling, ELU activations and instance normalisation++:

    begin_conv 3x3 (C -> F)
    res1: 2 residual blocks at F                         (H)
    res2: 2 blocks F -> 2F, first one conv + 2x2 mean-pool (H/2)
    res3: 2 blocks at 2F, dilation 2                     (H/2)
    res4: 2 blocks at 2F, dilation 4                     (H/2)
    refine1(res4) -> 2F,  refine2(res3, .) -> 2F,  refine3(res2, .) -> F,  refine4(res1, .) -> F (end)
    norm, ELU, end_conv 3x3 (F -> C)

Instance normalisation++ (Song & Ermon 2019, Appendix A, "CondInstanceNorm++"): for channel k with
spatial mean mu_k and std s_k, and m, v the mean and std of the mu_k over channels,

    z_k = gamma_k (x_k - mu_k) / s_k + beta_k + alpha_k (mu_k - m) / v .

The alpha term restores the per-channel means that plain instance norm would wipe out (colour shifts).

Differences from the originals, by design of this toolkit:
* NCSN conditions (gamma, alpha, beta) on a discrete noise index through an embedding table. Here
  they are per-channel base values plus a linear map of an embedding of the continuous c_noise
  (Fourier features + MLP), so the same network serves discrete and continuous dynamics.
* NCSNv2 (`RefineNetV2`) uses unconditional InstanceNorm++ and divides the output by sigma
  (Song & Ermon 2020, Technique 3: s(x, sigma) = s(x) / sigma). The network sees c_noise =
  log(sigma_hat) / 4, so `scale_by_sigma=True` multiplies the output by exp(-4 c_noise) = 1/sigma_hat.
  This is the network's only dependence on the noise level. It is meant for score-style targets
  (output ~ sigma^-1); with eps- or x0-parameterizations the denoiser's c_out undoes it only if
  the parameterization expects it, so pick the parameterization accordingly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from .layers import ChannelLinear, ClassEmbedding, NoiseEmbedding
from .unet import _square_image

_EPS = 1e-5


class InstanceNormPP(nn.Module):
    """(Conditional) instance normalisation++. x (N, C, H, W), e (N, E) or None -> (N, C, H, W).

    Base parameters gamma, alpha ~ N(1, 0.02), beta = 0 as in NCSN's initialisation; when
    `emb_dim` is given, a linear map of the embedding adds per-sample offsets to all three.
    """

    def __init__(self, channels: int, emb_dim: int | None = None) -> None:
        super().__init__()
        self.gamma = nn.Parameter(1 + 0.02 * torch.randn(channels))
        self.alpha = nn.Parameter(1 + 0.02 * torch.randn(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        self.cond = nn.Linear(emb_dim, 3 * channels) if emb_dim else None
        if self.cond is not None:
            nn.init.normal_(self.cond.weight, std=0.02)
            nn.init.zeros_(self.cond.bias)

    def forward(self, x: Tensor, e: Tensor | None) -> Tensor:
        gamma, alpha, beta = self.gamma[None], self.alpha[None], self.beta[None]  # (1, C)
        if self.cond is not None:
            dg, da, db = self.cond(e).chunk(3, dim=1)  # (N, C) each
            gamma, alpha, beta = gamma + dg, alpha + da, beta + db
        h = F.instance_norm(x, eps=_EPS)  # (x_k - mu_k) / s_k, fused kernel
        mu = x.mean(dim=(2, 3))  # (N, C)
        v, m = torch.var_mean(mu, dim=1, keepdim=True, unbiased=False)  # over channels (population var)
        mu_hat = (mu - m) * torch.rsqrt(v + _EPS)  # (N, C)
        # z = gamma * x_hat + beta + alpha * (mu - m) / v   (Song & Ermon 2019, App. A)
        shift = beta + alpha * mu_hat
        return torch.addcmul(shift[..., None, None], h, gamma[..., None, None])


def _conv3(cin: int, cout: int, dilation: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=bias)


class _ConvMeanPool(nn.Module):
    """Convolution followed by 2x2 mean pooling (NCSN's downsampling; Gulrajani et al. 2017)."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(self.conv(x), 2)


class _ResidualBlock(nn.Module):
    """norm, ELU, conv, norm, ELU, conv (+ shortcut). `down` halves H, W through conv + mean-pool
    unless a dilation is given, in which case (as in NCSN) the dilated convs replace downsampling."""

    def __init__(self, cin: int, cout: int, emb_dim: int | None, down: bool = False, dilation: int = 1) -> None:
        super().__init__()
        self.norm1 = InstanceNormPP(cin, emb_dim)
        if down and dilation == 1:
            self.conv1 = _conv3(cin, cin)
            self.conv2 = _ConvMeanPool(cin, cout, 3)
            self.norm2 = InstanceNormPP(cin, emb_dim)
            self.shortcut: nn.Module = _ConvMeanPool(cin, cout, 1)
        else:
            mid = cin if down else cout
            self.conv1 = _conv3(cin, mid, dilation)
            self.conv2 = _conv3(mid, cout, dilation)
            self.norm2 = InstanceNormPP(mid, emb_dim)
            if down:
                self.shortcut = _conv3(cin, cout, dilation)
            else:
                self.shortcut = ChannelLinear(cin, cout) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, e: Tensor | None) -> Tensor:
        h = self.conv1(F.elu(self.norm1(x, e)))
        h = self.conv2(F.elu(self.norm2(h, e)))
        return self.shortcut(x) + h


class _RCU(nn.Module):
    """Residual conv unit chain: n_blocks x (n_stages x (norm, ELU, conv3x3 no bias)) + residual."""

    def __init__(self, ch: int, n_blocks: int, n_stages: int, emb_dim: int | None) -> None:
        super().__init__()
        self.n_stages = n_stages
        self.norms = nn.ModuleList(InstanceNormPP(ch, emb_dim) for _ in range(n_blocks * n_stages))
        self.convs = nn.ModuleList(_conv3(ch, ch, bias=False) for _ in range(n_blocks * n_stages))

    def forward(self, x: Tensor, e: Tensor | None) -> Tensor:
        res = x
        for i, (norm, conv) in enumerate(zip(self.norms, self.convs)):
            x = conv(F.elu(norm(x, e)))
            if (i + 1) % self.n_stages == 0:
                x = x + res
                res = x
        return x


class _CRP(nn.Module):
    """Chained residual pooling: x = ELU(x); repeat: p = conv(avgpool5(norm(p))); x = x + p."""

    def __init__(self, ch: int, n_stages: int, emb_dim: int | None) -> None:
        super().__init__()
        self.norms = nn.ModuleList(InstanceNormPP(ch, emb_dim) for _ in range(n_stages))
        self.convs = nn.ModuleList(_conv3(ch, ch, bias=False) for _ in range(n_stages))

    def forward(self, x: Tensor, e: Tensor | None) -> Tensor:
        x = F.elu(x)
        p = x
        for norm, conv in zip(self.norms, self.convs):
            p = conv(F.avg_pool2d(norm(p, e), 5, stride=1, padding=2, count_include_pad=False))
            x = x + p
        return x


class _RefineBlock(nn.Module):
    """RefineNet block (Lin et al. 2017): adapt each input (RCU x2), multi-resolution fusion
    (norm, conv, bilinear upsample, sum), chained residual pooling, output RCU."""

    def __init__(self, in_chs: Sequence[int], ch: int, emb_dim: int | None, end: bool = False) -> None:
        super().__init__()
        self.adapt = nn.ModuleList(_RCU(c, 2, 2, emb_dim) for c in in_chs)
        self.fuse_norms = nn.ModuleList(InstanceNormPP(c, emb_dim) for c in in_chs) if len(in_chs) > 1 else None
        self.fuse_convs = nn.ModuleList(_conv3(c, ch) for c in in_chs) if len(in_chs) > 1 else None
        self.crp = _CRP(ch, 2, emb_dim)
        self.out = _RCU(ch, 3 if end else 1, 2, emb_dim)

    def forward(self, xs: list[Tensor], e: Tensor | None) -> Tensor:
        hs = [a(x, e) for a, x in zip(self.adapt, xs)]
        if self.fuse_convs is None:
            h = hs[0]
        else:
            size = hs[0].shape[-2:]  # first input has the largest resolution
            h = 0
            for x, norm, conv in zip(hs, self.fuse_norms, self.fuse_convs):
                y = conv(norm(x, e))
                if y.shape[-2:] != size:
                    y = F.interpolate(y, size=size, mode="bilinear", align_corners=True)
                h = h + y
        return self.out(self.crp(h, e), e)


class RefineNet(nn.Module):
    """NCSN score network: ``net(x (N, C, H, W), c_noise (N,), cond (N,) long | None) -> (N, C, H, W)``.

    `ngf` is the width knob (128 for NCSN on CIFAR-10). `noise_conditional=True` conditions every
    InstanceNorm++ on an embedding of c_noise (width `emb_dim`); `num_classes` adds a label
    embedding (+1 NULL row) to that conditioning embedding. `scale_by_sigma=True` multiplies
    the output by exp(-4 c_noise) = 1/sigma_hat (NCSNv2). H must be even (one 2x mean-pool).
    """

    def __init__(
        self,
        in_channels: int,
        ngf: int = 128,
        resolution: int = 32,
        num_classes: int | None = None,
        noise_conditional: bool = True,
        scale_by_sigma: bool = False,
        emb_dim: int = 64,
    ) -> None:
        super().__init__()
        if not (noise_conditional or scale_by_sigma):
            raise ValueError("a RefineNet must depend on the noise level: set noise_conditional or scale_by_sigma")
        self.in_shape = (in_channels, resolution, resolution)
        self.num_classes = num_classes
        self.scale_by_sigma = scale_by_sigma
        self.embed = NoiseEmbedding(emb_dim) if noise_conditional else None
        self.class_embed = ClassEmbedding(num_classes, emb_dim) if num_classes else None
        ed = emb_dim if (noise_conditional or num_classes) else None
        f = ngf
        self.begin = _conv3(in_channels, f)
        self.res1 = nn.ModuleList([_ResidualBlock(f, f, ed), _ResidualBlock(f, f, ed)])
        self.res2 = nn.ModuleList([_ResidualBlock(f, 2 * f, ed, down=True), _ResidualBlock(2 * f, 2 * f, ed)])
        self.res3 = nn.ModuleList(
            [_ResidualBlock(2 * f, 2 * f, ed, down=True, dilation=2), _ResidualBlock(2 * f, 2 * f, ed, dilation=2)]
        )
        self.res4 = nn.ModuleList(
            [_ResidualBlock(2 * f, 2 * f, ed, down=True, dilation=4), _ResidualBlock(2 * f, 2 * f, ed, dilation=4)]
        )
        self.refine1 = _RefineBlock([2 * f], 2 * f, ed)
        self.refine2 = _RefineBlock([2 * f, 2 * f], 2 * f, ed)
        self.refine3 = _RefineBlock([2 * f, 2 * f], f, ed)
        self.refine4 = _RefineBlock([f, f], f, ed, end=True)
        self.norm_out = InstanceNormPP(f, ed)
        self.end = _conv3(f, in_channels)

    def forward(self, x: Tensor, c_noise: Tensor, cond: Tensor | None = None) -> Tensor:
        e = self.embed(c_noise) if self.embed is not None else None
        if self.class_embed is not None:
            ce = self.class_embed(cond, x.shape[0], x.device)
            e = ce if e is None else e + ce
        h = self.begin(x)
        layers = []
        for stage in (self.res1, self.res2, self.res3, self.res4):
            for blk in stage:
                h = blk(h, e)
            layers.append(h)
        l1, l2, l3, l4 = layers
        r = self.refine1([l4], e)
        r = self.refine2([l3, r], e)
        r = self.refine3([l2, r], e)
        r = self.refine4([l1, r], e)
        out = self.end(F.elu(self.norm_out(r, e)))
        if self.scale_by_sigma:
            # s(x, sigma) = s(x) / sigma (Song & Ermon 2020, Sec. 3.3); 1/sigma_hat = exp(-4 c_noise).
            inv_sigma = torch.exp(-4.0 * c_noise.to(torch.promote_types(out.dtype, torch.float32)))
            out = (out * inv_sigma.reshape(-1, *([1] * (out.ndim - 1)))).to(out.dtype)
        return out

    @classmethod
    def from_shape(cls, shape: Sequence[int], num_classes: int | None = None, **kwargs) -> RefineNet:
        """Build for per-sample shape (C, H, H) with H even."""
        kwargs.pop("_explicit", None)
        c, res = _square_image(shape, "refinenet")
        if res % 2:
            raise UserError(f"refinenet: resolution must be even (one 2x mean-pool), got {res}")
        return cls(c, resolution=res, num_classes=num_classes, **kwargs)


class RefineNetV2(RefineNet):
    """NCSNv2 (Song & Ermon 2020): unconditional InstanceNorm++ and output scaled by 1/sigma_hat.

    Same call signature as `RefineNet`; defaults `noise_conditional=False, scale_by_sigma=True`.
    """

    def __init__(
        self,
        in_channels: int,
        ngf: int = 128,
        resolution: int = 32,
        num_classes: int | None = None,
        noise_conditional: bool = False,
        scale_by_sigma: bool = True,
        emb_dim: int = 64,
    ) -> None:
        super().__init__(in_channels, ngf, resolution, num_classes, noise_conditional, scale_by_sigma, emb_dim)
