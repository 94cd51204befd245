"""Bad input to every command: one line on stderr and exit code 2 — no traceback, no silent
acceptance, no hang — and the run and study folders that existed before are left byte for byte.

A table of hand-written cases per command (each a command line plus, where the bad input is a
file, the damage done to a copy of a tiny trained run or study first), and property-based cases
(Hypothesis) over numbers, command-line counts and file contents. The CLI is called in-process
(diffatlas.cli.main with stderr captured), each case under a timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shlex
import shutil
import signal
import sqlite3
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_study import FAKE_STUDY, fake_work, no_resolve  # noqa: E402

from diffatlas.cli import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

CASE_TIMEOUT_S = 30
# A run small enough to copy per case: a narrow U-Net on 8x8 digits, two snapshots.
TINY = ["network.preset=unet-xs", "network.base_channels=8", "network.channel_mult=[1,2]", "network.num_res_blocks=1",
        "network.dropout=0.0", "train.batch=16", "train.kimg=0.032", "train.tick_kimg=0.016",
        "train.snapshot_kimg=0.016", "train.warmup_kimg=0.016", "train.doctor=false", "train.device=cpu"]


class Hang(Exception):
    pass


def run_cli(argv: list[str], timeout: float = CASE_TIMEOUT_S) -> tuple[int, str, str]:
    """main(argv) in this process with stdout/stderr captured, stopped with Hang after `timeout` s."""
    def alarm(*_):
        raise Hang(f"no answer after {timeout} s: {argv}")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return rc, out.getvalue(), err.getvalue()


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under root: path -> (kind, mode, sha256 of a file's bytes)."""
    out = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        st_ = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else None
        out[str(p.relative_to(root))] = ("dir" if p.is_dir() else "file", st_.st_mode, digest)
    return out


# ---- the worlds a case runs in -----------------------------------------------------------------

@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    """A trained tiny run (with a metrics log), an evaluation classifier and a study output folder."""
    from diffatlas.config import load_config
    from diffatlas.metrics.eval_classifier import train_eval_classifier
    from diffatlas.study.runner import Runner
    from diffatlas.study.spec import study_from_dict
    from diffatlas.train import train

    root = tmp_path_factory.mktemp("fuzz-bases")
    old_cache = os.environ.get("DIFFATLAS_CACHE")
    os.environ["DIFFATLAS_CACHE"] = str(root / "cache")
    run = root / "run"
    train(load_config(None, TINY), run, progress=False, log=lambda *_: None)
    entry = {"kimg": 0.032, "metric": "fid", "value": 12.5, "interval": None, "n": 100, "extractor": "classifier",
             "extractor_hash": "0" * 16, "sampler": "ancestral", "grid": "discrete", "steps": 1000, "options": {},
             "guidance": None, "guidance_classifier": None, "seed": 0, "nfe": 1001}
    (run / "metrics.jsonl").write_text(json.dumps(entry) + "\n")
    clf = root / "clf"
    train_eval_classifier("digits", out_dir=clf, epochs=1, device="cpu", log=None)
    study = root / "study"
    d = {**FAKE_STUDY, "axes": [{"product": {"dynamics.name": ["ddpm", "ncsn"]}}], "seeds": [0]}
    with contextlib.redirect_stdout(io.StringIO()):
        Runner(study_from_dict(d), study, work=fake_work, resolve=no_resolve).run()
    yield {"run": run, "clf": clf, "study": study, "root": root}
    if old_cache is None:
        os.environ.pop("DIFFATLAS_CACHE", None)
    else:
        os.environ["DIFFATLAS_CACHE"] = old_cache


@dataclass
class World:
    tmp: Path
    run: Path
    study: Path
    clf: Path
    file: Path
    keep: list = field(default_factory=list)  # open locks and such, released after the case

    @property
    def snapshots(self) -> list[Path]:
        return sorted((self.run / "snapshots").glob("snapshot-*"))

    def subs(self) -> dict[str, str]:
        return {"run": str(self.run), "study": str(self.study), "clf": str(self.clf), "file": str(self.file),
                "tmp": str(self.tmp), "tiny": " ".join(TINY)}


def make_world(tmp: Path, bases: dict[str, Path]) -> World:
    tmp.mkdir(parents=True, exist_ok=True)
    run, study = tmp / "run", tmp / "study"
    shutil.copytree(bases["run"], run, symlinks=True)
    shutil.copytree(bases["study"], study, symlinks=True)
    afile = tmp / "afile"
    afile.write_text("a plain file\n")
    return World(tmp, run, study, bases["clf"], afile)


# ---- damage done before a case -----------------------------------------------------------------

def write(rel: str, data: bytes | str, where: str = "run") -> Callable[[World], None]:
    def do(w: World) -> None:
        p = getattr(w, where) / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return do


def append(rel: str, data: str, where: str = "run") -> Callable[[World], None]:
    def do(w: World) -> None:
        with open(getattr(w, where) / rel, "a") as f:
            f.write(data)
    return do


def last_snapshot(rel: str, data: bytes | str) -> Callable[[World], None]:
    def do(w: World) -> None:
        (w.snapshots[-1] / rel).write_bytes(data if isinstance(data, bytes) else data.encode())
    return do


def unfinished(*more: Callable[[World], None]) -> Callable[[World], None]:
    """The run as if killed after its last snapshot (no DONE), then `more` damage."""
    def do(w: World) -> None:
        (w.run / "DONE").unlink()
        for m in more:
            m(w)
    return do


def foreign_network(w: World) -> None:
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(3)}, str(w.snapshots[-1] / "ema.safetensors"))
    save_file({"w": torch.zeros(3)}, str(w.snapshots[-1] / "model.safetensors"))


def stray_snapshot(w: World) -> None:
    shutil.copytree(w.snapshots[-1], w.run / "snapshots" / "snapshot-backup")


def no_snapshots(w: World) -> None:
    shutil.rmtree(w.run / "snapshots")


def ledger(data: bytes) -> Callable[[World], None]:
    def do(w: World) -> None:
        for extra in ("ledger.sqlite-wal", "ledger.sqlite-shm"):
            (w.study / extra).unlink(missing_ok=True)
        (w.study / "ledger.sqlite").write_bytes(data)
    return do


def truncated_ledger(w: World) -> None:
    p = w.study / "ledger.sqlite"
    p.write_bytes(p.read_bytes()[:1000])


def damaged_ledger_row(w: World) -> None:
    with sqlite3.connect(w.study / "ledger.sqlite") as db:
        db.execute("UPDATE runs SET config = '{not json' WHERE position = 0")
    db.close()


def study_metrics(data: str) -> Callable[[World], None]:
    def do(w: World) -> None:
        rd = sorted((w.study / "runs").iterdir())[0]
        with open(rd / "metrics.jsonl", "a") as f:
            f.write(data)
    return do


def study_stats(data: str) -> Callable[[World], None]:
    def do(w: World) -> None:
        rd = sorted((w.study / "runs").iterdir())[0]
        with open(rd / "stats.jsonl", "a") as f:
            f.write(data)
    return do


def held_by_another_trainer(w: World) -> None:
    import fcntl
    fd = os.open(w.run, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    w.keep.append(fd)


def corrupt_classifier(w: World) -> None:
    clf = w.tmp / "clf"
    shutil.copytree(w.clf, clf)
    (clf / "model.safetensors").write_bytes(b"\x00 not safetensors")


def study_file(name: str, text: str) -> Callable[[World], None]:
    def do(w: World) -> None:
        (w.tmp / name).write_text(text)
    return do


BOMB = "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9 if p else ['x'] * 9)}]\n"
               for p, c in zip(["", "a", "b", "c", "d", "e", "f", "g"], "abcdefgh"))
GOOD_STUDY = ("name: fuzz\nbase: {data: {name: digits}, network: {preset: unet-xs}, train: {batch: 8}}\n"
              "axes: [{product: {dynamics.name: [ddpm, ncsn]}}]\nseeds: [0]\nbudget_kimg: 0.1\n")


def study_case(cid: str, text: str, expect: str, command: str = "study plan {tmp}/s.yaml --no-calibrate") -> "Case":
    return Case(cid, command, study_file("s.yaml", text), expect)


@dataclass
class Case:
    id: str
    argv: str
    prepare: Callable[[World], None] | None = None
    expect: str = ""          # a word the one line must contain (what is wrong)
    as_other_user: bool = False

    def args(self, w: World) -> list[str]:
        return shlex.split(self.argv.format(**w.subs()))


NO_CUDA = not torch.cuda.is_available()
T = "train --dry-run"
CASES: list[Case] = [
    # ---- train: numbers -------------------------------------------------------------------------
    *[Case(f"train-{k}-{v}", f"{T} {k}={v}", expect=k) for k, v in [
        ("train.kimg", "nan"), ("train.kimg", "inf"), ("train.kimg", "-1"), ("train.kimg", "0"), ("train.kimg", "1e309"),
        ("train.kimg", "1e12"), ("train.lr", "nan"), ("train.lr", "0"), ("train.lr", "-1e-3"), ("train.batch", "0"),
        ("train.batch", "-1"), ("train.batch", "1000000000000"), ("train.batch", "2.5"), ("train.seed", "-1"),
        ("train.seed", "1000000000000000000000000000000"), ("train.seed", "1.5"), ("train.weight_decay", "-1"),
        ("train.warmup_kimg", "-1"), ("train.grad_clip", "nan"), ("train.ema_halflife_kimg", "inf"),
        ("train.ema_rampup", "-0.1"), ("train.label_dropout", "1"), ("train.label_dropout", "nan"),
        ("train.tick_kimg", "0"), ("train.snapshot_kimg", "-1"), ("sample.n", "0"), ("sample.steps", "-1"),
        ("model.sigma_data", "0"), ("data.resolution", "0"), ("data.resolution", "100000"),
        ("network.dropout", "2"), ("network.dropout", "true"), ("network.base_channels", "0"),
        ("dynamics.steps", "1000000000000"), ("dynamics.steps", "1"), ("train.batch", "many")]],
    Case("train-betas-short", f"{T} train.betas=[0.9]", expect="train.betas"),
    Case("train-betas-one", f"{T} train.betas=[0.9,1.0]", expect="train.betas"),
    Case("train-betas-nan", f"{T} train.betas=[.nan,0.9]", expect="train.betas"),
    Case("train-ve-sigma-nan", f"{T} dynamics.name=ve dynamics.sigma_max=nan", expect="sigma_max"),
    Case("train-vp-beta-inf", f"{T} dynamics.name=vp dynamics.beta_max=inf", expect="beta_max"),
    Case("train-sample-seeds-overflow", f"{T} sample.seed=4294967295", expect="sample.seed"),
    # ---- train: names and keys ------------------------------------------------------------------
    Case("train-typo-data-key", f"{T} data.resolutoin=16", expect="resolution"),
    Case("train-typo-network-key", f"{T} network.dropuot=0.1", expect="dropout"),
    Case("train-typo-dynamics-key", f"{T} dynamics.stepz=10", expect="steps"),
    Case("train-typo-train-key", f"{T} train.lrr=1", expect="lr"),
    Case("train-typo-model-key", f"{T} model.parametrization=x0", expect="parameterization"),
    Case("train-typo-sample-option", f"{T} sample.sampler=ddim sample.etaa=0.5", expect="eta"),
    Case("train-option-of-other-sampler", f"{T} sample.eta=0.5", expect="sample.eta"),
    Case("train-unknown-section", f"{T} trian.lr=1", expect="train"),
    Case("train-no-key", f"{T} train.=1", expect="section"),
    Case("train-unknown-dynamics", f"{T} dynamics.name=ddpn", expect="ddpm"),
    Case("train-unknown-preset", f"{T} network.preset=unet-xxl", expect="preset"),
    Case("train-unknown-dataset", f"{T} data.name=digitz", expect="digits"),
    Case("train-unknown-schedule", f"{T} dynamics.schedule=foo", expect="schedule"),
    Case("train-unknown-weighting", f"{T} model.weighting=foo", expect="weighting"),
    Case("train-unknown-sampler", f"{T} sample.sampler=foo", expect="sampler"),
    Case("train-unknown-grid", f"{T} sample.grid=foo", expect="grid"),
    Case("train-unknown-split", f"{T} data.split=val", expect="data.split"),
    Case("train-unknown-precision", f"{T} train.precision=fp8", expect="precision"),
    Case("train-unknown-compile-mode", f"{T} train.compile_mode=fastest", expect="reduce-overhead"),
    Case("train-unknown-device", f"{T} train.device=tpu", expect="train.device"),
    Case("train-malformed-device", f"{T} train.device=cuda:x", expect="train.device"),
    Case("train-bool-not-bool", f"{T} network.conditional=maybe", expect="network.conditional"),
    Case("train-duplicate-key-in-value", T + " 'data.options={{a: 1, a: 2}}'", expect="twice"),
    Case("train-conditional-unlabelled", "train data.name=toy2d network.preset=mlp-xs network.conditional=true "
         "train.kimg=0.016 train.batch=16 --run-dir {tmp}/new", expect="labels"),
    # ---- train: config files --------------------------------------------------------------------
    Case("train-yaml-syntax", "train {tmp}/c.yaml --dry-run", write("../c.yaml", "train: {batch: [1, 2\n"), "YAML"),
    Case("train-yaml-duplicate", "train {tmp}/c.yaml --dry-run", write("../c.yaml", "train:\n  lr: 1\n  lr: 2\n"),
         "twice"),
    Case("train-yaml-bomb", "train {tmp}/c.yaml --dry-run", write("../c.yaml", BOMB + "train: {lr: *h}\n"), "alias"),
    Case("train-yaml-list", "train {tmp}/c.yaml --dry-run", write("../c.yaml", "- train\n"), "mapping"),
    Case("train-yaml-binary", "train {tmp}/c.yaml --dry-run", write("../c.yaml", b"\xff\xfe\x00\x01"), "text"),
    Case("train-yaml-folder", "train {tmp} --dry-run", expect="folder"),
    Case("train-yaml-section-scalar", "train {tmp}/c.yaml --dry-run", write("../c.yaml", "train: 5\n"), "mapping"),
    Case("train-yaml-unknown-section", "train {tmp}/c.yaml --dry-run", write("../c.yaml", "trainn: {}\n"), "train"),
    Case("train-config-missing", "train {tmp}/nothing.yaml --dry-run", expect="does not exist"),
    Case("train-yaml-deep", "train {tmp}/c.yaml --dry-run", write("../c.yaml", "[" * 5000 + "]" * 5000), "deep"),
    # ---- train: places and existing runs --------------------------------------------------------
    Case("train-run-dir-in-file", "train {tiny} --run-dir {file}/run", expect="is a file"),
    Case("train-run-dir-is-file", "train {tiny} --run-dir {file}", expect="is a file"),
    Case("train-run-dir-other-config", "train {tiny} train.lr=1e-3 --run-dir {run}", expect="different config"),
    Case("train-run-config-garbage", "train {tiny} --run-dir {run}", write("config.yaml", b"\x00\xff"), "config"),
    Case("train-run-config-yaml-error", "train {tiny} --run-dir {run}", write("config.yaml", "a: [\n"), "YAML"),
    Case("train-resume-corrupt-state", "train {tiny} --run-dir {run}", unfinished(last_snapshot("state.pt", b"junk")),
         "state.pt"),
    Case("train-resume-foreign-state", "train {tiny} --run-dir {run}",
         unfinished(lambda w: torch.save({"x": 1}, w.snapshots[-1] / "state.pt")), "state.pt"),
    Case("train-resume-corrupt-weights", "train {tiny} --run-dir {run}",
         unfinished(last_snapshot("model.safetensors", b"\x00junk")), "model.safetensors"),
    Case("train-resume-foreign-network", "train {tiny} --run-dir {run}", unfinished(foreign_network), "network"),
    Case("train-resume-meta-empty", "train {tiny} --run-dir {run}", unfinished(last_snapshot("meta.json", "{}")),
         "meta.json"),
    Case("train-resume-meta-binary", "train {tiny} --run-dir {run}", unfinished(last_snapshot("meta.json", b"\xff")),
         "meta.json"),
    Case("train-resume-stray-snapshot", "train {tiny} --run-dir {run}", unfinished(stray_snapshot), "snapshot-backup"),
    Case("train-resume-stats-garbage", "train {tiny} --run-dir {run}", unfinished(append("stats.jsonl", "\x00\x01\n")),
         "stats.jsonl"),
    Case("train-resume-stats-empty-object", "train {tiny} --run-dir {run}",
         unfinished(write("stats.jsonl", "{}\n{}\n")), "kimg"),
    Case("train-snapshots-is-file", "train {tiny} --run-dir {run}",
         unfinished(no_snapshots, write("snapshots", "x")), "snapshots"),
    Case("train-done-garbage", "train {tiny} --run-dir {run}", write("DONE", b"\xff"), "DONE"),
    Case("train-run-dir-in-use", "train {tiny} --run-dir {run}", unfinished(held_by_another_trainer), "in use"),
    Case("train-batch-cannot-fit", "train {tiny} train.batch=100000000 --run-dir {tmp}/new", expect="memory"),
    Case("train-read-only-run", "train {tiny} --run-dir {run}", unfinished(lambda w: w.run.chmod(0o555)),
         "not writable", as_other_user=True),
    Case("train-other-users-run", "train {tiny} --run-dir {run}", unfinished(), "not writable", as_other_user=True),
    *([Case("train-no-cuda", "train {tiny} train.device=cuda --run-dir {tmp}/new", expect="CUDA")] if NO_CUDA else []),
    # ---- sample ---------------------------------------------------------------------------------
    *[Case(f"sample-{flag}-{v}", f"sample {{run}} {flag} {v}", expect=flag) for flag, v in [
        ("--n", "0"), ("--n", "-1"), ("--n", "1000000000000"), ("--seed", "-1"),
        ("--seed", "1000000000000000000000000000000"), ("--steps", "0"), ("--steps", "-5"), ("--steps", "1000000"),
        ("--class", "-1"), ("--n", "abc")]],
    *[Case(f"sample-nfe-{v}", f"sample {{run}} --nfe {v} --n 2", expect="--nfe") for v in ("0", "-3", "nan", "x")],
    Case("sample-steps-and-nfe", "sample {run} --steps 5 --nfe 5 --n 2", expect="not both"),
    Case("sample-steps-over-discrete", "sample {run} --steps 100000 --n 2", expect="steps"),
    *[Case(f"sample-clip-{v}", f"sample {{run}} --clip {v} --n 2", expect="clip") for v in ("foo", "dynamic:2")],
    Case("sample-frame-unknown", "sample {run} --sampler heun --option frame=lambda --n 2", expect="frame"),
    Case("sample-n-cannot-fit", "sample {run} --n 2000000000", expect="memory"),
    Case("sample-seeds-overflow", "sample {run} --seed 4294967295 --n 2", expect="seed"),
    Case("sample-unknown-sampler", "sample {run} --sampler foo --n 2", expect="sampler"),
    Case("sample-unknown-grid", "sample {run} --grid foo --n 2", expect="grid"),
    Case("sample-snapshot-word", "sample {run} --snapshot abc --n 2", expect="snapshot"),
    Case("sample-snapshot-missing", "sample {run} --snapshot 99 --n 2", expect="99"),
    Case("sample-unknown-device", "sample {run} --device tpu --n 2", expect="device"),
    *([Case("sample-no-cuda", "sample {run} --device cuda --n 2", expect="CUDA")] if NO_CUDA else []),
    Case("sample-option-no-value", "sample {run} --option eta --n 2", expect="KEY=VALUE"),
    Case("sample-option-unknown", "sample {run} --option foo=1 --n 2", expect="foo"),
    Case("sample-option-nan", "sample {run} --sampler ddim --option eta=nan --n 2", expect="eta"),
    Case("sample-option-range", "sample {run} --sampler ddim --option eta=2 --n 2", expect="eta"),
    Case("sample-class-unconditional", "sample {run} --class 3 --n 2", expect="conditional"),
    Case("sample-cfg-unconditional", "sample {run} --guidance cfg:2 --n 2", expect="cfg"),
    Case("sample-guidance-negative", "sample {run} --guidance classifier:-1 --n 2", expect="guidance"),
    Case("sample-guidance-unknown", "sample {run} --guidance foo:1 --n 2", expect="guidance"),
    Case("sample-out-in-file", "sample {run} --n 2 --out {file}/x.png", expect="is a file"),
    Case("sample-out-format", "sample {run} --n 2 --out {tmp}/x.foo", expect="format"),
    Case("sample-out-folder", "sample {run} --n 2 --out {tmp}", expect="folder"),
    Case("sample-run-missing", "sample {tmp}/nothing --n 2", expect="not a run directory"),
    Case("sample-run-is-file", "sample {file} --n 2", expect="not a run directory"),
    Case("sample-config-garbage", "sample {run} --n 2", write("config.yaml", b"\x00\xff"), "config.yaml"),
    Case("sample-config-list", "sample {run} --n 2", write("config.yaml", "- 1\n"), "config.yaml"),
    Case("sample-config-nan", "sample {run} --n 2", lambda w: (w.run / "config.yaml").write_text(
        (w.run / "config.yaml").read_text().replace("kimg: 0.032", "kimg: .nan")), "train.kimg"),
    Case("sample-config-unknown-key", "sample {run} --n 2", append("config.yaml", "extra: {a: 1}\n"), "extra"),
    Case("sample-dataset-empty-object", "sample {run} --n 2", write("dataset.json", "{}"), "dataset.json"),
    Case("sample-dataset-empty-file", "sample {run} --n 2", write("dataset.json", ""), "dataset.json"),
    Case("sample-dataset-binary", "sample {run} --n 2", write("dataset.json", b"\xff\x00"), "dataset.json"),
    Case("sample-dataset-bad-shape", "sample {run} --n 2", write("dataset.json", '{"shape": [0, -1], "num_classes": 10}'),
         "shape"),
    Case("sample-dataset-missing", "sample {run} --n 2", lambda w: (w.run / "dataset.json").unlink(), "dataset.json"),
    Case("sample-meta-empty", "sample {run} --n 2", last_snapshot("meta.json", "{}"), "meta.json"),
    Case("sample-meta-kimg-text", "sample {run} --n 2", last_snapshot("meta.json", '{"kimg": "a", "step": 1}'), "kimg"),
    Case("sample-stray-snapshot", "sample {run} --n 2", stray_snapshot, "snapshot-backup"),
    Case("sample-foreign-network", "sample {run} --n 2", foreign_network, "network"),
    Case("sample-corrupt-ema", "sample {run} --n 2", last_snapshot("ema.safetensors", b"\x00garbage"), "ema"),
    Case("sample-ema-missing", "sample {run} --n 2", lambda w: (w.snapshots[-1] / "ema.safetensors").unlink(), "ema"),
    Case("sample-no-snapshots", "sample {run} --n 2", no_snapshots, "snapshot"),
    # ---- list, snr-plot, doctor -----------------------------------------------------------------
    Case("list-unknown-axis", "list foo", expect="axis"),
    Case("list-shape-words", "list networks --shape a,b", expect="--shape"),
    Case("list-shape-zero", "list networks --shape 1,0,0", expect="--shape"),
    Case("snr-unknown", "snr-plot foo --out {tmp}/a.png", expect="dynamics"),
    Case("snr-steps-huge", "snr-plot ddpm:steps=1000000000000 --out {tmp}/a.png", expect="steps"),
    Case("snr-unknown-schedule", "snr-plot ddpm:schedule=foo --out {tmp}/a.png", expect="schedule"),
    Case("snr-option-no-value", "snr-plot ddpm:x --out {tmp}/a.png", expect="KEY=VALUE"),
    Case("snr-sigma-nan", "snr-plot ve:sigma_max=nan --out {tmp}/a.png", expect="sigma_max"),
    Case("snr-out-in-file", "snr-plot ddpm --out {file}/a.png", expect="is a file"),
    Case("snr-out-format", "snr-plot ddpm --out {tmp}/a.foo", expect="format"),
    # ---- calibrate
    Case("calibrate-no-null-studies", "calibrate --null 0", expect="--null"),
    Case("calibrate-null-nan", "calibrate --null nan", expect="--null"),
    Case("calibrate-one-seed", "calibrate --seeds 1", expect="--seeds"),
    Case("calibrate-negative-effect", "calibrate --effect -1", expect="--effect"),
    Case("calibrate-effect-inf", "calibrate --effect inf", expect="--effect"),
    Case("calibrate-missing-study", "calibrate --study {tmp}/nothing.yaml", expect="does not exist"),
    Case("calibrate-unknown-flag", "calibrate --alpha 2", expect="unrecognized"),
    # ---- import / export (diffusers folders)
    Case("import-missing-folder", "import diffusers {tmp}/nothing --run-dir {tmp}/new", expect="not a folder"),
    Case("import-a-file", "import diffusers {file} --run-dir {tmp}/new", expect="not a folder"),
    Case("import-a-run-not-a-model", "import diffusers {run} --run-dir {tmp}/new", expect="config.json"),
    Case("import-kimg-nan", "import diffusers {run} --run-dir {tmp}/new --kimg nan", expect="kimg"),
    Case("import-into-existing-run", "import diffusers {run} --run-dir {run}", expect="not empty"),
    Case("import-unknown-format", "import onnx {run} --run-dir {tmp}/new", expect="invalid choice"),
    Case("export-not-a-run", "export diffusers {tmp} {tmp}/out", expect="not a run directory"),
    Case("export-into-existing-run", "export diffusers {run} {study}", expect="not empty"),
    Case("export-unknown-format", "export onnx {run} {tmp}/out", expect="invalid choice"),
    Case("doctor-run-missing", "doctor {tmp}/nothing", expect="not a run directory"),
    Case("doctor-meta-empty", "doctor {run}", last_snapshot("meta.json", "{}"), "meta.json"),
    Case("doctor-foreign-network", "doctor {run}", foreign_network, "network"),
    Case("doctor-snapshot-word", "doctor {run} --snapshot abc", expect="snapshot"),
    # ---- oracle ---------------------------------------------------------------------------------
    Case("oracle-n-small", "oracle --n 5 --out {tmp}/o", expect="--n"),
    Case("oracle-n-cannot-fit", "oracle --n 1000000000 --out {tmp}/o", expect="memory"),
    Case("oracle-nfe-zero", "oracle --nfe 0 --out {tmp}/o", expect="--nfe"),
    Case("oracle-nfe-words", "oracle --nfe a --out {tmp}/o", expect="--nfe"),
    Case("oracle-jobs-zero", "oracle --jobs 0 --out {tmp}/o", expect="--jobs"),
    Case("oracle-unknown-dynamics", "oracle --dynamics foo --out {tmp}/o", expect="dynamics"),
    Case("oracle-unknown-sampler", "oracle --samplers foo --out {tmp}/o", expect="sampler"),
    Case("oracle-unknown-problem", "oracle --problems foo --out {tmp}/o", expect="problem"),
    Case("oracle-unknown-start", "oracle --start bogus --out {tmp}/o", expect="start"),
    Case("oracle-seed-negative", "oracle --seed -1 --out {tmp}/o", expect="--seed"),
    Case("oracle-out-in-file", "oracle --dynamics ddpm --samplers ddim --nfe 1 --out {file}/o", expect="is a file"),
    # ---- train-classifier -----------------------------------------------------------------------
    Case("clf-no-dataset", "train-classifier", expect="DATASET"),
    Case("clf-unknown-dataset", "train-classifier digitz", expect="digits"),
    Case("clf-batch-zero", "train-classifier digits --batch 0", expect="--batch"),
    Case("clf-epochs-zero", "train-classifier digits --epochs 0", expect="--epochs"),
    Case("clf-lr-nan", "train-classifier digits --lr nan", expect="--lr"),
    Case("clf-lr-zero", "train-classifier digits --lr 0", expect="--lr"),
    Case("clf-resolution-zero", "train-classifier digits --resolution 0", expect="--resolution"),
    Case("clf-option-unknown", "train-classifier digits --option foo=1", expect="foo"),
    Case("clf-seed-negative", "train-classifier digits --seed -1", expect="--seed"),
    Case("clf-out-in-file", "train-classifier digits --epochs 1 --out {file}/c", expect="is a file"),
    Case("clf-unlabelled", "train-classifier toy2d --epochs 1 --out {tmp}/c", expect="labels"),
    Case("clf-noisy-no-out", "train-classifier --noisy {run}", expect="-o"),
    Case("clf-noisy-and-dataset", "train-classifier digits --noisy {run} -o {tmp}/c", expect="not both"),
    Case("clf-untrained-alone", "train-classifier digits --untrained", expect="--noisy"),
    Case("clf-noisy-width-zero", "train-classifier --noisy {run} -o {tmp}/c --width 0", expect="--width"),
    Case("clf-noisy-nowhere", "train-classifier --noisy {tmp}/nothing -o {tmp}/c --steps 1", expect="neither"),
    Case("clf-noisy-device", "train-classifier --noisy {run} -o {tmp}/c --device tpu", expect="device"),
    # ---- evaluate -------------------------------------------------------------------------------
    *[Case(f"evaluate-{flag}-{v}", f"evaluate {{run}} --extractor-path {{clf}} {flag} {v}", expect=flag) for flag, v in [
        ("--n", "1"), ("--n", "1000000000000"), ("--boot", "-1"), ("--steps", "0"), ("--seed", "-1")]],
    Case("evaluate-nfe-zero", "evaluate {run} --extractor-path {clf} --n 4 --nfe 0", expect="--nfe"),
    Case("evaluate-steps-and-nfe", "evaluate {run} --extractor-path {clf} --n 4 --steps 3 --nfe 3", expect="not both"),
    Case("evaluate-clip-unknown", "evaluate {run} --extractor-path {clf} --n 4 --clip foo", expect="clip"),
    Case("evaluate-unknown-metric", "evaluate {run} --extractor-path {clf} --n 4 --metrics foo", expect="metric"),
    Case("evaluate-no-metric", "evaluate {run} --extractor-path {clf} --n 4 --metrics ,", expect="metric"),
    Case("evaluate-snapshots-every0", "evaluate {run} --extractor-path {clf} --n 4 --snapshots every0", expect="K"),
    Case("evaluate-snapshots-words", "evaluate {run} --extractor-path {clf} --n 4 --snapshots abc", expect="snapshots"),
    Case("evaluate-snapshots-missing", "evaluate {run} --extractor-path {clf} --n 4 --snapshots 99", expect="99"),
    Case("evaluate-unknown-device", "evaluate {run} --extractor-path {clf} --n 4 --device tpu", expect="device"),
    Case("evaluate-unknown-sampler", "evaluate {run} --extractor-path {clf} --n 4 --sampler foo", expect="sampler"),
    Case("evaluate-option-unknown", "evaluate {run} --extractor-path {clf} --n 4 --option foo=1", expect="foo"),
    Case("evaluate-cfg-unconditional", "evaluate {run} --extractor-path {clf} --n 4 --guidance cfg:2", expect="cfg"),
    Case("evaluate-unknown-extractor", "evaluate {run} --n 4 --extractor foo", expect="extractor"),
    Case("evaluate-extractor-missing", "evaluate {run} --n 4 --extractor-path {tmp}/nothing", expect="classifier"),
    Case("evaluate-extractor-corrupt", "evaluate {run} --n 4 --extractor-path {tmp}/clf", corrupt_classifier,
         "model.safetensors"),
    Case("evaluate-seeds-overflow", "evaluate {run} --extractor-path {clf} --n 4 --seed 4294967295", expect="seed"),
    Case("evaluate-n-cannot-fit", "evaluate {run} --extractor-path {clf} --n 2000000000", expect="memory"),
    Case("evaluate-metrics-garbage", "evaluate {run} --extractor-path {clf} --n 4",
         append("metrics.jsonl", "\x00\xff garbage\n"), "metrics.jsonl"),
    Case("evaluate-meta-empty", "evaluate {run} --extractor-path {clf} --n 4", last_snapshot("meta.json", "{}"),
         "meta.json"),
    Case("evaluate-dataset-empty", "evaluate {run} --extractor-path {clf} --n 4", write("dataset.json", "{}"),
         "dataset.json"),
    Case("evaluate-metrics-log-folder", "evaluate {run} --extractor-path {clf} --n 4",
         lambda w: ((w.run / "metrics.jsonl").unlink(), (w.run / "metrics.jsonl").mkdir()), "metrics.jsonl"),
    # ---- curves and sample-size -----------------------------------------------------------------
    Case("curves-metrics-garbage", "curves {run}", append("metrics.jsonl", "\x00\xff\xfe garbage\n"), "line 2"),
    Case("curves-metrics-empty-object", "curves {run}", append("metrics.jsonl", "{}\n"), "kimg"),
    Case("curves-metrics-value-text", "curves {run}", append("metrics.jsonl", '{"kimg": 1, "metric": "fid", '
                                                              '"value": "low"}\n'), "value"),
    Case("curves-metrics-not-object", "curves {run}", append("metrics.jsonl", "[1, 2]\n"), "JSON object"),
    Case("curves-no-entries", "curves {run} --metric is", expect="is"),
    Case("curves-out-in-file", "curves {run} --out {file}/c.png", expect="is a file"),
    Case("curves-out-format", "curves {run} --out {tmp}/c.foo", expect="format"),
    Case("curves-run-missing", "curves {tmp}/nothing", expect="nothing"),
    Case("size-ns-small", "sample-size {run} --ns 5", expect="--ns"),
    Case("size-ns-words", "sample-size {run} --ns a", expect="--ns"),
    Case("size-ns-huge", "sample-size {run} --ns 1000000000000", expect="--ns"),
    Case("size-metric-pr", "sample-size {run} --metrics pr --ns 10", expect="pr"),
    Case("size-boot-negative", "sample-size {run} --boot -1", expect="--boot"),
    Case("size-steps-zero", "sample-size {run} --steps 0", expect="--steps"),
    Case("size-out-in-file", "sample-size {run} --ns 10 --extractor-path {clf} --out {file}/s.png", expect="is a file"),
    Case("size-cannot-fit", "sample-size {run} --ns 2000000000 --extractor-path {clf}", expect="memory"),
    # ---- guidance-sweep -------------------------------------------------------------------------
    Case("sweep-scales-words", "guidance-sweep {run} --scales a", expect="--scales"),
    Case("sweep-scales-negative", "guidance-sweep {run} --scales -1", expect="--scales"),
    Case("sweep-scales-nan", "guidance-sweep {run} --scales nan", expect="--scales"),
    Case("sweep-n-zero", "guidance-sweep {run} --n-per-class 0", expect="--n-per-class"),
    Case("sweep-unknown-kind", "guidance-sweep {run} --kind foo", expect="guidance"),
    Case("sweep-steps-zero", "guidance-sweep {run} --steps 0", expect="--steps"),
    Case("sweep-out-in-file", "guidance-sweep {run} --out {file}/g --extractor-path {clf}", expect="is a file"),
    Case("sweep-device", "guidance-sweep {run} --device tpu --extractor-path {clf}", expect="device"),
    Case("sweep-cannot-fit", "guidance-sweep {run} --n-per-class 200000000 --extractor-path {clf}", expect="memory"),
    # ---- study plan: the whole file checked before any work -------------------------------------
    study_case("plan-duplicate-key", GOOD_STUDY + "seeds: [1]\n", "twice"),
    study_case("plan-alias-bomb", GOOD_STUDY + BOMB + "description: *h\n", "alias"),
    study_case("plan-budget-nan", GOOD_STUDY.replace("budget_kimg: 0.1", "budget_kimg: .nan"), "budget_kimg"),
    study_case("plan-budget-negative", GOOD_STUDY.replace("budget_kimg: 0.1", "budget_kimg: -1"), "budget_kimg"),
    study_case("plan-seed-negative", GOOD_STUDY.replace("seeds: [0]", "seeds: [-1]"), "seeds"),
    study_case("plan-seed-repeated", GOOD_STUDY.replace("seeds: [0]", "seeds: [1, 1]"), "repeats"),
    study_case("plan-unknown-key", GOOD_STUDY + "seed: 3\n", "seeds"),
    study_case("plan-unknown-metric", GOOD_STUDY + "evaluation: {metrics: [fidd]}\n", "fid"),
    study_case("plan-unknown-sampler", GOOD_STUDY + "evaluation: {samplers: [{sampler: foo}]}\n", "sampler"),
    study_case("plan-sampler-steps-zero", GOOD_STUDY + "evaluation: {samplers: [{sampler: ddim, steps: 0}]}\n",
               "steps"),
    study_case("plan-sampler-unknown-key", GOOD_STUDY + "evaluation: {samplers: [{samplr: ddim}]}\n", "sampler"),
    study_case("plan-sampler-steps-and-nfe", GOOD_STUDY + "evaluation: {samplers: [{sampler: ddim, steps: 4, nfe: 4}]}\n",
               "not both"),
    study_case("plan-sampler-nfe-zero", GOOD_STUDY + "evaluation: {samplers: [{sampler: ddim, nfe: 0}]}\n", "nfe"),
    study_case("plan-sampler-bad-clip", GOOD_STUDY + "evaluation: {samplers: [{sampler: ddim, clip: foo}]}\n", "clip"),
    study_case("plan-sampler-bad-grid", GOOD_STUDY + "evaluation: {samplers: [{sampler: ddim, grid: foo}]}\n", "grid"),
    study_case("plan-sampler-bad-option", GOOD_STUDY + "evaluation: {samplers: [{sampler: ddim, options: {eta: 3}}]}\n",
               "eta"),
    study_case("plan-options-without-sampler", GOOD_STUDY + "evaluation: {samplers: [{options: {eta: 1}}]}\n",
               "named sampler"),
    study_case("plan-bad-guidance", GOOD_STUDY + "evaluation: {samplers: [{guidance: 'cfg:x'}]}\n", "guidance"),
    study_case("plan-cfg-unconditional", GOOD_STUDY + "evaluation: {samplers: [{guidance: 'cfg:2'}]}\n",
               "conditional"),
    study_case("plan-eval-n-one", GOOD_STUDY + "evaluation: {n: 1}\n", "evaluation.n"),
    study_case("plan-eval-sweep-zero", GOOD_STUDY + "evaluation: {n_sweep: [0]}\n", "n_sweep"),
    study_case("plan-eval-extractor", GOOD_STUDY + "evaluation: {extractor: foo}\n", "extractor"),
    study_case("plan-eval-every-inf", GOOD_STUDY + "evaluation: {every_kimg: .inf}\n", "every_kimg"),
    study_case("plan-eval-seed-negative", GOOD_STUDY + "evaluation: {seed: -1}\n", "evaluation.seed"),
    study_case("plan-eval-unknown-key", GOOD_STUDY + "evaluation: {metric: [fid]}\n", "metrics"),
    study_case("plan-base-nan", GOOD_STUDY.replace("train: {batch: 8}", "train: {batch: 8, lr: .nan}"), "train.lr"),
    study_case("plan-base-typo", GOOD_STUDY.replace("network: {preset: unet-xs}", "network: {preset: unet-xs, "
                                                    "dropuot: 0.1}"), "dropout"),
    study_case("plan-axis-typo", GOOD_STUDY.replace("dynamics.name", "dynamics.nme"), "dynamics"),
    study_case("plan-axis-nan", GOOD_STUDY.replace("dynamics.name: [ddpm, ncsn]", "train.lr: [.nan, 1.0e-3]"), "lr"),
    study_case("plan-description-list", GOOD_STUDY + "description: [a, b]\n", "description"),
    study_case("plan-attempts-zero", GOOD_STUDY + "max_attempts: 0\n", "max_attempts"),
    Case("plan-binary", "study plan {tmp}/s.yaml --no-calibrate", write("../s.yaml", b"\xff\xfe\x00"), "text"),
    study_case("plan-not-mapping", "[1, 2]\n", "mapping"),
    Case("plan-missing", "study plan {tmp}/nothing.yaml --no-calibrate", expect="does not exist"),
    Case("plan-steps-zero", "study plan {tmp}/s.yaml --steps 0", study_file("s.yaml", GOOD_STUDY), "--steps"),
    Case("plan-workers-zero", "study plan {tmp}/s.yaml --workers 0", study_file("s.yaml", GOOD_STUDY), "--workers"),
    Case("plan-gpu-unknown", "study plan {tmp}/s.yaml --no-calibrate --gpu tpu", study_file("s.yaml", GOOD_STUDY),
         "--gpu"),
    # ---- study run, status, report, quickstart --------------------------------------------------
    Case("run-workers-zero", "study run {tmp}/s.yaml --workers 0", study_file("s.yaml", GOOD_STUDY), "--workers"),
    Case("run-stale-nan", "study run {tmp}/s.yaml --stale-after nan", study_file("s.yaml", GOOD_STUDY), "--stale"),
    study_case("run-name-dotdot", GOOD_STUDY.replace("name: fuzz", "name: ../../escape"), "folder",
               "study run {tmp}/s.yaml"),
    study_case("run-name-absolute", GOOD_STUDY.replace("name: fuzz", "name: /tmp/escape"), "folder",
               "study run {tmp}/s.yaml"),
    Case("run-out-in-file", "study run {tmp}/s.yaml --out {file}/o", study_file("s.yaml", GOOD_STUDY), "is a file"),
    Case("run-corrupt-ledger", "study run {tmp}/s.yaml --out {study}", lambda w: (
        study_file("s.yaml", GOOD_STUDY)(w), ledger(b"garbage " * 100)(w)), "ledger"),
    Case("run-ledger-read-only", "study run {tmp}/s.yaml --out {study}", lambda w: (
        study_file("s.yaml", GOOD_STUDY)(w), (w.study / "ledger.sqlite").chmod(0o444)), "not writable",
         as_other_user=True),
    Case("status-corrupt-ledger", "study status {study}", ledger(b"garbage " * 100), "ledger"),
    Case("status-truncated-ledger", "study status {study}", truncated_ledger, "ledger"),
    Case("status-ledger-folder", "study status {study}", lambda w: ((w.study / "ledger.sqlite").unlink(),
                                                                     (w.study / "ledger.sqlite").mkdir()), "ledger"),
    Case("status-folder-without-ledger", "study status {tmp}", expect="ledger"),
    Case("status-metrics-garbage", "study status {study}", study_metrics("\x00\xff\n"), "metrics.jsonl"),
    Case("status-stats-empty-object", "study status {study}", study_stats("{}\n"), "stats.jsonl"),
    Case("status-damaged-row", "study status {study}", damaged_ledger_row, "damaged"),
    Case("report-corrupt-ledger", "report {study} --no-samples", ledger(b"garbage " * 100), "ledger"),
    Case("report-truncated-ledger", "report {study} --no-samples", truncated_ledger, "ledger"),
    Case("report-samples-count", "report {study} --samples 4", expect="--samples"),
    Case("report-no-ledger", "report {tmp} --no-samples", expect="ledger"),
    Case("report-metrics-empty-object", "report {study} --no-samples", study_metrics("{}\n"), "kimg"),
    Case("report-metrics-garbage", "report {study} --no-samples", study_metrics("\xff\xfe\n"), "metrics.jsonl"),
    Case("report-read-only-study", "report {study} --no-samples", lambda w: w.study.chmod(0o555), "not writable",
         as_other_user=True),
    Case("export-not-a-study", "study export {tmp} {tmp}/dest", expect="ledger"),
    Case("export-into-the-study", "study export {study} {study} --no-samples", expect="study output folder"),
    Case("export-dest-is-file", "study export {study} {file} --no-samples", expect="is a file"),
    Case("evaluate-sample-grid-negative", "evaluate {run} --extractor-path {clf} --n 4 --sample-grid -1",
         expect="--sample-grid"),
    Case("export-corrupt-ledger", "study export {study} {tmp}/dest --no-samples", ledger(b"garbage " * 100), "ledger"),
    Case("report-export-without-description", "report {tmp}/exp", lambda w: (
        (w.tmp / "exp").mkdir(), (w.tmp / "exp" / "results.csv").write_text("run\n")), "export.json"),
    Case("report-export-damaged-csv", "report {tmp}/exp", lambda w: (
        (w.tmp / "exp").mkdir(), (w.tmp / "exp" / "results.csv").write_text("run\n"),
        (w.tmp / "exp" / "export.json").write_text('{"label_columns": [], "name": "x", "axes": [], "metrics": []}'),
        (w.tmp / "exp" / "runs.csv").write_text("run,position\n")), "column"),
    Case("report-summary-without-out", "report {tmp}/a {tmp}/b", expect="--out"),
    Case("report-summary-not-an-export", "report {tmp}/a {tmp}/b -o {tmp}/s", lambda w: (
        (w.tmp / "a").mkdir(), (w.tmp / "b").mkdir()), "results.csv"),
    Case("report-summary-of-a-study-folder", "report {study} {tmp}/b -o {tmp}/s", expect="export"),
    Case("report-summary-part-twice", "report {tmp}/a {tmp}/a -o {tmp}/s", lambda w: (
        (w.tmp / "a").mkdir(), (w.tmp / "a" / "results.csv").write_text("run\n")), "twice"),
    Case("report-summary-damaged-part", "report {tmp}/a {tmp}/b -o {tmp}/s", lambda w: [
        ((w.tmp / d).mkdir(), (w.tmp / d / "results.csv").write_text("run\n")) for d in ("a", "b")], "export.json"),
    Case("quickstart-workers-zero", "quickstart --workers 0 --out {tmp}/q", expect="--workers"),
    Case("quickstart-workers-huge", "quickstart --workers 1000000 --out {tmp}/q", expect="--workers"),
    Case("quickstart-out-in-file", "quickstart --out {file}/q", expect="is a file"),
    # ---- the command line itself ----------------------------------------------------------------
    Case("cli-unknown-command", "trian", expect="invalid choice"),
    Case("cli-unknown-flag", "sample {run} --bogus", expect="--bogus"),
    Case("cli-study-no-subcommand", "study", expect="required"),
]


def test_table_is_large_and_covers_every_command() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(CASES) >= 150
    from diffatlas.cli import build_parser
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    commands = set(sub.choices) | {"study plan", "study run", "study status"}
    covered = {" ".join(c.argv.split()[:2]) if c.argv.startswith("study ") else c.argv.split()[0] for c in CASES}
    assert commands - {"study"} <= covered, sorted(commands - covered)


@contextlib.contextmanager
def other_user():
    """Run as another user: effectively 'nobody' when this is root (who may write anywhere). Every module of
    the package is imported first: the interpreter's own folder may be closed to that user."""
    if os.geteuid() != 0:
        yield
        return
    import importlib
    import pkgutil

    import diffatlas
    for m in pkgutil.walk_packages(diffatlas.__path__, "diffatlas."):
        importlib.import_module(m.name)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case: Case, bases, tmp_path) -> None:
    w = make_world(tmp_path / "w", bases)
    if case.prepare:
        case.prepare(w)
    if case.as_other_user:  # the other user may read everything (and reach it), and write nothing
        for p in (*tmp_path.parents, *[q for q in (tmp_path, *sorted(tmp_path.rglob("*"))) if not q.is_symlink()]):
            want = (p.stat().st_mode & 0o7777) | (0o055 if p.is_dir() else 0o044)
            if p.stat().st_mode & 0o7777 != want:
                p.chmod(want)
    before = {"run": tree(w.run), "study": tree(w.study)}
    try:
        with other_user() if case.as_other_user else contextlib.nullcontext():
            rc, out, err = run_cli(case.args(w))
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2, f"exit {rc} (expected 2); stdout: {out[-500:]!r}; stderr: {err[-2000:]!r}"
        assert "Traceback" not in err, err[-3000:]
        assert len(lines) == 1, err[-3000:]
        assert lines[0].startswith("diffatlas: error:"), lines[0]
        assert case.expect.lower() in lines[0].lower(), lines[0]
        assert tree(w.run) == before["run"], "the run folder changed"
        assert tree(w.study) == before["study"], "the study folder changed"
    finally:
        for fd in w.keep:
            os.close(fd)
        for p in (w.run, w.study, w.study / "ledger.sqlite"):  # so that the folders can be cleaned up
            if p.exists():
                p.chmod(0o755 if p.is_dir() else 0o644)


# ---- property-based cases ----------------------------------------------------------------------

def _float_keys() -> list[str]:
    """Every float-valued key of the config: section fields and the float options of the default objects."""
    import dataclasses
    import inspect
    import typing

    from diffatlas import config as C
    from diffatlas.dynamics import DYNAMICS

    keys = []
    for section, cls in C._SECTION_CLASSES.items():
        for f in dataclasses.fields(cls):
            tp = typing.get_type_hints(cls)[f.name]
            if tp is float or float in typing.get_args(tp):
                keys.append(f"{section}.{f.name}")
    for name in ("ddpm", "ve", "vp", "edm"):
        for p in inspect.signature(DYNAMICS.get(name).__init__).parameters.values():
            if isinstance(p.default, float):
                keys.append(f"dynamics.{p.name}@{name}")
    keys += ["network.dropout", "sample.eta@ddim", "sample.S_churn@edm"]
    return keys


FLOAT_KEYS = _float_keys()
NOT_FINITE = st.sampled_from([".nan", "nan", "NaN", ".inf", "inf", "-.inf", "-inf", "1e309", "-1e400"])
FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(key=st.sampled_from(FLOAT_KEYS), value=NOT_FINITE)
def test_every_float_key_refuses_non_finite_values(key: str, value: str) -> None:
    key, _, owner = key.partition("@")
    extra = []
    if owner:
        extra = [f"dynamics.name={owner}"] if key.startswith("dynamics.") else [f"sample.sampler={owner}"]
    rc, _, err = run_cli(["train", "--dry-run", *extra, f"{key}={value}"])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert key.split(".")[-1] in err, err


COUNT_FLAGS = [("sample", "--n", 1, 2**31 - 1), ("sample", "--seed", 0, 2**32 - 1), ("sample", "--steps", 1, 100_000),
               ("evaluate", "--n", 2, 2**31 - 1), ("evaluate", "--boot", 0, 100_000), ("guidance-sweep", "--steps", 1, 100_000),
               ("sample-size", "--seed", 0, 2**32 - 1)]


@FUZZ
@given(flag=st.sampled_from(COUNT_FLAGS), data=st.data())
def test_counts_outside_their_range_are_refused_with_the_range(flag, data, bases) -> None:
    command, name, lo, hi = flag
    value = data.draw(st.one_of(st.integers(max_value=lo - 1), st.integers(min_value=hi + 1),
                                st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not float(v).is_integer())
                                .map(repr)), label="value")
    rc, _, err = run_cli([command, str(bases["run"]), f"{name}={value}"])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert name in err and f"[{lo}, {hi}]" in err, err  # the accepted range is in the message


def _is_record(data: bytes, fields: tuple[str, ...]) -> bool:
    try:
        d = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(d, dict) and all(k in d for k in fields)


@FUZZ
@given(line=st.binary(min_size=1, max_size=60).filter(lambda b: b"\n" not in b))
def test_a_damaged_metrics_line_is_refused_by_every_reader(line: bytes, bases) -> None:
    assume(line.strip() and not _is_record(line, ("kimg", "metric")))
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(bases["run"], run, ignore=shutil.ignore_patterns("snapshots"))
        with open(run / "metrics.jsonl", "ab") as f:
            f.write(line + b"\n" + b'{"kimg": 0.016, "metric": "fid", "value": 3.0}\n')
        before = tree(run)
        rc, _, err = run_cli(["curves", str(run)])
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert "metrics.jsonl" in err and "line 2" in err, err
        assert tree(run) == before


@FUZZ
@given(target=st.sampled_from(["dataset.json", "config.yaml", "meta.json", "DONE"]),
       content=st.one_of(st.binary(max_size=80), st.text(max_size=80).map(str.encode),
                         st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=5),
                                      lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                                          max_size=3))
                         .map(lambda v: json.dumps(v).encode())))
def test_damaged_run_files_are_refused(target: str, content: bytes, bases) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(bases["run"], run, symlinks=True)
        path = sorted((run / "snapshots").iterdir())[-1] / target if target == "meta.json" else run / target
        if target == "DONE":
            (run / "DONE").write_bytes(content)
            argv = ["train", *TINY, "--run-dir", str(run)]
            assume(not _is_record(content, ("kimg", "step")))
        else:
            path.write_bytes(content)
            argv = ["sample", str(run), "--n", "2", "--steps", "1", "--out", str(Path(tmp) / "x.png")]
        before = tree(run)
        rc, out, err = run_cli(argv)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (content, out, err)
        # the message names the damaged file (a config that parses but is not this run's: the mismatch it causes)
        assert target in err or (target == "config.yaml" and "run's config" in err), err
        assert tree(run) == before
