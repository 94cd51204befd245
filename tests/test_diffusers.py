"""diffusers in and out: an imported UNet2DModel reproduces diffusers' own outputs and samplers; an exported
run loads in DDPMPipeline and samples what diffatlas samples; round trips keep samples and weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (pip install 'diffatlas[diffusers]'); "
                                                    "the import/export tests need it")

import diffatlas.evaluation as E
from diffatlas.metrics.eval_classifier import default_classifier_dir  # noqa: E402
from diffatlas.checkpoint import save_snapshot  # noqa: E402
from diffatlas.cli import main  # noqa: E402
from diffatlas.config import dump_yaml, load_config  # noqa: E402
from diffatlas.data import load_dataset  # noqa: E402
from diffatlas.denoiser import eps_from_x0  # noqa: E402
from diffatlas.dynamics import VPSDE  # noqa: E402
from diffatlas.interop import diffusers_grid, import_diffusers  # noqa: E402
from diffatlas.metrics import save_classifier, train_classifier  # noqa: E402
from diffatlas.model import make_network  # noqa: E402
from diffatlas.samplers import ancestral, ddim, sample  # noqa: E402
from diffatlas.sampling import load_run  # noqa: E402
from diffatlas.study.runner import Runner  # noqa: E402
from diffatlas.study.spec import load_study  # noqa: E402
from diffatlas.train import train  # noqa: E402

T = 50  # training steps of the tiny models: short samplers, every timestep checked quickly
UNET = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=4, attention_head_dim=None)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """A private cache holding a quickly trained evaluation classifier for digits."""
    with pytest.MonkeyPatch.context() as mp:
        root = tmp_path_factory.mktemp("cache")
        mp.setenv("DIFFATLAS_CACHE", str(root))
        tr, te = load_dataset("digits", split="train"), load_dataset("digits", split="test")
        x, y = tr.get_batch(torch.arange(len(tr)))
        xt, yt = te.get_batch(torch.arange(len(te)))
        ext, info = train_classifier(x[:256], y[:256], xt[:64], yt[:64], epochs=1, seed=0, dataset="digits")
        save_classifier(default_classifier_dir("digits"), ext, info)  # a feature extractor, its accuracy aside
        yield root


def _unet(seed: int = 0, **changes) -> torch.nn.Module:
    """A tiny UNet2DModel with every weight moved off its initialisation (zero-initialised layers included)."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(**{**UNET, **changes})
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return unet.eval()


def _folder(path: Path, unet: torch.nn.Module | None = None, **scheduler) -> Path:
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, **scheduler)
    diffusers.DDPMPipeline(unet=unet if unet is not None else _unet(), scheduler=sched).save_pretrained(str(path))
    return path


def _scheduler_config(folder: Path, **changes) -> dict:
    return {**json.loads((folder / "scheduler" / "scheduler_config.json").read_text()), **changes}


def _cli_error(args: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("diffatlas: error:") and "\n" not in err and "Traceback" not in err, err
    return err


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """What the pipelines return: (x / 2 + 0.5) clamped to [0, 1]."""
    return (x / 2 + 0.5).clamp(0, 1)


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("imported")
    folder = _folder(root / "diffusers")
    import_diffusers(folder, root / "run", ["data.name=digits"], log=None)
    return folder, root / "run"


# ---- import ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule, prediction", [("linear", "epsilon"), ("scaled_linear", "v_prediction"),
                                                  ("squaredcos_cap_v2", "sample"), ("sigmoid", "epsilon")])
def test_imported_denoiser_reproduces_the_unet_at_every_timestep(tmp_path, schedule, prediction):
    unet = _unet(3)
    folder = _folder(tmp_path / "d", unet, beta_schedule=schedule, prediction_type=prediction)
    import_diffusers(folder, tmp_path / "run", ["data.name=digits"], log=None)
    den = load_run(tmp_path / "run").denoiser
    sched = diffusers.DDPMScheduler.from_config(_scheduler_config(folder, clip_sample=False))
    torch.testing.assert_close(den.dynamics.alphas_cumprod.float(), sched.alphas_cumprod, rtol=1e-4, atol=0)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for k in range(T):
            t = torch.full((3,), (k + 1) / T)
            out = unet(x, k).sample
            x0 = sched.step(out, k, x).pred_original_sample      # diffusers' own conversion of its prediction
            torch.testing.assert_close(den(x, t), x0, rtol=1e-5, atol=1e-5)
            if prediction == "epsilon":                          # and the epsilon the UNet itself outputs
                torch.testing.assert_close(eps_from_x0(den.dynamics, x, t, den(x, t)), out, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spacing, n, offset, to_one, eta", [
    ("leading", 10, 0, True, 0.0), ("trailing", 10, 0, True, 0.0), ("leading", 10, 1, False, 0.0),
    ("linspace", T, 0, True, 0.0), ("leading", 5, 0, True, 1.0)])
def test_ddim_reproduces_diffusers_ddim_scheduler(imported, spacing, n, offset, to_one, eta):
    folder, run_dir = imported
    cfg = _scheduler_config(folder, _class_name="DDIMScheduler", clip_sample=False, timestep_spacing=spacing,
                            steps_offset=offset, set_alpha_to_one=to_one)
    pipe = diffusers.DDIMPipeline(unet=diffusers.UNet2DModel.from_pretrained(str(folder / "unet")),
                                  scheduler=diffusers.DDIMScheduler.from_config(cfg))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=4, generator=torch.Generator().manual_seed(7), num_inference_steps=n, eta=eta,
               output_type="pt").images
    den = load_run(run_dir).denoiser
    ts, final = diffusers_grid(cfg, n, den.dynamics)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(4, 1, 8, 8, generator=g)           # the same draws as the pipeline's starting noise, then its eta noise
    with torch.no_grad():
        out = ddim(den, x, ts, generator=g, denoise_final=final, eta=eta).x
    torch.testing.assert_close(_pixels(out).permute(0, 2, 3, 1), ref.permute(0, 2, 3, 1), rtol=0, atol=2e-5)


def test_ancestral_reproduces_diffusers_ddpm_scheduler(imported):
    folder, run_dir = imported
    cfg = _scheduler_config(folder, clip_sample=False)
    pipe = diffusers.DDPMPipeline(unet=diffusers.UNet2DModel.from_pretrained(str(folder / "unet")),
                                  scheduler=diffusers.DDPMScheduler.from_config(cfg))
    pipe.set_progress_bar_config(disable=True)
    den = load_run(run_dir).denoiser
    for n in (T, 10):
        ref = pipe(batch_size=4, generator=torch.Generator().manual_seed(2), num_inference_steps=n, output_type="pt").images
        ts, final = diffusers_grid(cfg, n, den.dynamics, scheduler="DDPMScheduler")
        g = torch.Generator().manual_seed(2)
        x = torch.randn(4, 1, 8, 8, generator=g)
        with torch.no_grad():
            out = ancestral(den, x, ts, generator=g, denoise_final=final).x
        torch.testing.assert_close(_pixels(out), ref, rtol=0, atol=5e-5)


def test_grids_refuse_what_diffatlas_does_not_reproduce(imported):
    folder, run_dir = imported
    dyn = load_run(run_dir).denoiser.dynamics
    from diffatlas.errors import UserError
    with pytest.raises(UserError, match="clip"):
        diffusers_grid(_scheduler_config(folder, _class_name="DDIMScheduler"), 10, dyn)  # clip_sample=true
    with pytest.raises(UserError, match="evaluates the model next at"):
        diffusers_grid(_scheduler_config(folder, _class_name="DDIMScheduler", clip_sample=False,
                                         timestep_spacing="linspace"), 10, dyn)
    with pytest.raises(UserError, match="posterior variance"):
        diffusers_grid(_scheduler_config(folder, clip_sample=False, variance_type="fixed_large"), 10, dyn,
                       scheduler="DDPMScheduler")


def test_import_via_cli_then_sample_doctor_evaluate_and_an_evaluation_only_study(tmp_path, capsys):
    folder = _folder(tmp_path / "diffusers", _unet(5))
    run_dir = tmp_path / "run"
    assert main(["import", "diffusers", str(folder), "data.name=digits", "--run-dir", str(run_dir)]) == 0
    assert "clip_sample" in capsys.readouterr().out + json.dumps(json.loads((run_dir / "source.json").read_text()))
    source = json.loads((run_dir / "source.json").read_text())
    assert source["check"]["max_abs_diff"] < 1e-5 and source["sampling_conventions"]["clip_sample"] is True
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["network"]["preset"] == "diffusers-unet" and cfg["dynamics"]["name"] == "ddpm"
    assert cfg["dynamics"]["options"]["steps"] == T and cfg["model"]["parameterization"] == "eps"

    out = tmp_path / "grid.png"
    assert main(["sample", str(run_dir), "--n", "4", "--sampler", "ddim", "--steps", "5", "--device", "cpu",
                 "--out", str(out)]) == 0
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["nfe"] == 5
    assert main(["doctor", str(run_dir)]) == 0
    assert json.loads((run_dir / "doctor.json").read_text())["noise_ratio"] > 0.005

    entries = E.evaluate_run(run_dir, metrics=("fid",), n=16, sampler="ddim", steps=3, device="cpu", log=None)
    assert [(e["kimg"], e["metric"], e["n"], e["extractor"]) for e in entries] == [(0.0, "fid", 16, "classifier")]

    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({
        "name": "fixed", "models": {"imported": str(run_dir)},
        "evaluation": {"metrics": ["fid"], "n": 16, "samplers": [{"sampler": "ddim", "steps": 3},
                                                                   {"sampler": "ddim", "steps": 4}]}}))
    assert main(["study", "plan", str(study)]) == 0
    assert "evaluation only, 1 finished run" in capsys.readouterr().out
    counts = Runner(load_study(study), tmp_path / "out").run()
    assert counts["done"] == 1 and counts["failed"] == 0
    logged = {(e["steps"], e["metric"]) for e in E.read_metrics(run_dir)}
    assert logged == {(3, "fid"), (4, "fid")}                 # evaluated in place, nothing retrained
    assert sorted(p.name for p in (run_dir / "snapshots").iterdir()) == ["snapshot-000000.000"]


@pytest.mark.parametrize("unet, scheduler, edit, args, message", [
    ({}, {"trained_betas": [1e-4 * (i + 1) for i in range(T)]}, {}, [], "trained_betas"),
    ({}, {"rescale_betas_zero_snr": True}, {}, [], "zero terminal SNR"),
    ({}, {"variance_type": "learned_range"}, {}, [], "predicts its variance"),
    ({}, {}, {"prediction_type": "edm"}, [], "prediction_type"),
    ({}, {}, {"_class_name": "ScoreSdeVeScheduler"}, [], "not a DDPM/DDIM-family"),
    ({"num_class_embeds": 11}, {}, {}, [], "class-conditional"),
    ({"time_embedding_type": "fourier", "flip_sin_to_cos": False}, {}, {}, [], "Fourier"),
    ({}, {}, {}, ["data.resolution=16"], "makes 1x8x8 samples"),
    ({}, {}, {}, ["network.preset=unet-xs"], "comes from the diffusers folder"),
])
def test_import_refuses_with_one_line_and_writes_nothing(tmp_path, capsys, unet, scheduler, edit, args, message):
    folder = _folder(tmp_path / "d", _unet(**unet), **scheduler)
    if edit:
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(_scheduler_config(folder, **edit)))
    run_dir = tmp_path / "run"
    err = _cli_error(["import", "diffusers", str(folder), "data.name=digits", *args, "--run-dir", str(run_dir)], capsys)
    assert message in err
    assert not run_dir.exists() and not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())


def test_import_keeps_an_existing_run_directory(imported, tmp_path, capsys):
    folder, run_dir = imported
    before = sorted(p.name for p in run_dir.iterdir())
    err = _cli_error(["import", "diffusers", str(folder), "data.name=digits", "--run-dir", str(run_dir)], capsys)
    assert "not empty" in err and sorted(p.name for p in run_dir.iterdir()) == before
    assert "not a folder" in _cli_error(["import", "diffusers", str(tmp_path / "nope"), "--run-dir",
                                         str(tmp_path / "r")], capsys)


# ---- export ------------------------------------------------------------------------------------------

TRAINED = ["network.preset=unet-xs", "network.dropout=0.0", "network.norm_groups=4", "train.batch=32",
           "train.kimg=0.2", "train.lr=1e-2", "train.warmup_kimg=0.01", "train.tick_kimg=0.1",
           "train.snapshot_kimg=0.2", "train.doctor=false", "train.device=cpu", "train.tensorboard=false",
           f"dynamics.steps={T}"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run trained with a large learning rate, so no layer is left at its (zero) initialisation."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train(load_config(None, TRAINED), run_dir, progress=False, log=lambda *_: None)
    return run_dir


def _fake_run(path: Path, overrides: list[str], seed: int = 0) -> Path:
    """A run directory with a random (perturbed) network instead of a trained one: enough for export."""
    cfg = load_config(None, ["train.device=cpu", "network.preset=unet-xs", *overrides])
    torch.manual_seed(seed)
    net = make_network(cfg, (1, 8, 8), 10)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(dump_yaml(cfg))
    (path / "dataset.json").write_text(json.dumps({"name": "digits", "split": "train", "shape": [1, 8, 8],
                                                   "num_classes": 10, "size": 1437}))
    sd = net.state_dict()
    save_snapshot(path, 1.0, {"model": sd, "ema": sd}, {}, {"kimg": 1.0, "step": 1, "images": 1000})
    (path / "DONE").write_text(json.dumps({"kimg": 1.0, "step": 1}))
    return path


def test_export_loads_in_ddpm_pipeline_and_samples_what_diffatlas_samples(trained, tmp_path):
    out = tmp_path / "exported"
    assert main(["export", "diffusers", str(trained), str(out)]) == 0
    record = json.loads((out / "diffatlas_export.json").read_text())
    assert record["check"]["max_abs_diff"] < 1e-5 and record["prediction_type"] == "epsilon"
    pipe = diffusers.DDPMPipeline.from_pretrained(str(out))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.time_embedding_type == "learned" and pipe.scheduler.config.clip_sample is False
    den = load_run(trained).denoiser
    cfg = _scheduler_config(out)
    for n in (T, 10):
        ref = pipe(batch_size=4, generator=torch.Generator().manual_seed(4), num_inference_steps=n, output_type="pt").images
        ts, final = diffusers_grid(cfg, n, den.dynamics, scheduler="DDPMScheduler")
        g = torch.Generator().manual_seed(4)
        with torch.no_grad():
            x = ancestral(den, torch.randn(4, 1, 8, 8, generator=g), ts, generator=g, denoise_final=final).x
        torch.testing.assert_close(_pixels(x), ref, rtol=0, atol=5e-5)
    ddim_pipe = diffusers.DDIMPipeline(unet=pipe.unet, scheduler=diffusers.DDIMScheduler.from_config(cfg))
    ddim_pipe.set_progress_bar_config(disable=True)
    ref = ddim_pipe(batch_size=4, generator=torch.Generator().manual_seed(4), num_inference_steps=10, output_type="pt").images
    ts, final = diffusers_grid({**cfg, "_class_name": "DDIMScheduler"}, 10, den.dynamics)
    with torch.no_grad():
        x = ddim(den, torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(4)), ts, denoise_final=final).x
    torch.testing.assert_close(_pixels(x), ref, rtol=0, atol=2e-5)

    # exported and imported back: the same samples as the original run, and the training length kept
    back = tmp_path / "back"
    assert main(["import", "diffusers", str(out), "data.name=digits", "--run-dir", str(back)]) == 0
    run_back = load_run(back)
    assert run_back.kimg == load_run(trained).kimg
    for sampler, steps in (("ancestral", T), ("ddim", 10)):
        a = sample(den, (6, 1, 8, 8), sampler=sampler, steps=steps, seed=0)
        b = sample(run_back.denoiser, (6, 1, 8, 8), sampler=sampler, steps=steps, seed=0)
        torch.testing.assert_close(b.x, a.x, rtol=0, atol=1e-5)


def test_diffusers_model_imported_and_exported_back_has_identical_weights(imported, tmp_path):
    folder, run_dir = imported
    from safetensors.torch import load_file
    out = tmp_path / "again"
    assert main(["export", "diffusers", str(run_dir), str(out)]) == 0
    a = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = ("_diffusers_version", "_name_or_path", "_use_default_values")
    config = lambda p: {k: v for k, v in json.loads(p.read_text()).items() if k not in strip}  # noqa: E731
    assert config(out / "unet" / "config.json") == config(folder / "unet" / "config.json")


def test_vp_run_exports_as_its_ddpm_discretization(tmp_path):
    run_dir = _fake_run(tmp_path / "vp", ["dynamics.name=vp", "network.norm_groups=4", "network.dropout=0.0"])
    out = tmp_path / "out"
    assert main(["export", "diffusers", str(run_dir), str(out), "--timesteps", "1000"]) == 0
    assert json.loads((out / "diffatlas_export.json").read_text())["check"]["max_abs_diff"] < 1e-5
    cfg = {**json.loads((out / "scheduler" / "scheduler_config.json").read_text()), "_class_name": "DDIMScheduler",
           "steps_offset": 1}  # timesteps 901, 801, ..., 1: noise levels inside the VP's [t_min, 1]
    assert cfg["beta_start"] == pytest.approx(0.1 / 1000) and cfg["beta_end"] == pytest.approx(20.0 / 1000)
    pipe = diffusers.DDIMPipeline(unet=diffusers.UNet2DModel.from_pretrained(str(out / "unet")),
                                  scheduler=diffusers.DDIMScheduler.from_config(cfg))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=4, generator=torch.Generator().manual_seed(1), num_inference_steps=10, output_type="pt").images
    den = load_run(run_dir).denoiser
    assert isinstance(den.dynamics, VPSDE)
    ts, final = diffusers_grid(cfg, 10, den.dynamics)
    with torch.no_grad():
        x = ddim(den, torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)), ts, denoise_final=final).x
    torch.testing.assert_close(_pixels(x), ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("overrides, message", [
    (["dynamics.name=ncsn", "network.norm_groups=4"], "dynamics 'ncsn' is not exported"),
    (["model.parameterization=edm", "network.norm_groups=4"], "parameterization 'edm'"),
    (["model.sigma_data=0.5", "network.norm_groups=4"], "sigma_data"),
    (["network.preset=dit-xs"], "network family 'dit'"),
    ([], "norm_groups"),
    (["network.norm_groups=4", "network.channel_mult=[2, 2]"], "channel_mult"),
    (["network.norm_groups=4", "network.conditional=true"], "class-conditional"),
])
def test_export_refuses_what_diffusers_cannot_represent(tmp_path, capsys, overrides, message):
    run_dir = _fake_run(tmp_path / "run", overrides)
    out = tmp_path / "out"
    assert message in _cli_error(["export", "diffusers", str(run_dir), str(out)], capsys)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["run"]


def test_export_keeps_an_existing_output_folder(trained, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "not empty" in _cli_error(["export", "diffusers", str(trained), str(out)], capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert "--timesteps" in _cli_error(["export", "diffusers", str(trained), str(tmp_path / "o2"), "--timesteps", "7"],
                                       capsys)
