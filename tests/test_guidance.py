"""Guidance: wrappers equal the unguided / conditional model where they must (bit for bit), classifier
guidance against the exact Gaussian-mixture posterior, a noise-aware digits classifier, the sample CLI's
argument handling, and the class-conditional sweep."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from diffatlas.data import ExactDenoiser, GaussianMixture, load_dataset, standard_mixture
from diffatlas.denoiser import Denoiser
from diffatlas.dynamics import build_dynamics
from diffatlas.errors import UserError
from diffatlas.guidance import (
    GUIDANCE,
    CFGDenoiser,
    ClassifierGuidedDenoiser,
    MixtureClassifier,
    classifier_free_guidance,
    classifier_guidance,
    guidance_from_args,
    load_noisy_classifier,
    parse_guidance_spec,
    save_noisy_classifier,
    train_noisy_classifier,
    untrained_classifier,
)
from diffatlas.config import load_config
from diffatlas.networks import build_network
from diffatlas.rundir import RunInfo
from diffatlas.samplers import sample

K = 4


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """These tensors are tiny: intra-op threads only add overhead (and thrash on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_conditional(dyn_name: str, shape=(2,), preset: str = "mlp-xs") -> Denoiser:
    torch.manual_seed(0)
    net = build_network(preset, shape=shape, num_classes=K).double().eval()
    return Denoiser(net, build_dynamics(dyn_name), "eps")


# ---- bit-for-bit equalities -------------------------------------------------------------------------

@pytest.mark.parametrize("dyn_name", ["vp", "ve"])
@pytest.mark.parametrize("sampler", ["heun", "euler-maruyama"])
def test_scale_zero_and_cfg_one_equal_the_plain_model_bit_for_bit(dyn_name: str, sampler: str) -> None:
    den = _tiny_conditional(dyn_name)
    labels = torch.arange(8) % K
    kw = {"sampler": sampler, "steps": 6, "seed": 3, "dtype": torch.float64}
    with torch.no_grad():
        cond_ref = sample(den, (8, 2), cond=labels, **kw)
        uncond_ref = sample(den, (8, 2), cond=None, **kw)
        clf = untrained_classifier((2,), K, seed=1)
        # classifier guidance, scale 0: a conditional model (labels passed on) and an unconditional one
        g0c = sample(classifier_guidance(den, 0.0, classifier=clf, pass_cond=True), (8, 2), cond=labels, **kw)
        g0u = sample(classifier_guidance(den, 0.0, classifier=clf, pass_cond=False), (8, 2), cond=labels, **kw)
        w1 = sample(classifier_free_guidance(den, 1.0, num_classes=K), (8, 2), cond=labels, **kw)
        g2 = sample(classifier_guidance(den, 2.0, classifier=clf, pass_cond=True), (8, 2), cond=labels, **kw)
        w3 = sample(classifier_free_guidance(den, 3.0, num_classes=K), (8, 2), cond=labels, **kw)
    assert torch.equal(g0c.x, cond_ref.x) and g0c.nfe == cond_ref.nfe
    assert torch.equal(g0u.x, uncond_ref.x)
    assert torch.equal(w1.x, cond_ref.x) and w1.nfe == cond_ref.nfe
    # and guidance that is switched on does change the samples
    assert not torch.allclose(g2.x, cond_ref.x)
    assert not torch.allclose(w3.x, cond_ref.x)


def test_cfg_batched_call_equals_the_two_branch_formula() -> None:
    """One batched network call of cat([x, x]) with cat([y, NULL]) = D_u + w (D_c - D_u) of two separate calls."""
    den = _tiny_conditional("ddpm", shape=(1, 8, 8), preset="unet-xs")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.rand(6, generator=g, dtype=torch.float64) * 0.9 + 0.05
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    calls = []

    class Count:
        dynamics = den.dynamics

        def __call__(self, x, t, cond=None):
            calls.append(x.shape[0])
            return den(x, t, cond)

    with torch.no_grad():
        out = CFGDenoiser(Count(), 2.5, K)(x, t, y)
        d_c, d_u = den(x, t, y), den(x, t, torch.full_like(y, K))
    assert calls == [12]  # both branches in ONE call on a doubled batch
    torch.testing.assert_close(out, d_u + 2.5 * (d_c - d_u), rtol=1e-9, atol=1e-9)
    assert isinstance(out, torch.Tensor) and out.shape == x.shape


# ---- exact Gaussian-mixture oracle --------------------------------------------------------------------

@pytest.mark.parametrize("dyn_name", ["vp", "ve", "ddpm", "edm", "flow"])
def test_scale_one_with_the_exact_classifier_is_the_component_denoiser(dyn_name: str) -> None:
    """score + grad log p(k | x_t) = grad log p_t(x | k) (Bayes), so D_g at s = 1 is E[x0 | x_t, k] exactly:
    the ideal denoiser of component k alone."""
    dyn = build_dynamics(dyn_name)
    mix = standard_mixture(2, num_modes=5)
    guided = ClassifierGuidedDenoiser(ExactDenoiser(mix, dyn), MixtureClassifier(mix), 1.0)
    g = torch.Generator().manual_seed(1)
    n = 64
    x0 = mix.sample(n, g)
    t = dyn.t_min + (dyn.t_max - dyn.t_min) * torch.rand(n, generator=g, dtype=torch.float64) * 0.95
    xt = dyn.noise(x0, t, torch.randn(n, 2, generator=g, dtype=torch.float64))
    k = torch.randint(0, 5, (n,), generator=g)
    with torch.no_grad():
        got = guided(xt, t, k)
    alpha, sigma = dyn.alpha(t), dyn.sigma(t)
    want = torch.stack([GaussianMixture(mix.means[k[i]:k[i] + 1], mix.stds[k[i]:k[i] + 1])
                        .denoise(xt[i:i + 1], alpha[i], sigma[i])[0] for i in range(n)])
    torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-8)
    # at t_max (alpha = 0 for rectified flow) the guided estimate stays finite
    with torch.no_grad():
        end = guided(xt, torch.full((n,), dyn.t_max, dtype=torch.float64), k)
    assert torch.isfinite(end).all()


def _target_fraction(x: torch.Tensor, mix: GaussianMixture, labels: torch.Tensor) -> float:
    nearest = torch.cdist(x.double(), mix.means).argmin(1)
    return float((nearest == labels).double().mean())


@pytest.mark.parametrize("dyn_name,sampler", [("vp", "heun"), ("ve", "euler-maruyama")])
def test_exact_classifier_guidance_raises_target_fraction_random_classifier_does_not(dyn_name: str, sampler: str) -> None:
    dyn = build_dynamics(dyn_name)
    mix = standard_mixture(2)  # 8 modes on a circle; the class is the component
    den = ExactDenoiser(mix, dyn)
    n = 320
    labels = torch.arange(n) % mix.num_components
    exact, rnd = MixtureClassifier(mix), untrained_classifier((2,), mix.num_components, seed=0)
    kw = {"sampler": sampler, "steps": 24, "seed": 0, "dtype": torch.float64, "cond": labels}
    frac = {}
    with torch.no_grad():
        for name, clf in (("exact", exact), ("random", rnd)):
            for s in (0.0, 1.0, 4.0):
                x = sample(classifier_guidance(den, s, classifier=clf), (n, 2), **kw).x
                assert torch.isfinite(x).all()
                frac[name, s] = _target_fraction(x, mix, labels)
    chance = 1 / mix.num_components
    assert abs(frac["exact", 0.0] - chance) < 0.08  # unguided: the target is hit at chance
    assert frac["exact", 1.0] > 0.9 and frac["exact", 4.0] > 0.9
    assert frac["exact", 0.0] < frac["exact", 1.0] <= frac["exact", 4.0] + 0.02
    # a random (untrained) classifier carries no class information: it stays near chance
    assert frac["random", 4.0] < 0.3 and frac["random", 1.0] < 0.3


# ---- a noise-aware classifier on digits -----------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_classifier():
    dyn = build_dynamics("vp")
    train_set, test_set = load_dataset("digits"), load_dataset("digits", split="test")
    start = time.perf_counter()
    model, info = train_noisy_classifier(train_set, dyn, steps=300, batch=64, lr=2e-3, seed=0, log=None,
                                         eval_dataset=test_set, width=32, eval_levels=6)
    info["wall"] = time.perf_counter() - start
    return model, info, dyn, test_set


def test_noisy_digits_classifier_accuracy_falls_with_noise(digits_classifier) -> None:
    _, info, _, _ = digits_classifier
    acc = [r["accuracy"] for r in info["accuracy_by_level"]]
    sig = [r["sigma_hat"] for r in info["accuracy_by_level"]]
    assert sig == sorted(sig) and len(acc) == 6
    assert acc[0] > 0.6, acc  # low noise: far above chance (0.1)
    assert acc[-1] < 0.2, acc  # sigma_hat ~ 50+: the image is gone, chance
    assert acc[0] > acc[-1] + 0.4


def test_noisy_classifier_save_load_roundtrip_and_wrong_folder(digits_classifier, tmp_path: Path) -> None:
    model, info, dyn, test_set = digits_classifier
    save_noisy_classifier(tmp_path / "clf", model, info)
    back = load_noisy_classifier(tmp_path / "clf")
    x = test_set.get_batch(torch.arange(16))[0]
    t = torch.full((16,), 0.3, dtype=torch.float64)
    assert torch.equal(back.logits(x, t, dyn), model.logits(x, t, dyn))
    assert back.info["accuracy_by_level"] == info["accuracy_by_level"]
    meta = json.loads((tmp_path / "clf" / "noisy_classifier.json").read_text())
    assert meta["format"] == "diffatlas-noisy-classifier-v1" and "accuracy_by_level" in meta["info"]
    with pytest.raises(UserError, match="no noise-aware classifier"):
        load_noisy_classifier(tmp_path / "missing")
    (tmp_path / "clf" / "noisy_classifier.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(UserError, match="safetensors"):
        load_noisy_classifier(tmp_path / "clf")


def test_classifier_guidance_raises_the_guiding_classifier_log_prob(digits_classifier) -> None:
    """D_g moves the x0 estimate along grad log p(y | x_t): at the re-noised guided estimate the classifier
    is more confident in y than at the unguided one (first-order, small scale)."""
    model, _, dyn, test_set = digits_classifier
    x0 = test_set.get_batch(torch.arange(32))[0]
    y = (test_set.labels[:32] + 3) % 10  # a different target than the true class
    t = torch.full((32,), 0.35)
    xt = dyn.noise(x0, t, torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)))

    class Ident:
        dynamics = dyn

        def __call__(self, x, t, cond=None):
            return x / dyn.alpha(t.double()).float()[:, None, None, None]

    with torch.no_grad():
        alpha = dyn.alpha(t.double()).float()[:, None, None, None]
        lp = lambda d: float(torch.log_softmax(model.logits(alpha * d, t, dyn), 1).gather(1, y[:, None]).mean())
        scores = [lp(Ident()(xt, t))] + [lp(ClassifierGuidedDenoiser(Ident(), model, s)(xt, t, y)) for s in (0.05, 0.1)]
    # more guidance, more confidence in the target class (a small step along the gradient)
    assert scores[0] < scores[1] < scores[2], scores


# ---- the sample CLI's arguments -------------------------------------------------------------------------

def _fake_run(tmp_path: Path, conditional: bool, label_dropout: float = 0.1) -> RunInfo:
    run_dir = tmp_path / "run"
    (run_dir / "snapshots" / "snapshot-1").mkdir(parents=True, exist_ok=True)
    (run_dir / "dataset.json").write_text(json.dumps({"name": "digits", "shape": [1, 8, 8], "num_classes": 10}))
    cfg = load_config(None, [f"train.label_dropout={label_dropout}", f"network.conditional={str(conditional).lower()}"])
    return RunInfo(cfg, (1, 8, 8), 10 if conditional else None, run_dir / "snapshots" / "snapshot-1")


def _one_line_error(fn, match: str) -> str:
    with pytest.raises(UserError, match=match) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_guidance_from_args_errors_are_one_line(tmp_path: Path) -> None:
    unc, cond = _fake_run(tmp_path, False), _fake_run(tmp_path, True)
    assert _one_line_error(lambda: guidance_from_args(cond, 12, None, None, 4, "cpu"), "class 12") == "class 12 not in 0..9"
    _one_line_error(lambda: guidance_from_args(unc, -1, "classifier:1", "untrained", 4, "cpu"), r"class -1 not in 0\.\.9")
    _one_line_error(lambda: guidance_from_args(unc, 3, "classifier:2", None, 4, "cpu"), "--classifier")
    _one_line_error(lambda: guidance_from_args(unc, 3, "cfg:2", None, 4, "cpu"), "unconditional")
    _one_line_error(lambda: guidance_from_args(unc, 3, None, None, 4, "cpu"), "conditional")
    _one_line_error(lambda: guidance_from_args(_fake_run(tmp_path, True, 0.0), 3, "cfg:2", None, 4, "cpu"), "label_dropout")
    for bad in ("classifier", "cfg:abc", "cfg:-1", "cfg:nan", "clasifier:2"):
        _one_line_error(lambda bad=bad: guidance_from_args(cond, 3, bad, None, 4, "cpu"), "--guidance")
    _one_line_error(lambda: guidance_from_args(unc, 3, "classifier:2", str(tmp_path / "nope"), 4, "cpu"),
                    "no noise-aware classifier")


def test_a_guidance_kind_is_its_builder_and_registration(tmp_path: Path, monkeypatch) -> None:
    """A kind defined here (a 'damp:S' that scales the denoiser's output) is parsed from --guidance and
    built by make_guidance with no other edit: make_guidance dispatches through GUIDANCE."""
    from diffatlas.guidance import spec as G

    monkeypatch.setattr(G, "GUIDANCE", type(G.GUIDANCE)("guidance"))

    @G.GUIDANCE.register("damp", "damp:S, the denoiser's output times S (a test kind)")
    def damp(run, scale, **_):
        return lambda den: (lambda x, t, cond=None: scale * den(x, t, cond))

    assert G.parse_guidance_spec("damp:0.5") == ("damp", 0.5)
    run = _fake_run(tmp_path, True)
    guided = G.make_guidance(run, "damp", 0.5)(lambda x, t, cond=None: x + 1)
    assert torch.equal(guided(torch.ones(2), 0.3), torch.full((2,), 1.0))
    with pytest.raises(UserError, match="choose one of: damp"):
        G.make_guidance(run, "cfg", 2.0)


def test_guidance_from_args_labels_and_wrappers(tmp_path: Path) -> None:
    unc, cond = _fake_run(tmp_path, False), _fake_run(tmp_path, True)
    labels, wrap = guidance_from_args(cond, None, None, None, 13, "cpu")
    assert wrap is None and labels.dtype == torch.long and labels.tolist() == [i % 10 for i in range(13)]
    labels, wrap = guidance_from_args(unc, 7, "classifier:2.5", "untrained:3", 5, "cpu")
    assert labels.tolist() == [7] * 5
    den = ExactDenoiser(standard_mixture(2), build_dynamics("vp"))
    g = wrap(den)
    assert isinstance(g, ClassifierGuidedDenoiser) and g.scale == 2.5 and not g.pass_cond and g.dynamics is den.dynamics
    _, wrap = guidance_from_args(cond, 1, "cfg:3", None, 5, "cpu")
    assert isinstance(wrap(den), CFGDenoiser) and wrap(den).w == 3.0 and wrap(den).num_classes == 10
    assert parse_guidance_spec(" cfg : 1.5 ") == ("cfg", 1.5) and parse_guidance_spec(None) is None
    assert GUIDANCE.names() == ["cfg", "classifier"]


# ---- the sweep (smoke: a barely trained run, real outputs) ----------------------------------------------

def test_guidance_sweep_writes_table_and_plot(tmp_path: Path) -> None:
    from diffatlas.config import load_config
    from diffatlas.guidance.sweep import guidance_sweep
    from diffatlas.metrics import train_classifier
    from diffatlas.train import train

    run = tmp_path / "run"
    cfg = load_config(None, ["network.preset=mlp-xs", "train.batch=32", "train.kimg=0.064", "train.tick_kimg=0.032",
                             "train.snapshot_kimg=0.064", "train.doctor=false", "train.device=cpu", "dynamics.name=vp"])
    train(cfg, run, progress=False, log=lambda *_: None)
    tr, te = load_dataset("digits"), load_dataset("digits", split="test")
    ext, _ = train_classifier(*tr.get_batch(torch.arange(len(tr))), *te.get_batch(torch.arange(len(te))), epochs=1,
                              dataset="digits")
    rows = guidance_sweep(run, "classifier", [0, 3], n_per_class=2, extractor=ext, classifier_dir="untrained",
                          sampler="euler", steps=4, out_dir=tmp_path / "sweep", log=None)
    assert [r["scale"] for r in rows] == [0.0, 3.0]
    for r in rows:
        assert 0 <= r["class_accuracy"] <= 1 and len(r["class_accuracy_per_class"]) == 10
        assert r["fid"] >= 0 and r["is"] >= 1 and len(r["fid_per_class"]) == 10 and r["nfe"] == 4
    lines = (tmp_path / "sweep" / "guidance_sweep.jsonl").read_text().splitlines()
    assert [json.loads(line)["scale"] for line in lines] == [0.0, 3.0]
    assert "| classifier | 3 |" in (tmp_path / "sweep" / "guidance_sweep.md").read_text()
    assert (tmp_path / "sweep" / "guidance_sweep.png").read_bytes()[:4] == b"\x89PNG"
    # scale 0 is exactly the unguided sampler on the same seeds
    from diffatlas.sampling import generate, load_run
    lr = load_run(run)
    x0, _ = generate(lr.denoiser, lr.shape, list(range(20)), sampler="euler", grid=rows[0]["grid"], steps=4,
                     options={"frame": "time"}, clip="static")  # the run's default grid and x0 clipping
    ext_pred = ext.logits(x0).argmax(1)
    labels = torch.arange(10).repeat_interleave(2)
    assert abs(float((ext_pred == labels).double().mean()) - rows[0]["class_accuracy"]) < 1e-12


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_noisy_classifier_on_a_missing_cuda_device_is_a_one_line_error(tmp_path: Path) -> None:
    from diffatlas.config import dump_yaml, load_config
    from diffatlas.guidance import train_noisy_classifier_for

    cfg = tmp_path / "config.yaml"
    cfg.write_text(dump_yaml(load_config(None, [])))
    with pytest.raises(UserError, match=r"^--device=cuda but no CUDA device is available; use cpu or auto$"):
        train_noisy_classifier_for(cfg, tmp_path / "clf", steps=1, device="cuda", log=None)
    assert not (tmp_path / "clf").exists()


# ---- end to end on digits (slow) -------------------------------------------------------------------------

@pytest.mark.slow
def test_classifier_guidance_raises_class_accuracy_on_digits(tmp_path: Path) -> None:
    """A briefly trained DDPM on digits, its noise-aware classifier and the evaluation classifier: the
    evaluation classifier's class accuracy of classifier-guided samples rises from scale 0 to a large scale."""
    from diffatlas.config import load_config
    from diffatlas.guidance import train_noisy_classifier_for
    from diffatlas.guidance.sweep import guidance_sweep
    from diffatlas.metrics import train_classifier
    from diffatlas.train import train

    start = time.perf_counter()
    run = tmp_path / "ddpm"
    cfg = load_config(None, ["network.preset=unet-xs", "network.dropout=0.0", "train.batch=64", "train.kimg=40",
                             "train.tick_kimg=8", "train.snapshot_kimg=40", "train.warmup_kimg=2", "train.lr=1e-3",
                             "train.ema_halflife_kimg=2", "train.doctor=false", "train.device=cpu"])
    train(cfg, run, progress=False, log=lambda *_: None)
    _, info = train_noisy_classifier_for(run, tmp_path / "clf", steps=800, batch=64, lr=2e-3, device="cpu", log=None)
    tr, te = load_dataset("digits"), load_dataset("digits", split="test")
    ext, _ = train_classifier(*tr.get_batch(torch.arange(len(tr))), *te.get_batch(torch.arange(len(te))), epochs=15,
                              dataset="digits")
    rows = guidance_sweep(run, "classifier", [0, 10], n_per_class=10, extractor=ext, classifier_dir=tmp_path / "clf",
                          sampler="ddim", steps=50, out_dir=tmp_path / "sweep", log=None)
    # the "misguided" control: the same guidance by an untrained classifier of the same architecture
    misguided = guidance_sweep(run, "classifier", [0, 10], n_per_class=10, extractor=ext, classifier_dir="untrained:0",
                               sampler="ddim", steps=50, out_dir=tmp_path / "misguided", log=None)
    wall = time.perf_counter() - start
    print(f"slow guidance test: {wall:.0f} s; class accuracy {rows[0]['class_accuracy']:.3f} -> "
          f"{rows[1]['class_accuracy']:.3f} (untrained classifier: -> {misguided[1]['class_accuracy']:.3f}); "
          f"noisy classifier {info['accuracy_by_level'][0]['accuracy']:.3f} at low noise")
    assert rows[1]["class_accuracy"] > rows[0]["class_accuracy"] + 0.2
    assert misguided[0]["class_accuracy"] == rows[0]["class_accuracy"]  # scale 0: the same samples
    assert misguided[1]["class_accuracy"] < misguided[0]["class_accuracy"] + 0.1  # no real rise without a real classifier
