"""A metric is one function and its registration: defined here, in the test file, it is evaluated by
`evaluate_run`, accepted by study files, given its direction by the statistics and shown by the
report, with no other edit to the package."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_study import FAKE_STUDY, fake_work, no_resolve  # noqa: E402

from diffatlas import evaluation as E  # noqa: E402
from diffatlas.data import load_dataset  # noqa: E402
from diffatlas.metrics import METRICS, MetricContext, register_metric, save_classifier, train_classifier  # noqa: E402
from diffatlas.report import write_report  # noqa: E402
from diffatlas.study import statistics as S  # noqa: E402
from diffatlas.study.runner import Runner  # noqa: E402
from diffatlas.study.spec import study_from_dict  # noqa: E402


@pytest.fixture
def top_logit(monkeypatch):
    """`top_logit`, lower is better (the direction a default would get wrong), registered for one test."""
    monkeypatch.setattr(METRICS, "_entries", dict(METRICS._entries))

    @register_metric("top_logit", "mean of the extractor's largest logit per sample (lower is better)",
                     higher_is_better=False, role="quality")
    def _top_logit(ctx: MetricContext) -> list[dict]:
        return [ctx.record("top_logit", float(ctx.fake_logits.max(axis=1).mean()), "mean largest logit")]

    return _top_logit


def test_registration_fields_reach_every_reader(top_logit):
    assert METRICS.get("top_logit") is top_logit and top_logit.produces == ("top_logit",)
    assert S.direction("top_logit") == -1
    assert METRICS.get("pr").produces == ("precision", "recall")
    with pytest.raises(ValueError, match="already yielded by"):
        register_metric("precision", "a second metric named like pr's records", higher_is_better=True)
    with pytest.raises(ValueError, match="role must be one of"):
        register_metric("x", "a metric of an unknown role", higher_is_better=True, role="beauty")


def test_a_new_metric_is_evaluated_on_a_run(top_logit, tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFATLAS_CACHE", str(tmp_path / "cache"))
    tr, te = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    x, y = tr.get_batch(torch.arange(len(tr)))
    xt, yt = te.get_batch(torch.arange(len(te)))
    ext, info = train_classifier(x, y, xt, yt, epochs=1, seed=0, dataset="digits")
    clf = save_classifier(tmp_path / "clf", ext, info)
    out = E.evaluate_run(tiny_run, metrics=("fid", "top_logit"), extractor_path=clf, snapshots="last",
                         sampler="ddim", steps=3, n=16, device="cpu", log=None)
    (rec,) = [e for e in out if e["metric"] == "top_logit"]
    assert rec["higher_is_better"] is False and rec["extractor"] == "classifier" and rec["n"] == 16
    assert np.isfinite(rec["value"]) and rec["what"] == "mean largest logit"
    again = E.evaluate_run(tiny_run, metrics=("top_logit",), extractor_path=clf, snapshots="last",
                           sampler="ddim", steps=3, n=16, device="cpu", log=None)
    assert again == [rec]   # logged once, read back like any other metric


def test_a_new_metric_drives_a_study_its_verdicts_and_its_report(top_logit, tmp_path):
    """The fake runs give NCSN the lower top_logit (fake_work's higher-is-better shape): with the
    registered direction (lower is better) NCSN is the better process, so DDPM-beats-NCSN is contradicted."""
    out = tmp_path / "out"
    d = {**FAKE_STUDY, "axes": [{"product": {"dynamics.name": ["ddpm", "ncsn"]}}], "seeds": [0, 1, 2, 3, 4, 5],
         "evaluation": {**FAKE_STUDY["evaluation"], "metrics": ["top_logit"]}}
    Runner(study_from_dict(d), out, work=fake_work, resolve=no_resolve).run()
    write_report(out, samples=0)
    text = (out / "report.md").read_text()
    assert "| top\\_logit (lower better) |" in text   # the results table's header (Markdown-escaped)
    row = next(line for line in text.splitlines() if line.startswith("| DDPM-based beats NCSN-based (discrete"))
    assert "contradicted" in row, row
