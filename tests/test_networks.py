"""Conformance suite over the network registry and presets, plus analytic checks of the building blocks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diffatlas.errors import UserError
from diffatlas.networks import (
    NETWORKS,
    PRESETS,
    build_network,
    count_flops,
    count_parameters,
    describe_presets,
)
from diffatlas.networks.layers import (
    AttnBlock,
    ChannelLinear,
    Dropout,
    FourierFeatures,
    GroupNorm,
    group_norm_from_channel_moments,
    upsample_nearest2x,
    upsample_nearest2x_broadcast,
)
from diffatlas.networks.refinenet import InstanceNormPP
from diffatlas.registry import UnknownNameError

XS = {"unet": "unet-xs", "refinenet": "refinenet-xs", "refinenet-v2": "ncsnv2-xs", "dit": "dit-xs", "mlp": "mlp-xs",
      "diffusers-unet": "diffusers-unet-xs"}
try:
    import diffusers  # noqa: F401
    NO_DIFFUSERS = False
except ImportError:
    NO_DIFFUSERS = True
# The diffusers-unet family wraps diffusers' UNet2DModel: tested where the optional package is installed.
_NEEDS_DIFFUSERS = pytest.mark.skipif(NO_DIFFUSERS, reason="diffusers is not installed (pip install 'diffatlas[diffusers]')")


def _params(names):
    return [pytest.param(n, marks=_NEEDS_DIFFUSERS) if n.startswith("diffusers") else n for n in names]


FAMILIES = _params(sorted(XS))
SMALL_PRESETS = _params([n for n in PRESETS.names() if n.endswith(("-xs", "-s")) and n != "dit-s"])
IMAGE_SHAPES = [(1, 8, 8), (1, 32, 32), (3, 32, 32)]  # digits, 28x28 padded to 32, CIFAR-like


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.py


def _perturb(net: torch.nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Add small noise to every parameter so zero-initialised layers (DDPM output conv, adaLN-Zero)
    no longer hide the dependence on c_noise / labels."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))


def _inputs(shape, n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g)


def test_every_family_has_an_xs_preset():
    assert sorted(XS) == NETWORKS.names()
    for fam, name in XS.items():
        assert PRESETS.get(name).family == fam


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", IMAGE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_output_shape_and_backward(family, shape):
    torch.manual_seed(0)
    net = build_network(XS[family], shape=shape)
    assert tuple(net.in_shape) == shape
    x = _inputs(shape, n=2).requires_grad_()
    c = torch.tensor([-1.0, 0.5], requires_grad=True)
    out = net(x, c)
    assert out.shape == x.shape and out.dtype == x.dtype
    out.square().sum().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", SMALL_PRESETS)
def test_small_presets_run_on_digits(name):
    net = build_network(name, shape=(1, 8, 8), num_classes=10)
    x = _inputs((1, 8, 8), n=3)
    out = net(x, torch.zeros(3), torch.tensor([0, 5, 9]))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_vector_shape_mlp():
    net = build_network("mlp-s", shape=(2,), num_classes=3)
    x = _inputs((2,), n=5)
    assert net(x, torch.zeros(5), torch.tensor([0, 1, 2, 0, 1])).shape == (5, 2)


@pytest.mark.parametrize("family", FAMILIES)
def test_noise_sensitivity_and_gradient_flow(family):
    torch.manual_seed(0)
    net = build_network(XS[family], shape=(1, 8, 8)).eval()
    _perturb(net)
    x = _inputs((1, 8, 8))
    lo, hi = net(x, torch.full((4,), -1.0)), net(x, torch.full((4,), 1.0))
    rel = (lo - hi).norm() / (lo.norm() + hi.norm())
    assert rel > 0.02, f"{family}: output barely depends on c_noise ({rel:.2e})"
    c = torch.zeros(4, requires_grad=True)
    net(x, c).square().sum().backward()
    assert c.grad.abs().min() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_label_sensitivity_and_null_class(family):
    torch.manual_seed(0)
    net = build_network(XS[family], shape=(1, 8, 8), num_classes=10).eval()
    _perturb(net)
    x = _inputs((1, 8, 8))
    c = torch.zeros(4)
    null = net(x, c, None)
    explicit_null = net(x, c, torch.full((4,), 10))
    torch.testing.assert_close(null, explicit_null)  # cond=None is the NULL row num_classes
    labelled = net(x, c, torch.tensor([3, 3, 3, 3]))
    assert (labelled - null).norm() / null.norm() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_mode_is_deterministic(family):
    torch.manual_seed(0)
    net = build_network(XS[family], shape=(1, 8, 8)).eval()
    _perturb(net)
    x, c = _inputs((1, 8, 8)), torch.linspace(-2, 2, 4)
    assert torch.equal(net(x, c), net(x, c))


def test_ncsnv2_output_scaling_is_exactly_one_over_sigma():
    # Without noise-conditional norms, sigma_hat * net(x, c_noise) = raw(x) for every c_noise.
    net = build_network("ncsnv2-xs", shape=(1, 8, 8)).double().eval()
    x = _inputs((1, 8, 8)).double()
    c1, c2 = torch.full((4,), -0.7, dtype=torch.float64), torch.full((4,), 0.4, dtype=torch.float64)
    a = net(x, c1) * torch.exp(4 * c1).view(-1, 1, 1, 1)
    b = net(x, c2) * torch.exp(4 * c2).view(-1, 1, 1, 1)
    torch.testing.assert_close(a, b)


def test_refinenet_requires_noise_dependence():
    with pytest.raises(ValueError):
        NETWORKS.get("refinenet-v2")(1, ngf=8, resolution=8, scale_by_sigma=False)


# ---- reference parameter counts ------------------------------------------------------------------
def test_ddpm_cifar10_parameter_count():
    # Ho et al. 2020, Sec. 4: 35.7M parameters.
    n = count_parameters(build_network("ddpm-cifar10", shape=(3, 32, 32)))
    assert abs(n - 35.7e6) / 35.7e6 < 0.05, n


@pytest.mark.parametrize("name,paper", [("dit-s", 33e6), ("dit-b", 130e6)])
def test_dit_parameter_count(name, paper):
    # Peebles & Xie 2023, Table 1, at 256px latents (32x32x4), ImageNet's 1000 classes.
    n = count_parameters(build_network(name, shape=(4, 32, 32), num_classes=1000))
    assert abs(n - paper) / paper < 0.05, n


def test_unet_ladder_grows_with_width():
    sizes = [count_parameters(build_network(n, shape=(1, 8, 8))) for n in ("unet-xs", "unet-s", "unet-m")]
    assert sizes[0] < sizes[1] < sizes[2]
    # Conv-dominated: doubling the width roughly quadruples the parameter count.
    assert 3.0 < sizes[1] / sizes[0] < 4.5


# ---- resolution adaptation and input validation --------------------------------------------------
def test_unet_adapts_levels_and_attention_to_resolution():
    from diffatlas.networks.layers import AttnBlock

    def attn_resolutions(net, res):
        # walk the down path and record resolutions that carry attention
        found, r = set(), res
        for m in net.down:
            if hasattr(m, "res") and isinstance(m.attn, AttnBlock):
                found.add(r)
            if not hasattr(m, "res"):
                r //= 2
        return found

    small = build_network("unet-xs", shape=(1, 8, 8))
    assert small.levels == 2 and attn_resolutions(small, 8) == {4}
    big = build_network("unet-xs", shape=(3, 32, 32))
    assert big.levels == 4 and attn_resolutions(big, 32) == {16}
    explicit = build_network("unet-xs", shape=(1, 8, 8), attn_resolutions=(8,))
    assert attn_resolutions(explicit, 8) == {8}


def test_build_network_errors():
    with pytest.raises(UnknownNameError):
        build_network("unet-xxl", shape=(1, 8, 8))
    with pytest.raises(UserError, match="no option"):
        build_network("unet-xs", shape=(1, 8, 8), widht=3)
    with pytest.raises(UserError, match="square image"):
        build_network("unet-xs", shape=(2,))
    with pytest.raises(UserError, match="patch_size"):
        build_network("dit-xs", shape=(1, 10, 10), patch_size=4)
    with pytest.raises(UserError, match="divisible"):
        build_network("unet-xs", shape=(1, 18, 18), channel_mult=(1, 2, 2))
    assert build_network("unet-xs", shape=(1, 28, 28)).levels == 3  # 28, 14, 7
    with pytest.raises(UserError, match="num_classes"):
        build_network("mlp-xs", shape=(2,), num_classes=0)


# ---- analytic checks of building blocks and counters ---------------------------------------------
def test_fourier_features_are_unit_phasors():
    f = FourierFeatures(32)
    c = torch.linspace(-3, 3, 7)
    z = f(c)
    assert z.shape == (7, 32)
    # cos^2 + sin^2 = 1 for each of the 16 frequencies
    torch.testing.assert_close(z.square().sum(1), torch.full((7,), 16.0))
    # the slowest frequency is monotone over the whole c_noise range (sin part)
    slow = z[:, 16]
    assert (slow[1:] > slow[:-1]).all()


def test_instance_norm_pp_matches_formula():
    torch.manual_seed(0)
    norm = InstanceNormPP(5).double()
    x = torch.randn(3, 5, 4, 4, dtype=torch.float64) * 2 + torch.arange(5.0, dtype=torch.float64).view(1, 5, 1, 1)
    mu = x.mean((2, 3))
    s = x.var((2, 3), unbiased=False)
    m, v = mu.mean(1, keepdim=True), mu.var(1, unbiased=False, keepdim=True)
    g, a, b = (t.view(1, 5) for t in (norm.gamma, norm.alpha, norm.beta))
    # z_k = gamma_k (x_k - mu_k)/s_k + beta_k + alpha_k (mu_k - m)/v   (Song & Ermon 2019, App. A)
    expect = g[..., None, None] * (x - mu[..., None, None]) / (s[..., None, None] + 1e-5).sqrt()
    expect = expect + (b + a * (mu - m) / (v + 1e-5).sqrt())[..., None, None]
    torch.testing.assert_close(norm(x, None), expect)
    # with alpha = 0 and unit gamma it is plain instance normalisation
    with torch.no_grad():
        norm.alpha.zero_(), norm.gamma.fill_(1.0)
    torch.testing.assert_close(norm(x, None), F.instance_norm(x, eps=1e-5))


def test_count_flops_mlp_equals_linear_macs():
    net = build_network("mlp-s", shape=(2,))
    macs = sum(m.in_features * m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear))
    assert count_flops(net, (2,), batch=3) == 2 * 3 * macs


def test_count_flops_dit_matches_closed_form():
    net = build_network("dit-xs", shape=(1, 8, 8))
    d, depth, p, c = 96, 6, 2, 1
    tokens = (8 // p) ** 2
    freq = net.embed.fourier.dim
    block = (
        tokens * d * 3 * d  # qkv
        + tokens * d * d  # attention output projection
        + 2 * tokens * tokens * d  # q k^T and attn v
        + 2 * tokens * d * 4 * d  # MLP
        + d * 6 * d  # adaLN modulation
    )
    macs = (
        tokens * d * c * p * p  # patch embedding
        + freq * d + d * d  # noise MLP
        + depth * block
        + d * 2 * d  # final adaLN
        + tokens * d * p * p * c  # output projection
    )
    assert count_flops(net, (1, 8, 8)) == 2 * macs


def test_describe_presets_rows():
    rows = describe_presets((1, 8, 8), names=["unet-xs", "mlp-xs", "dit-xs"])
    assert [r["name"] for r in rows] == ["unet-xs", "mlp-xs", "dit-xs"]
    for r in rows:
        assert r["params"] > 0 and r["flops"] > 0 and r["family"] == PRESETS.get(r["name"]).family
    vec = describe_presets((2,), names=["unet-xs", "mlp-xs"])
    assert vec[0]["params"] is None and "square image" in vec[0]["description"]
    assert vec[1]["params"] > 0


def test_channels_last_and_bf16_autocast():
    net = build_network("unet-xs", shape=(1, 8, 8)).eval()
    _perturb(net)
    x, c = _inputs((1, 8, 8)), torch.zeros(4)
    ref = net(x, c)
    out_cl = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), c)
    torch.testing.assert_close(out_cl, ref, atol=1e-4, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf = net(x, c)
    assert torch.isfinite(out_bf).all()
    assert (out_bf.float() - ref).norm() / ref.norm() < 0.1


# ---- the fast forms of 1x1 maps, attention, upsampling and dropout compute the textbook function ----
def _both_layouts(x: torch.Tensor):
    return [("contiguous", x.contiguous()), ("channels_last", x.contiguous(memory_format=torch.channels_last))]


def test_channel_linear_is_a_1x1_convolution():
    g = torch.Generator().manual_seed(0)
    lin = ChannelLinear(6, 5).double()
    x = torch.randn(3, 6, 4, 5, generator=g, dtype=torch.float64)
    ref = F.conv2d(x, lin.weight[:, :, None, None], lin.bias)
    for name, xx in _both_layouts(x):
        out = lin(xx)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12, msg=name)
        if name == "channels_last":
            assert out.is_contiguous(memory_format=torch.channels_last)  # stays in the network's layout


@pytest.mark.parametrize("heads", [1, 2])
def test_attention_block_matches_softmax_attention(heads):
    """out = x + W_o softmax(q k^T / sqrt(d)) v per head, tokens = pixels, from the formula in float64."""
    g = torch.Generator().manual_seed(heads)
    blk = AttnBlock(8, heads).double()
    with torch.no_grad():
        for p in blk.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
    x = torch.randn(2, 8, 3, 4, generator=g, dtype=torch.float64)
    n, c, hh, ww = x.shape
    d = c // heads
    tok = blk.norm(x).flatten(2).transpose(1, 2)  # (N, L, C)
    q, k, v = (tok @ blk.qkv.weight.T + blk.qkv.bias).split(c, dim=2)
    out = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        w = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d), dim=-1)
        out.append(w @ v[..., sl])
    a = torch.cat(out, dim=2) @ blk.proj.weight.T + blk.proj.bias
    ref = x + a.transpose(1, 2).reshape(n, c, hh, ww)
    for name, xx in _both_layouts(x):
        torch.testing.assert_close(blk(xx), ref, rtol=1e-10, atol=1e-10, msg=name)


def test_state_dicts_with_1x1_conv_weights_still_load():
    """Snapshots written when attention and skips were 1x1 convolutions load into the GEMM forms."""
    net = build_network("unet-xs", shape=(1, 8, 8)).eval()
    _perturb(net)
    old = {k: (v[:, :, None, None] if k.endswith(("qkv.weight", "proj.weight", "skip.weight")) else v)
           for k, v in net.state_dict().items()}
    assert sum(v.ndim == 4 and v.shape[2:] == (1, 1) for v in old.values()) >= 3
    fresh = build_network("unet-xs", shape=(1, 8, 8)).eval()
    fresh.load_state_dict(old)
    x, c = _inputs((1, 8, 8)), torch.zeros(4)
    torch.testing.assert_close(fresh(x, c), net(x, c), rtol=0, atol=0)


def test_upsample_is_nearest_interpolation():
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grad = torch.randn(2, 3, 8, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for name, xx in _both_layouts(x):
        xx = xx.detach().requires_grad_()
        ref = F.interpolate(xx, scale_factor=2.0, mode="nearest")
        (g_ref,) = torch.autograd.grad(ref, xx, grad)
        # the compiled path's form takes channels_last input only
        forms = [upsample_nearest2x] + ([upsample_nearest2x_broadcast] if name == "channels_last" else [])
        for up in forms:
            out = up(xx)
            assert torch.equal(out, ref), (name, up.__name__)
            assert out.is_contiguous(memory_format=torch.channels_last) == (name == "channels_last")
            (g_out,) = torch.autograd.grad(out, xx, grad)
            torch.testing.assert_close(g_out, g_ref, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_dropout_keeps_one_minus_p_and_rescales(layout):
    p, n = 0.1, 400_000
    drop = Dropout(p).train()
    torch.manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.full((4, 10, 100, 100), 2.0).contiguous(memory_format=fmt)
    y = drop(x)
    kept = y != 0
    se = math.sqrt(p * (1 - p) / n)
    assert abs(kept.double().mean().item() - (1 - p)) < 5 * se  # 5 standard errors
    # each of the four 16-bit lanes of a 64-bit draw keeps 1 - p of its elements (a lane whose
    # sign bit never varies would keep all of them)
    lane_frac = kept.permute(0, 2, 3, 1).reshape(-1, 4) if layout == "channels_last" else kept.reshape(-1, 4)
    for frac in lane_frac.double().mean(0).tolist():
        assert abs(frac - (1 - p)) < 5 * 2 * se
    # kept elements are scaled by 1 / P(keep), P(keep) = 1 - p to 2^-16: E[y] = x
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 2.0 / (1 - p)), rtol=1e-4, atol=0)
    assert abs(y.double().mean().item() - 2.0) < 5 * 2.0 / (1 - p) * se
    assert y.is_contiguous(memory_format=fmt)
    # the mask is drawn from the global generator: reseeding repeats it
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)
    # the gradient is the same mask, rescaled
    xr = x.clone().requires_grad_()
    torch.manual_seed(0)
    drop(xr).sum().backward()
    torch.testing.assert_close(xr.grad, (y / 2.0))
    # bf16 stays bf16; eval mode and p = 0 are the identity, p = 1 drops everything
    assert drop(x.bfloat16()).dtype == torch.bfloat16
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))


@pytest.mark.parametrize("p", [0.3, 0.001])  # 16-bit lanes; a p they cannot represent: float32 path
def test_dropout_keep_rate_any_shape_and_p(p):
    torch.manual_seed(1)
    x = torch.ones(3, 7, 11, 1001)  # 231,231 elements, not a multiple of 4
    y = Dropout(p).train()(x[:, :, :, 1:])  # and a non-contiguous view
    n = y.numel()
    frac = (y != 0).double().mean().item()
    assert abs(frac - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    assert abs(y.double().mean().item() - 1.0) < 5 * math.sqrt(p / (1 - p) / n)
    y = Dropout(p).train()(x)
    assert abs((y != 0).double().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / x.numel())


def test_dropout_under_compile_keeps_p_exact_in_bf16():
    """Compiled, the mask comes from float32 uniforms: a bf16 input is dropped with probability p,
    not with p rounded to bf16 (0.50390625 here, 8 standard errors away at this n)."""
    p, n = 0.5 + 3 / 1024, 16_000_000
    drop = torch.compile(Dropout(p).train())
    torch.manual_seed(0)
    y = drop(torch.ones(n, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    kept = y != 0
    assert abs(kept.double().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    torch.testing.assert_close(y[kept][:1000].float(), torch.full((1000,), 1 / (1 - p)).bfloat16().float())


def test_group_norm_from_channel_moments_is_group_norm():
    g = torch.Generator().manual_seed(0)
    f64 = {"generator": g, "dtype": torch.float64}
    # channel means that differ within a group, so the between-channel term of the group variance counts
    offsets = torch.linspace(-3.0, 5.0, 12, dtype=torch.float64).view(1, 12, 1, 1)
    x = (offsets + 2.0 * torch.randn(3, 12, 5, 7, **f64)).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(12, **f64), torch.randn(12, **f64)
    grad = torch.randn(3, 12, 5, 7, **f64)
    inputs = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = F.group_norm(inputs[0], 4, inputs[1], inputs[2], 1e-5)
    got = group_norm_from_channel_moments(inputs[0], 4, inputs[1], inputs[2], 1e-5)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for a, r in zip(torch.autograd.grad(got, inputs, grad), torch.autograd.grad(ref, inputs, grad)):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)
    # dtype as the native op under autocast: float32 from a bf16 input with float32 weights
    xb = x.bfloat16()
    out = group_norm_from_channel_moments(xb, 4, w.float(), b.float(), 1e-5)
    assert out.dtype == torch.float32
    ref32 = F.group_norm(xb.float(), 4, w.float(), b.float(), 1e-5)
    torch.testing.assert_close(out, ref32, rtol=1e-5, atol=1e-5)
    # the module keeps nn.GroupNorm's parameters, state_dict and eager result
    gn = GroupNorm(4, 12).double()
    assert list(gn.state_dict()) == list(torch.nn.GroupNorm(4, 12).state_dict())
    torch.testing.assert_close(gn(x), F.group_norm(x, 4, gn.weight, gn.bias, gn.eps))


def test_compiled_unet_matches_eager_in_channels_last():
    """The forms used only under torch.compile (upsampling; dropout, here 0 since masks differ by
    construction) give the eager network's output and gradients."""
    net = build_network("unet-xs", shape=(1, 8, 8), dropout=0.0).to(memory_format=torch.channels_last)
    _perturb(net)
    x = _inputs((1, 8, 8)).contiguous(memory_format=torch.channels_last)
    c = torch.tensor([-1.0, -0.2, 0.3, 1.5])
    params = list(net.parameters())
    ref = net(x, c)
    g_ref = torch.autograd.grad(ref.square().sum(), params)
    out = torch.compile(net)(x, c)
    g_out = torch.autograd.grad(out.square().sum(), params)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for a, r in zip(g_out, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-3, atol=1e-3)


# ---- a short training run lowers a denoising loss ------------------------------------------------
def _digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    d = torch.tensor(load_digits().images[:64], dtype=torch.float32)
    return d[:, None] / 8.0 - 1.0  # (64, 1, 8, 8) in [-1, 1]


def _eps_loss(net, x0, g):
    """eps-prediction loss in the VP frame: x_t = alpha (x0 + sigma eps), alpha = (1 + sigma^2)^-1/2,
    log sigma ~ U(-1.2, 1.2), c_noise = log(sigma) / 4."""
    n = x0.shape[0]
    log_sigma = torch.empty(n).uniform_(-1.2, 1.2, generator=g)
    sigma = log_sigma.exp().view(-1, 1, 1, 1)
    eps = torch.randn(x0.shape, generator=g)
    xt = (x0 + sigma * eps) / (1 + sigma**2).sqrt()
    return (net(xt, log_sigma / 4) - eps).square().mean()


@pytest.mark.parametrize("family", FAMILIES)
def test_short_training_lowers_denoising_loss(family):
    torch.manual_seed(0)
    data = _digits()
    net = build_network(XS[family], shape=(1, 8, 8), **({"dropout": 0.0} if family == "unet" else {}))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)

    def held_out():
        net.eval()
        with torch.no_grad():
            value = _eps_loss(net, data, torch.Generator().manual_seed(123)).item()
        net.train()
        return value

    before = held_out()
    g = torch.Generator().manual_seed(1)
    # 50 steps of batch 16 suffice for the image networks; the MLP (flattened pixels) is cheap but slower to fit.
    for _ in range(200 if family == "mlp" else 50):
        idx = torch.randint(0, 64, (16,), generator=g)
        loss = _eps_loss(net, data[idx], g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    after = held_out()
    assert math.isfinite(after) and after < 0.6 * before, (before, after)
