"""The report's fairness section: every configuration's sampling listed; comparisons whose two sides
spent unequal NFE or used different kinds of sampler flagged (Markdown and HTML); entries of older
runs without the new fields still reported; the sample grids read from the runs, never sampled."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_study import FAKE_STUDY, fake_work, no_resolve  # noqa: E402

from diffatlas.report import write_report  # noqa: E402
from diffatlas.report import fairness as FA  # noqa: E402
from diffatlas.report.build import build_report  # noqa: E402
from diffatlas.study import statistics as S  # noqa: E402
from diffatlas.study.runner import Runner  # noqa: E402
from diffatlas.study.spec import study_from_dict  # noqa: E402

STUDY = {**FAKE_STUDY, "axes": [{"product": {"dynamics.name": ["ddpm", "ncsn"]}}], "seeds": [0, 1, 2, 3, 4, 5],
         "evaluation": {"metrics": ["fid", "is"], "n": 100, "every_kimg": 5,
                        "samplers": [{"sampler": "ddim", "steps": 8}]}}


def _study(tmp_path: Path, mutate, **extra) -> Path:
    """A fake study of ddpm vs ncsn whose metrics.jsonl entries `mutate(entry, labels)` rewrites."""
    def work(task):
        fake_work(task)
        path = task.run_dir / "metrics.jsonl"
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        path.write_text("".join(json.dumps(mutate(e, task.labels)) + "\n" for e in lines))

    out = tmp_path / "out"
    Runner(study_from_dict({**STUDY, **extra}), out, work=work, resolve=no_resolve).run()
    return out


def _new_fields(e: dict, nfe: int, eta: float, clip: str = "auto") -> dict:
    return {**e, "grid": "logsnr", "nfe": nfe, "nfe_budget": None, "clip": clip, "options": {"eta": eta},
            "setting": f"{e['sampler']} x{e['steps']}"}


def _fairness(md: str) -> str:
    return md.split("## Fairness of the comparisons", 1)[1].split("\n## ", 1)[0]


def _flagged_cells(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("|") and "FLAG" in line]


def _verdict_row(md: str, claim_start: str) -> str:
    return next(line for line in md.splitlines() if line.startswith("| " + claim_start))


def test_unequal_nfe_at_the_same_requested_setting_is_flagged(tmp_path):
    # ddpm has 5 levels: asked for 8 DDIM steps it spends 5 network evaluations, ncsn 8
    out = _study(tmp_path, lambda e, lab: _new_fields(e, 5 if lab["dynamics.name"] == "ddpm" else 8, 0.0))
    paths = write_report(out, samples=0)
    md, html = paths["md"].read_text(), paths["html"].read_text()
    sec = _fairness(md)
    # the per-configuration listing: sampler and kind, grid, steps, NFE used, budget, clipping, options
    assert "| dynamics=ddpm | ddim x8 | ddim (ODE) | logsnr | 8 | 5 | none (steps) | auto | defaults: eta=0 | 6 |" in sec
    assert "| dynamics=ncsn | ddim x8 | ddim (ODE) | logsnr | 8 | 8 | none (steps) | auto | defaults: eta=0 | 6 |" in sec
    assert "FLAG: unequal NFE: ddpm 5 vs ncsn 8 at the same requested setting (ddpm spent fewer" in sec
    assert "1 of 1 flagged" in sec
    assert "| DDPM-based beats NCSN-based (discrete: ddpm vs ncsn) | FLAG" in sec  # the claim the comparison feeds
    assert "FLAG: unequal sampling in 1 of 1" in _verdict_row(md, "DDPM-based beats NCSN-based (discrete")
    assert "<td class='flag'>FLAG: unequal NFE: ddpm 5 vs ncsn 8" in html
    pairwise = md.split("## Pairwise comparisons", 1)[1].split("\n## ", 1)[0]
    assert pairwise.count("FLAG: unequal") == 2  # fid and is


def test_mixed_sampler_kinds_are_flagged(tmp_path):
    # same sampler name and NFE, but ddpm's DDIM runs with eta = 1 (ancestral noise), ncsn's deterministically
    out = _study(tmp_path, lambda e, lab: _new_fields(e, 8, 1.0 if lab["dynamics.name"] == "ddpm" else 0.0))
    md = write_report(out, samples=0)["md"].read_text()
    sec = _fairness(md)
    assert "ddim (stochastic (DDIM eta=1))" in sec and "ddim (ODE)" in sec
    assert "FLAG: different kind of sampler: ddpm stochastic (DDIM eta=1) vs ncsn ODE" in sec
    assert not any("unequal NFE" in line for line in _flagged_cells(sec))


def test_equal_sampling_gets_no_flag_and_explicit_options_are_tuned(tmp_path):
    out = _study(tmp_path, lambda e, lab: _new_fields(e, 8, 0.5),
                 base={**FAKE_STUDY["base"], "sample": {"options": {"eta": 0.5}}})
    paths = write_report(out, samples=0)
    md, html = paths["md"].read_text(), paths["html"].read_text()
    assert not _flagged_cells(md) and "class='flag'" not in html
    sec = _fairness(md)
    assert "0 of 1 flagged" in sec and "same NFE, same kind of sampler" in sec
    assert "tuned: eta=0.5 (run config)" in sec
    assert "same NFE, same kind of sampler" in _verdict_row(md, "DDPM-based beats NCSN-based (discrete")


def test_entries_of_older_runs_without_the_fields(tmp_path):
    def old(e, lab):  # no grid, nfe, nfe_budget, clip or options at all
        return {k: v for k, v in e.items() if k not in ("nfe", "grid", "options")}

    out = _study(tmp_path, old)
    md = write_report(out, samples=0)["md"].read_text()
    sec = _fairness(md)
    assert "| dynamics=ddpm | ddim x8 | ddim (unknown) | not recorded | 8 | not recorded | not recorded | not recorded | " \
           "not recorded | 6 |" in sec
    assert not _flagged_cells(md) and "0 of 1 flagged" in sec
    assert "| NFE not recorded, kind of sampler unknown |" in sec  # nothing to compare is not called equal


def test_a_clip_mismatch_and_a_budget_mismatch_are_flagged():
    def rec(dyn, seed, **sampled):
        return {"run": f"{dyn}{seed}", "labels": {"dynamics.name": dyn, "seed": seed, S.EVAL_KEY: "heun nfe20"},
                "metric": "fid", "final": 1.0 + (dyn == "ncsn") + 0.1 * seed, "sampled": {"sampler": "heun", **sampled}}

    records = [rec("ddpm", s, nfe=19, nfe_budget=20, clip="static") for s in range(3)] + \
              [rec("ncsn", s, nfe=19, nfe_budget=19, clip="none") for s in range(3)]
    comps = S.all_pairwise(records, ["dynamics.name"], ["fid"])
    (check,) = FA.check_comparisons(records, comps)
    assert check.flags == ["unequal NFE budget: ddpm 20 vs ncsn 19", "different x0 clipping: ddpm static vs ncsn none"]
    # the same records with equal settings: no flag
    for r in records:
        r["sampled"] = {"sampler": "heun", "nfe": 19, "nfe_budget": 20, "clip": "none"}
    assert not FA.check_comparisons(records, S.all_pairwise(records, ["dynamics.name"], ["fid"]))[0].flagged


def test_guidance_is_matched_on_the_sampler_and_flagged_when_it_costs_more_nfe():
    recs = []
    for s in range(3):
        for g, nfe in (("none", 18), ("cfg:2", 36)):
            ev = "heun x18" if g == "none" else "heun x18 cfg:2"
            recs.append({"run": f"r{s}", "labels": {"seed": s, S.EVAL_KEY: ev, "guidance": g, "sampling": "heun x18"},
                         "metric": "fid", "final": 1.0 + 0.1 * s + (g != "none"),
                         "sampled": {"sampler": "heun", "nfe": nfe}})
    (check,) = FA.check_comparisons(recs, S.all_pairwise(recs, ["guidance"], ["fid"]))
    assert check.setting == "heun x18" and check.flagged and "unequal NFE" in check.flags[0]


def test_sampler_kinds():
    assert FA.sampler_kind("ancestral", {}) == "stochastic (ancestral)"
    assert FA.sampler_kind("langevin", None).startswith("stochastic")
    assert FA.sampler_kind("heun", {}) == FA.sampler_kind("ddim", {"eta": 0.0}) == "ODE"
    assert FA.sampler_kind("edm", {"S_churn": 80}).startswith("stochastic")
    assert FA.sampler_kind("edm", {"S_churn": 0}) == "ODE"
    assert FA.sampler_kind("something-new", {}) == "unknown"
    assert FA.sampler_kind("ddim", None) == "unknown"  # options not recorded: eta unknown


def test_options_set_in_the_evaluation_plan_are_tuned():
    plan = {"samplers": [{"sampler": "ddim", "steps": 10}, {"sampler": "ddim", "steps": 10, "options": {"eta": 0.3}}]}
    tuned = FA.describe({"sampler": "ddim", "steps": 10, "options": {"eta": 0.3}}, plan, {})
    assert tuned["options"] == "tuned: eta=0.3 (evaluation plan)"
    default = FA.describe({"sampler": "ddim", "steps": 10, "options": {"eta": 0.0}}, plan, {})
    assert default["options"] == "defaults: eta=0"
    assert FA.describe({"sampler": "heun", "steps": 18, "options": {}}, plan, {})["options"] == "none (defaults)"
    assert FA.describe({}, plan, {})["nfe"] == FA.NOT_RECORDED


def test_sample_grids_are_read_from_the_runs_never_sampled(tmp_path, monkeypatch):
    """The Samples section shows, per configuration, the grid its first run's evaluation wrote for the
    last evaluated snapshot (unguided, the study's seed and first setting preferred over the others);
    a run without one shows its own `diffatlas sample` PNG, else a note; no network is sampled."""
    from test_export import _no_sampling, write_grids

    from diffatlas.study.results import load_results

    out = _study(tmp_path, lambda e, lab: e)
    _no_sampling(monkeypatch)
    res = load_results(out)
    first = {}
    for r in res.runs:
        first.setdefault(r.labels["dynamics.name"], r)
    ddpm, ncsn = first["ddpm"], first["ncsn"]
    write_grids(ddpm.run_dir, [5.0, 10.0], label="ddim x8")                 # the one to show: 10 kimg, unguided
    write_grids(ddpm.run_dir, [10.0], label="ddim x8", guidance="classifier:2")
    write_grids(ddpm.run_dir, [10.0], label="ddim x8", seed=5000)          # an independent draw
    write_grids(ddpm.run_dir, [10.0], label="heun x18")                    # a later setting
    shown = ddpm.run_dir / "samples" / "eval-kimg10-seed0-ddim_x8.png"
    _, sections = build_report(out)
    samples = next(s for s in sections if s.title == "Samples")
    assert [f.png for f in samples.figures] == [shown.read_bytes()]
    assert "ddim x8, NFE 35, kimg 10, samples of seeds 0..3" in samples.figures[0].caption
    assert len(samples.text) == 1 and samples.text[0].startswith("dynamics=ncsn: no sample grid")
    own = ncsn.run_dir / "samples" / "snapshot-10-heun-18-seed0.png"  # `diffatlas sample` wrote this one
    own.parent.mkdir()
    own.write_bytes(b"\x89PNG\r\n\x1a\nown")
    _, sections = build_report(out)
    samples = next(s for s in sections if s.title == "Samples")
    assert [f.png for f in samples.figures] == [shown.read_bytes(), own.read_bytes()] and not samples.text
    _, sections = build_report(out, samples=False)
    assert not any(s.title == "Samples" for s in sections)