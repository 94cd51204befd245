"""Training loop: exact resume after SIGKILL, DDP equivalence, atomic snapshots, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffatlas.checkpoint import list_snapshots
from diffatlas.cli import main
from diffatlas.config import load_config
from diffatlas.train import train

TINY = ["network.preset=unet-xs", "network.dropout=0.0", "train.batch=32", "train.kimg=0.64",
        "train.tick_kimg=0.064", "train.snapshot_kimg=0.128", "train.warmup_kimg=0.1", "train.doctor=false",
        "train.device=cpu"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    snap = list_snapshots(run)[-1]
    return {f"{n}.{k}": v for n in ("model", "ema") for k, v in load_file(str(snap / f"{n}.safetensors")).items()}


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "stats.jsonl").read_text().splitlines()]


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "diffatlas.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    # Every run of these tests goes through the CLI in a one-thread process, so that float
    # reductions happen in the same order in the runs being compared.
    run = tmp_path_factory.mktemp("ref") / "run"
    out = _cli("train", *TINY, "--run-dir", str(run), "--progress", "lines").communicate()
    assert (run / "DONE").exists(), out[1][-2000:]
    return run


def test_sigkill_and_resume_matches_uninterrupted(reference_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _cli("train", *TINY, "--run-dir", str(run), "--progress", "lines")
    deadline = time.time() + 120
    while not list_snapshots(run) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "training finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "DONE").exists()
    killed_at = len(list_snapshots(run))
    assert killed_at >= 1
    out, err = _cli("train", *TINY, "--run-dir", str(run), "--progress", "lines").communicate()
    assert "resuming" in out, err[-2000:]
    ref, got = _weights(reference_run), _weights(run)
    assert ref.keys() == got.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6, msg=k)
    assert _steps(run) == _steps(reference_run)  # no gap, no duplicate tick
    assert len(set(_steps(run))) == len(_steps(run))


def test_resume_of_a_finished_run_does_nothing(reference_run: Path) -> None:
    before = (reference_run / "stats.jsonl").read_text()
    rec = train(load_config(None, TINY), reference_run, progress=False, log=lambda *_: None)
    assert rec["step"] == 20
    assert (reference_run / "stats.jsonl").read_text() == before


def test_torchrun_two_processes_equals_one(reference_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "diffatlas.cli", "train", *TINY, "--run-dir", str(run), "--progress", "lines"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    ref, got = _weights(reference_run), _weights(run)
    # Two processes reduce gradients in another order than one: the weights agree to float
    # rounding amplified by Adam over 20 steps (the largest gaps sit in redundant bias pairs).
    diff = sum(float((got[k] - ref[k]).pow(2).sum()) for k in ref) ** 0.5
    norm = sum(float(ref[k].pow(2).sum()) for k in ref) ** 0.5
    assert diff / norm < 1e-5
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-3, atol=1e-4, msg=k)
    assert [json.loads(l)["kimg"] for l in (run / "stats.jsonl").read_text().splitlines()] == \
        [json.loads(l)["kimg"] for l in (reference_run / "stats.jsonl").read_text().splitlines()]


def test_snapshots_load_without_unpickling(reference_run: Path, monkeypatch) -> None:
    import pickle

    def refuse(*a, **k):
        raise AssertionError("a snapshot load unpickled code")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    from diffatlas.checkpoint import load_state
    state = load_state(list_snapshots(reference_run)[-1])  # torch.load(weights_only=True)
    assert "optimizer" in state
    from diffatlas.sampling import load_run
    assert load_run(reference_run).kimg == pytest.approx(0.64)


def _run_cli_error(args: list[str], capsys) -> str:
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_bad_inputs_are_one_line_and_exit_2(reference_run: Path, tmp_path: Path, capsys) -> None:
    err = _run_cli_error(["train", "train.batch=0", "--dry-run"], capsys)
    assert "train.batch" in err
    err = _run_cli_error(["train", "train.kimg=-1", "--dry-run"], capsys)
    assert "train.kimg" in err
    err = _run_cli_error(["train", "train.lrr=1", "--dry-run"], capsys)
    assert "did you mean 'lr'" in err
    err = _run_cli_error(["train", "dynamics.name=ddpn", "--dry-run"], capsys)
    assert "ddpm" in err
    err = _run_cli_error(["train", "train.batch=many", "--dry-run"], capsys)
    assert "integer" in err
    err = _run_cli_error(["train", "train.compile_mode=fastest", "--dry-run"], capsys)
    assert "reduce-overhead" in err and "fastest" in err
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: {batch: [1, 2\n")
    err = _run_cli_error(["train", str(bad_yaml), "--dry-run"], capsys)
    assert "YAML" in err
    empty = tmp_path / "no-data"
    empty.mkdir()
    err = _run_cli_error(["train", "data.name=fashion-mnist", f"data.root={empty}", "--run-dir", str(tmp_path / "r")], capsys)
    assert "train-images-idx3-ubyte" in err

    # a run directory that already holds a different config: refused, nothing changed
    before = {p: p.read_bytes() for p in reference_run.rglob("*") if p.is_file()}
    err = _run_cli_error(["train", *TINY, "train.lr=1e-3", "--run-dir", str(reference_run)], capsys)
    assert "different config" in err
    assert {p: p.read_bytes() for p in reference_run.rglob("*") if p.is_file()} == before

    # missing and corrupt snapshots
    err = _run_cli_error(["sample", str(tmp_path / "nowhere")], capsys)
    assert "not a run directory" in err
    broken = tmp_path / "broken"
    import shutil
    shutil.copytree(reference_run, broken)
    snap = list_snapshots(broken)[-1]
    (snap / "ema.safetensors").write_bytes(b"\x00garbage")
    err = _run_cli_error(["sample", str(broken), "--n", "4"], capsys)
    assert "corrupt" in err
    err = _run_cli_error(["sample", str(broken), "--n", "0"], capsys)
    assert "--n" in err


def test_cuda_graph_modes_record_only_on_cuda_and_in_one_process() -> None:
    from diffatlas.errors import UserError
    from diffatlas.train import records_cuda_graphs

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    graphs = load_config(None, ["train.compile=true", "train.compile_mode=reduce-overhead"])
    assert records_cuda_graphs(graphs, cuda, 1)
    assert not records_cuda_graphs(graphs, cpu, 1)  # on the CPU the mode only compiles
    assert not records_cuda_graphs(load_config(None, ["train.compile_mode=reduce-overhead"]), cuda, 1)
    assert not records_cuda_graphs(load_config(None, ["train.compile=true"]), cuda, 2)
    with pytest.raises(UserError, match="one process only.*torchrun started 2"):
        records_cuda_graphs(graphs, cuda, 2)


def test_dry_run_prints_every_default(capsys) -> None:
    assert main(["train", "dynamics.steps=500", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "steps: 500" in out and "beta_max: 0.02" in out and "ema_halflife_kimg" in out
