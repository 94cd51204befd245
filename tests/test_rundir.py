"""RunDir: one type for a run directory's layout and records."""

from __future__ import annotations

import json
import shutil

import pytest

from diffatlas.errors import UserError
from diffatlas.rundir import DatasetInfo, RunDir, RunInfo
from diffatlas.sampling import load_run


def test_a_trained_run_reads_back_through_its_type(tiny_run, tiny_overrides):
    from diffatlas.config import load_config, resolve

    rd = RunDir(str(tiny_run))
    assert rd.path == tiny_run and rd.done and rd.metrics_file == tiny_run / "metrics.jsonl"
    assert rd.config() == resolve(load_config(None, tiny_overrides))
    assert rd.dataset() == DatasetInfo((1, 8, 8), 10, "digits", "train", 1500)   # the train split
    snaps = rd.snapshots()
    assert [s.parent for s in snaps] == [rd.snapshots_dir] * len(snaps) and len(snaps) == 2
    assert [t["kimg"] for t in rd.stats()] == sorted(t["kimg"] for t in rd.stats())
    info = rd.info(snaps[-1])
    assert info == RunInfo(rd.config(), (1, 8, 8), 10, snaps[-1])
    run = load_run(tiny_run)   # a loaded run carries the same fields
    assert (run.cfg, run.shape, run.snapshot) == (info.cfg, info.shape, info.snapshot) and run.num_classes is None


def test_a_folder_that_is_not_a_run_and_a_damaged_record_are_one_line(tiny_run, tmp_path):
    with pytest.raises(UserError, match="is not a run directory"):
        RunDir(tmp_path).config()
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    (copy / "dataset.json").write_text(json.dumps({"name": "digits", "shape": [1, 8, 8], "num_classes": 0}))
    with pytest.raises(UserError, match="num_classes=0") as e:
        RunDir(copy).dataset()
    assert "\n" not in str(e.value)
