"""Exported studies: `diffatlas study export` writes a study's results as plain files, and the report
built from those files alone (no ledger, no runs, no networks) is the report of the live study, byte
for byte apart from its date line; the verdicts recomputed from the CSV files by anyone are the
report's; bad input is one line and exit 2."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import zlib
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_study import FAKE_STUDY, _write_study, fake_work, no_resolve

from diffatlas import cli
from diffatlas.report import write_report
from diffatlas.report.build import build_report
from diffatlas.report.export import export_study
from diffatlas.study import statistics as S
from diffatlas.study.export import ABSENT, decode, encode, load_export
from diffatlas.study.results import load_results
from diffatlas.study.runner import Runner
from diffatlas.study.spec import load_study

DRAWS = {"n": 100, "count": 3, "seed": 1_000_000}
RICH = {**FAKE_STUDY, "seeds": [0, 1, 2],
        "evaluation": {**FAKE_STUDY["evaluation"], "draws": DRAWS}}


def rich_work(task) -> None:
    """fake_work, then what real runs also write: the newer sampling fields, an n sweep at the last
    snapshot, the independent draws, a guided setting; one run fails with an awkward message."""
    lab = task.labels
    if lab["dynamics.name"] == "ncsn" and lab["seed"] == 2 and lab["model.parameterization"] == "x0":
        raise RuntimeError('boom, "quoted", | piped\nsecond line')
    fake_work(task)
    path = task.run_dir / "metrics.jsonl"
    entries = [json.loads(x) for x in path.read_text().splitlines()]
    ddpm = lab["dynamics.name"] == "ddpm"
    out = []
    for e in entries:
        e = {**e, "grid": "logsnr", "nfe": (5 if ddpm and e["sampler"] == "heun" else e["steps"]),
             "nfe_budget": None, "clip": "auto", "options": {"eta": 0.0} if e["sampler"] == "ddim" else {},
             "setting": f"{e['sampler']} x{e['steps']}", "higher_is_better": e["metric"] == "is", "seed": 0}
        out.append(e)
        out.append({**e, "guidance": "classifier:2", "value": e["value"] - (0.3 if e["metric"] == "fid" else -0.2)})
    last = max(e["kimg"] for e in entries)
    for e in [x for x in out if x["kimg"] == last and x.get("guidance") is None]:
        out.append({**e, "n": 50, "value": e["value"] * 1.1 + 0.01 * lab["seed"]})
        if e["sampler"] == "heun":
            for j in range(DRAWS["count"]):
                out.append({**e, "seed": DRAWS["seed"] + j * DRAWS["n"], "value": e["value"] + 0.013 * (j - 1) + 0.001 * lab["seed"]})
    path.write_text("".join(json.dumps(e) + "\n" for e in out))


def write_grids(run_dir: Path, kimgs: list[float], label: str = "heun x18", guidance: str | None = None,
                seed: int = 0) -> None:
    """What a real evaluation leaves beside its entries: a sample grid per snapshot (random pixels here,
    different per run and snapshot)."""
    from diffatlas.evaluation.run import write_eval_grid
    from diffatlas.rundir import RunDir

    for k in kimgs:
        g = torch.Generator().manual_seed(zlib.crc32(f"{run_dir}|{k}|{label}|{guidance}|{seed}".encode()))
        x = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
        write_eval_grid(RunDir(run_dir), x, kimg=k, snapshot=f"snapshot-{k:09.3f}",
                        label=f"{label} {guidance}" if guidance else label, seed=seed,
                        fields={"sampler": label.split()[0], "steps": 18, "nfe": 35, "guidance": guidance, "n": 100})


def with_grids(work):
    """`work`, then a sample grid for each of the run's snapshots, as evaluate_run writes them."""
    def run(task) -> None:
        work(task)
        kimgs = sorted(json.loads(m.read_text())["kimg"] for m in (task.run_dir / "snapshots").glob("*/meta.json"))
        write_grids(task.run_dir, kimgs)
    return run


def _run(tmp_path: Path, study: dict, work) -> Path:
    out = tmp_path / "out"
    Runner(load_study(_write_study(tmp_path, study)), out, work=work, resolve=no_resolve).run()
    return out


def _undated(text: str) -> list[str]:
    lines = text.splitlines()
    dated = [i for i, line in enumerate(lines) if line.startswith(("Generated ", "<p>Generated "))]
    assert len(dated) == 1
    return [line for i, line in enumerate(lines) if i not in dated]


def _no_sampling(monkeypatch) -> None:
    """Reports read the grids the runs wrote: any sampling of a network fails the test."""
    import diffatlas.sampling
    import diffatlas.samplers

    def refuse(*_a, **_k):
        raise AssertionError("a report sampled a network")

    for mod, name in ((diffatlas.sampling, "sample_run"), (diffatlas.sampling, "generate"), (diffatlas.samplers, "sample")):
        monkeypatch.setattr(mod, name, refuse)


@pytest.mark.parametrize("study,work", [(FAKE_STUDY, with_grids(fake_work)), (RICH, with_grids(rich_work))],
                         ids=["fake", "rich"])
def test_report_from_export_is_the_live_report(tmp_path, monkeypatch, study, work):
    out = _run(tmp_path, study, work)
    _no_sampling(monkeypatch)
    write_report(out)
    live = {name: (out / name).read_text() for name in ("report.md", "report.html")}
    figs = {p.name: p.read_bytes() for p in (out / "report_files").iterdir()}
    dest = tmp_path / "published"
    export_study(out, dest, command="diffatlas study export out published")
    # what the report would need besides the export is gone: ledger, runs, networks
    shutil.rmtree(out)
    assert cli.main(["report", str(dest)]) == 0
    for name in ("report.md", "report.html"):
        assert _undated((dest / name).read_text()) == _undated(live[name]), name
    assert sorted(figs) == sorted(p.name for p in (dest / "report_files").iterdir())
    assert any(n.startswith("samples-") for n in figs)
    for n, png in figs.items():  # every figure, the sample grids included, is the live report's
        assert (dest / "report_files" / n).read_bytes() == png, n
    files = sorted(p.name for p in dest.iterdir())
    assert {"results.csv", "curves.csv", "runs.csv", "study.yaml", "provenance.json", "export.json"} <= set(files)
    assert ("draws.csv" in files) == (study is RICH)
    prov = json.loads((dest / "provenance.json").read_text())
    assert prov["command"] == "diffatlas study export out published"
    assert prov["machine"]["cpus"] >= 1 and prov["machine"]["torch"] == torch.__version__ and prov["date"]
    assert "commit" in prov["code"]


def _plain_records(dest: Path) -> tuple[list[dict], list[dict], list[str]]:
    """Records, sweeps and axes rebuilt with the csv module alone: numbers are numbers, labels text
    (the seed an integer), an empty cell a field not recorded."""
    rows = list(csv.DictReader((dest / "results.csv").open()))
    fixed = {"run", "evaluation", "metric", "value", "kimg", "n", "extractor", "sampler", "grid", "steps", "nfe",
             "nfe_budget", "clip", "guidance", "options", "setting", "sampling", "higher_is_better", "converged_kimg",
             "plateau", "settled", "budget_kimg"}
    label_keys = [k for k in rows[0] if k not in fixed]
    guided = any(r["guidance"] not in ("", "null", "none") for r in rows)
    draws: dict[tuple, dict] = {}
    if (dest / "draws.csv").exists():
        for d in csv.DictReader((dest / "draws.csv").open()):
            x = draws.setdefault((d["run"], d["evaluation"], d["metric"]),
                                 {"n": int(d["n"]), "kimg": float(d["kimg"]), "seeds": [], "values": []})
            x["seeds"].append(int(d["draw_seed"]))
            x["values"].append(float(d["value"]))
    recs = []
    for r in rows:
        # an empty cell: the configuration does not set that axis (e.g. NCSN's levels on a DDPM run)
        labels = {k: (int(r[k]) if k == "seed" else r[k]) for k in label_keys if r[k] != ""}
        labels[S.EVAL_KEY] = r["evaluation"]
        if guided:
            labels["guidance"] = r["guidance"] if r["guidance"] not in ("", "null") else "none"
            labels["sampling"] = r["sampling"] or r["evaluation"]
        rec = {"run": r["run"], "labels": labels, "metric": r["metric"], "final": float(r["value"]),
               "final_kimg": float(r["kimg"]), "converged_kimg": float(r["converged_kimg"]) if r["converged_kimg"] not in ("", "null") else None,
               "plateau": float(r["plateau"]), "settled": r["settled"] == "true",
               "budget_kimg": float(r["budget_kimg"]),
               "higher_is_better": {"true": True, "false": False}.get(r["higher_is_better"])}
        if (r["run"], r["evaluation"], r["metric"]) in draws:
            rec["draws"] = draws[(r["run"], r["evaluation"], r["metric"])]
        recs.append(rec)
    sweeps: dict[tuple, dict] = {}
    if (dest / "sweeps.csv").exists():
        for s in csv.DictReader((dest / "sweeps.csv").open()):
            sweeps.setdefault((s["run"], s["evaluation"]), {}).setdefault(s["metric"], {})[int(s["n"])] = float(s["value"])
    axes = [k for k in label_keys if k != "seed"] + (["guidance"] if guided else [])
    return recs, [{m: d for m, d in by.items() if len(d) >= 2} for by in sweeps.values()
                  if any(len(d) >= 2 for d in by.values())], axes


@pytest.mark.parametrize("study,work", [(FAKE_STUDY, fake_work), (RICH, rich_work)], ids=["fake", "rich"])
def test_verdicts_recomputed_from_the_csv_files_are_the_reports(tmp_path, study, work):
    out = _run(tmp_path, study, work)
    res = load_results(out)
    live = S.verdicts(res.records(), res.axes, res.metrics, budget=res.budget_kimg, sweeps=res.sweeps())
    dest = tmp_path / "published"
    export_study(out, dest, samples=False)
    recs, sweeps, axes = _plain_records(dest)
    assert axes == res.axes and len(recs) == len(res.records())
    again = S.verdicts(recs, axes, res.metrics, budget=float(study["budget_kimg"]), sweeps=sweeps)

    def table(vs):
        return [(v.claim, v.verdict, v.n, None if v.p_adj != v.p_adj else round(v.p_adj, 12), v.evidence) for v in vs]

    assert table(again) == table(live)
    assert any(v.verdict != "not tested" for v in live)
    if study is RICH:  # the IS-stability claim is decided on the exported draws
        assert "draws" in next(r for r in recs if r["metric"] == "is" and "heun" in r["labels"][S.EVAL_KEY])


def test_every_final_number_has_its_measurement_columns(tmp_path):
    out = _run(tmp_path, RICH, rich_work)
    dest = tmp_path / "published"
    export_study(out, dest, samples=False)
    rows = list(csv.DictReader((dest / "results.csv").open()))
    for r in rows:
        for col in ("metric", "value", "kimg", "n", "extractor", "nfe", "sampler", "evaluation", "seed"):
            assert r[col] != "", (col, r)
    heun = [r for r in rows if r["evaluation"] == "heun x8" and r["dynamics.name"] == "ddpm"]
    assert heun and all(r["nfe"] == "5" and r["steps"] == "8" and r["grid"] == "logsnr" and r["clip"] == "auto"
                        and r["nfe_budget"] == "null" for r in heun)
    guided = [r for r in rows if r["guidance"] == "classifier:2"]
    assert guided and all(r["sampling"] == r["evaluation"].rsplit(" ", 1)[0] for r in guided)
    curves = list(csv.DictReader((dest / "curves.csv").open()))
    res = load_results(out)
    assert len(curves) == sum(len(c) for r in res.runs for c in r.curves.values())
    runs = list(csv.DictReader((dest / "runs.csv").open()))
    failed = [r for r in runs if r["status"] == "failed"]
    assert len(failed) == 1 and 'boom, "quoted", | piped' in failed[0]["error"]
    # every run's record of the exported results reads back to the live one
    back = load_export(dest)
    assert [r.labels for r in back.runs] == [r.labels for r in res.runs]
    assert back.records() == res.records() and back.sweeps() == res.sweeps()


@pytest.mark.parametrize("value", ["ddpm", "", "8", "true", "null", "1e3", " 5", "a,b", 'q"t', 8, 8.0, 0.1 + 0.2,
                                   float("inf"), True, None, [1, "x"], {"eta": 0.5}])
def test_cells_read_back_as_the_same_value(value):
    assert type(decode(encode(value))) is type(value) and decode(encode(value)) == value
    assert decode(encode(ABSENT)) is ABSENT


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["study", "export", str(tmp_path / "empty"), str(tmp_path / "dest")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ledger" in err[0] and not (tmp_path / "dest").exists()
    assert cli.main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "results.csv" in err[0]
    out = _run(tmp_path, {**FAKE_STUDY, "seeds": [0]}, fake_work)
    assert cli.main(["study", "export", str(out), str(out)]) == 2
    assert "study output folder" in capsys.readouterr().err
    dest = tmp_path / "published"
    assert cli.main(["study", "export", str(out), str(dest), "--no-samples"]) == 0
    assert "diffatlas report" in capsys.readouterr().out
    (dest / "curves.csv").write_text("run,evaluation\nx,y\n")
    assert cli.main(["report", str(dest)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "curves.csv" in err[0] and "column" in err[0]
    with pytest.raises(Exception, match="ledger"):
        build_report(tmp_path / "empty")


# ---- the committed replication results --------------------------------------------------------------

COMMITTED = Path(__file__).resolve().parent.parent / "results" / "replication-digits"


@pytest.mark.skipif(not (COMMITTED / "results.csv").is_file(), reason="no committed results in this checkout")
def test_committed_report_is_rebuilt_from_the_committed_csvs(tmp_path):
    """`diffatlas report results/replication-digits` reproduces the committed report.md apart from its
    date line: nothing in it is hand-edited."""
    import shutil

    dest = tmp_path / "copy"
    shutil.copytree(COMMITTED, dest)
    (dest / "report.md").unlink()
    assert cli.main(["report", str(dest)]) == 0

    def body(p: Path) -> list[str]:
        return [line for line in p.read_text().splitlines() if not line.startswith("Generated ")]

    assert body(dest / "report.md") == body(COMMITTED / "report.md")


@pytest.mark.skipif(not (COMMITTED / "results.csv").is_file(), reason="no committed results in this checkout")
def test_committed_verdicts_are_recomputed_from_results_csv():
    """The verdict column of the committed report follows from results.csv (and draws.csv) alone,
    read with the csv module, through the statistics the report uses."""
    meta = json.loads((COMMITTED / "export.json").read_text())
    recs, sweeps, axes = _plain_records(COMMITTED)
    again = {v.claim: v.verdict for v in S.verdicts(recs, axes, meta["metrics"], budget=float(meta["budget_kimg"]),
                                                  sweeps=sweeps)}
    md = (COMMITTED / "report.md").read_text()
    table = md.split("## Verdicts on the paper's claims", 1)[1].split("\n## ", 1)[0]
    committed = {}
    for row in table.splitlines():
        cells = [c.strip() for c in row.split("|")]
        if len(cells) > 3 and cells[2] in S.VERDICTS:
            committed[cells[1].replace("\\", "")] = cells[2]
    assert committed and {c.replace("\\", ""): v for c, v in again.items()} == committed
