"""scripts/compare_exports.py: the check that a re-run study reproduces its committed numbers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_exports.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("compare_exports", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def export(folder: Path, rows: list[tuple[str, str, float]]) -> Path:
    folder.mkdir()
    (folder / "results.csv").write_text("run,seed,evaluation,metric,value,kimg,n\n" + "".join(
        f"{r},0,ddim nfe10,{m},{v!r},24.0,1000\n" for r, m, v in rows))
    (folder / "curves.csv").write_text("run,evaluation,metric,n,kimg,value\n" + "".join(
        f"{r},ddim nfe10,{m},1000,{k},{v * k / 24!r}\n" for r, m, v in rows for k in (12.0, 24.0)))
    return folder


def test_identical_exports_pass_and_say_so(tool, tmp_path, capsys):
    rows = [("a1", "fid", 105.25), ("a1", "is", 6.5), ("b2", "fid", 181.0)]
    assert tool.main([str(export(tmp_path / "old", rows)), str(export(tmp_path / "new", rows))]) == 0
    out = capsys.readouterr().out
    assert "results.csv: 3 numbers of 2 runs in both, 3 identical; largest difference 0 absolute" in out
    assert "curves.csv: 6 numbers of 2 runs in both, 6 identical" in out


def test_a_difference_fails_unless_within_the_tolerance(tool, tmp_path, capsys):
    old = export(tmp_path / "old", [("a1", "fid", 100.0), ("b2", "fid", 50.0)])
    new = export(tmp_path / "new", [("a1", "fid", 101.0), ("b2", "fid", 50.0), ("c3", "fid", 7.0)])
    assert tool.main([str(old), str(new)]) == 1
    out = capsys.readouterr().out
    assert "results.csv: 2 numbers of 2 runs in both, 1 identical; largest difference 1 absolute, 0.0099 relative " \
           "(at a1, ddim nfe10, fid, 24.0, 1000)" in out
    assert "only in " + str(new) + ": 1" in out
    assert tool.main([str(old), str(new), "--tolerance", "0.01"]) == 0


def test_no_shared_run_is_not_a_reproduction(tool, tmp_path, capsys):
    old = export(tmp_path / "old", [("a1", "fid", 100.0)])
    new = export(tmp_path / "new", [("z9", "fid", 100.0)])
    assert tool.main([str(old), str(new)]) == 1
    assert "nothing was reproduced" in capsys.readouterr().out


def test_a_folder_without_an_export_is_one_line_and_exit_2(tool, tmp_path, capsys):
    old = export(tmp_path / "old", [("a1", "fid", 100.0)])
    assert tool.main([str(old), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "diffatlas study export" in err
