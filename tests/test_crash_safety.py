"""Lost and duplicated work: a process killed at the worst moment, then run again.

Each test kills a real diffatlas process (SIGKILL, from inside, at an exact point: half-way through
appending a log line, when the first snapshot is due, between the files of a snapshot write),
then runs the same command again and checks the logs and snapshots against an uninterrupted run:
no torn line left, no tick logged twice, no temporary snapshot folder left behind, same weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffatlas.checkpoint import list_snapshots
from diffatlas.cli import main
from diffatlas.evaluation import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

# 8 steps of 16 images: a tick (one stats line) per step, snapshots at steps 4 and 8.
TINY = ["network.preset=unet-xs", "network.base_channels=8", "network.channel_mult=[1,2]", "network.num_res_blocks=1",
        "network.dropout=0.0", "train.batch=16", "train.kimg=0.128", "train.tick_kimg=0.016",
        "train.snapshot_kimg=0.064", "train.warmup_kimg=0.032", "train.doctor=false", "train.device=cpu"]

# Runs the CLI after arranging for the process to SIGKILL itself at one moment (argv[1], argv[2]).
DRIVER = r"""
import os, signal, sys
import torch
import diffatlas.checkpoint as ck
import diffatlas.io.json_records as jr
import diffatlas.train as tr

mode, n = sys.argv[1], int(sys.argv[2])
calls = [0]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if mode == "torn-append":  # the n-th appended log line: half of it reaches the file, then the process dies
    real_write = jr._write_all
    def write_all(fd, data):
        if data != b"\n":
            calls[0] += 1
            if calls[0] == n:
                real_write(fd, data[: len(data) // 2])
                os.fsync(fd)
                die()
        real_write(fd, data)
    jr._write_all = write_all
elif mode == "first-snapshot":  # dies when the first snapshot is due: its ticks are logged, no snapshot exists
    def save_snapshot(*args, **kwargs):
        die()
    tr.save_snapshot = save_snapshot
elif mode == "mid-snapshot":  # snapshot n: model.safetensors written to the temporary folder, then death
    real_save = ck.save_file
    def save_file(*args, **kwargs):
        real_save(*args, **kwargs)
        calls[0] += 1
        if calls[0] == 2 * n - 1:
            die()
    ck.save_file = save_file
torch.set_num_threads(1)
from diffatlas.cli import main
sys.exit(main(sys.argv[3:]))
"""


def killed(mode: str, n: int, *argv: str, env: dict | None = None) -> None:
    """Run `diffatlas argv` in a child that kills itself at (mode, n); assert that it died by SIGKILL."""
    proc = subprocess.run([sys.executable, "-c", DRIVER, mode, str(n), *argv], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    assert proc.returncode == -9, f"the child was not killed (exit {proc.returncode}): {proc.stderr[-2000:]}"


def cli(*argv: str) -> str:
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(list(argv))
    assert rc == 0, out.getvalue()[-2000:]
    return out.getvalue()


def steps(run: Path) -> list[int]:
    text = (run / "stats.jsonl").read_text()
    assert text.endswith("\n")
    return [json.loads(line)["step"] for line in text.splitlines()]  # every line whole


def weights(run: Path) -> dict[str, torch.Tensor]:
    snap = list_snapshots(run)[-1]
    return {f"{n}.{k}": v for n in ("model", "ema") for k, v in load_file(str(snap / f"{n}.safetensors")).items()}


def assert_same_run(run: Path, ref: Path) -> None:
    assert steps(run) == steps(ref) == list(range(1, 9))  # no tick lost, none logged twice
    assert [p.name for p in list_snapshots(run)] == [p.name for p in list_snapshots(ref)]
    assert not list((run / "snapshots").glob(".tmp-*"))
    got, want = weights(run), weights(ref)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    cli("train", *TINY, "--run-dir", str(run), "--progress", "lines")
    return run


def test_killed_before_the_first_snapshot_resumes_without_duplicated_ticks(reference, tmp_path) -> None:
    run = tmp_path / "run"
    killed("first-snapshot", 0, "train", *TINY, "--run-dir", str(run), "--progress", "lines")
    assert steps(run) == [1, 2, 3, 4] and not list_snapshots(run)  # work logged, nothing saved
    cli("train", *TINY, "--run-dir", str(run), "--progress", "lines")
    assert_same_run(run, reference)


def test_killed_during_a_snapshot_write_leaves_no_temporary_folder(reference, tmp_path) -> None:
    run = tmp_path / "run"
    killed("mid-snapshot", 2, "train", *TINY, "--run-dir", str(run), "--progress", "lines")
    left = list((run / "snapshots").glob(".tmp-*"))
    assert len(left) == 1 and (left[0] / "model.safetensors").is_file()  # the interrupted write
    assert len(list_snapshots(run)) == 1
    out = cli("train", *TINY, "--run-dir", str(run), "--progress", "lines")
    assert "removed 1 unfinished snapshot write" in out
    assert_same_run(run, reference)


def test_killed_while_appending_a_tick_leaves_no_torn_line(reference, tmp_path) -> None:
    run = tmp_path / "run"
    killed("torn-append", 6, "train", *TINY, "--run-dir", str(run), "--progress", "lines")
    text = (run / "stats.jsonl").read_text()
    assert not text.endswith("\n") and text.count("\n") == 5  # five whole ticks and half of the sixth
    cli("train", *TINY, "--run-dir", str(run), "--progress", "lines")
    assert_same_run(run, reference)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    from diffatlas.metrics.eval_classifier import train_eval_classifier

    path = tmp_path_factory.mktemp("clf") / "clf"
    train_eval_classifier("digits", out_dir=path, epochs=1, device="cpu", log=None)
    return path


def test_evaluate_killed_mid_write_then_resumed_appends_readable_entries(reference, classifier, tmp_path) -> None:
    evaluation = ["--metrics", "fid,is", "--n", "20", "--sampler", "ddim", "--steps", "5", "--extractor-path",
                  str(classifier), "--device", "cpu", "--progress", "none"]
    whole, run = tmp_path / "whole", tmp_path / "run"
    shutil.copytree(reference, whole)
    shutil.copytree(reference, run)
    cli("evaluate", str(whole), *evaluation)
    want = {(e["kimg"], e["metric"]): e["value"] for e in read_metrics(whole)}
    assert len(want) == 4  # 2 snapshots x (fid, is)

    # killed half-way through the first line of the second snapshot
    killed("torn-append", 3, "evaluate", str(run), *evaluation)
    text = (run / "metrics.jsonl").read_text()
    assert not text.endswith("\n") and text.count("\n") == 2
    assert len(read_metrics(run)) == 2  # the torn line is not an entry

    cli("evaluate", str(run), *evaluation)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line parses: the fragment was cut, not appended to
    assert len(entries) == 4
    got = {(e["kimg"], e["metric"]): e["value"] for e in entries}
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-6), k
    cli("evaluate", str(run), *evaluation)  # a third time: nothing new, nothing duplicated
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
