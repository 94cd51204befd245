"""TensorBoard: training ticks, evaluation metrics and sample grids read back from the event files; one
key turns it off; a resumed run logs each tick once; a study's runs overlay by configuration."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'diffatlas[tensorboard]'); "
                                          "the event-file tests need it")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer  # noqa: E402

import diffatlas.evaluation as E  # noqa: E402
from diffatlas.checkpoint import list_snapshots, read_stats  # noqa: E402
from diffatlas.config import load_config  # noqa: E402
from diffatlas.data import load_dataset  # noqa: E402
from diffatlas.metrics import save_classifier, train_classifier  # noqa: E402
from diffatlas.study.runner import Runner  # noqa: E402
from diffatlas.study.spec import study_from_dict  # noqa: E402
from diffatlas.tensorboard_log import TB_DIR, RunLog, setting_tag  # noqa: E402
from diffatlas.train import train  # noqa: E402



def _events(logdir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def run(tiny_run) -> Path:
    return tiny_run  # trained with TensorBoard on (the default)


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory) -> Path:
    tr = load_dataset("digits", split="train")
    x, y = tr.get_batch(torch.arange(256))
    ext, info = train_classifier(x, y, x[:64], y[:64], epochs=1, seed=0, dataset="digits")
    return save_classifier(tmp_path_factory.mktemp("clf") / "digits", ext, info)


def test_training_writes_loss_lr_throughput_and_kimg_against_images_seen(run):
    stats = read_stats(run)
    acc = _events(run / TB_DIR)
    assert len(stats) == 3
    for key in ("loss", "lr", "images_per_s", "kimg", "peak_mem_mb"):
        events = acc.Scalars(f"train/{key}")
        assert [e.step for e in events] == [round(s["kimg"] * 1000) for s in stats]  # the step axis: images seen
        assert [e.value for e in events] == pytest.approx([s[key] for s in stats], rel=1e-6)
    assert "run/text_summary" in acc.Tags()["tensors"]  # the resolved config, once


def test_resumed_run_logs_each_tick_once(run, tiny_overrides, tmp_path):
    again = tmp_path / "run"
    shutil.copytree(run, again)
    (again / "DONE").unlink()
    shutil.rmtree(list_snapshots(again)[-1])  # killed after the first snapshot: the rest is replayed
    train(load_config(None, tiny_overrides), again, progress=False, log=lambda *_: None)
    stats = read_stats(again)
    loss = _events(again / TB_DIR).Scalars("train/loss")
    assert [e.step for e in loss] == [round(s["kimg"] * 1000) for s in stats] == [96, 192, 224]
    assert [e.value for e in loss] == pytest.approx([s["loss"] for s in stats], rel=1e-6)


def test_evaluation_writes_every_metric_against_kimg_and_a_sample_grid(run, clf_dir, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(run, d)
    entries = E.evaluate_run(d, metrics=("fid", "is"), n=16, sampler="ddim", steps=3, extractor_path=clf_dir,
                             device="cpu", log=None)
    assert len(entries) == 4  # two snapshots x two metrics
    acc = _events(d / TB_DIR)
    for metric in ("fid", "is"):
        mine = sorted((e for e in entries if e["metric"] == metric), key=lambda e: e["kimg"])
        events = acc.Scalars(f"eval/{metric}/{setting_tag(mine[0])}")
        assert [e.step for e in events] == [round(e["kimg"] * 1000) for e in mine]
        assert [e.value for e in events] == pytest.approx([e["value"] for e in mine], rel=1e-6)
    assert setting_tag(entries[0]) == "ddim-x3_logsnr_clip=static_classifier_n16_seed0"
    images = acc.Images(f"samples/{setting_tag(entries[0])}")
    assert [im.step for im in images] == [96, 224]
    assert all((im.width, im.height) == (37, 37) for im in images)  # 16 samples: 4 x 4 tiles of 8 px, 1 px borders
    assert acc.Scalars("train/loss")  # the same TensorBoard run as training


def test_one_key_turns_it_off(run, clf_dir, tiny_overrides, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(run, d, ignore=shutil.ignore_patterns(TB_DIR))
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    cfg["train"]["tensorboard"] = False
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    E.evaluate_run(d, metrics=("fid",), n=16, sampler="ddim", steps=3, snapshots="last", extractor_path=clf_dir,
                   device="cpu", log=None)
    assert not (d / TB_DIR).exists()
    off = tmp_path / "off"
    train(load_config(None, [*tiny_overrides, "train.kimg=0.032", "train.tensorboard=false"]), off, progress=False,
          log=lambda *_: None)
    assert (off / "DONE").is_file() and not (off / TB_DIR).exists()


def test_study_overlays_one_tensorboard_run_per_configuration(tmp_path):
    study = study_from_dict({"name": "tb", "axes": [{"product": {"model.parameterization": ["eps", "x0"]}}],
                             "seeds": [0, 1], "base": {"train": {"device": "cpu"}}})

    def work(task):  # stands in for training: one tick through the same writer train() uses
        log = RunLog(task.run_dir, task.config.train.tensorboard)
        log.tick({"kimg": 0.5, "loss": {"eps": 1.0, "x0": 2.0}[task.labels["model.parameterization"]] + task.labels["seed"]})
        log.close()

    assert Runner(study, tmp_path / "out", work=work).run()["done"] == 4
    mux = EventMultiplexer().AddRunsFromDirectory(str(tmp_path / "out" / TB_DIR))
    mux.Reload()
    runs = {name: [(e.step, e.value) for e in mux.Scalars(name, "train/loss")] for name in mux.Runs()}
    assert runs == {"parameterization=eps,seed=0": [(500, 1.0)], "parameterization=eps,seed=1": [(500, 2.0)],
                    "parameterization=x0,seed=0": [(500, 2.0)], "parameterization=x0,seed=1": [(500, 3.0)]}


def test_a_run_saved_before_the_key_existed_still_resumes(tiny_overrides, tmp_path):
    from diffatlas.config import to_dict
    from diffatlas.errors import UserError
    from diffatlas.train import _check_run_dir

    cfg = load_config(None, tiny_overrides)
    old = to_dict(cfg)
    del old["train"]["tensorboard"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    _check_run_dir(tmp_path, cfg)  # the new key's default fills the gap: the same run
    old["train"]["lr"] = 1.0
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    with pytest.raises(UserError, match="different config"):
        _check_run_dir(tmp_path, cfg)
