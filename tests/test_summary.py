"""The replication summary (`diffatlas report PART PART ... -o OUT`) and the report's generated prose:
every claim decided from the parts that test it, from the parts' files alone; 'What we found' and
'Threats to validity' carry the verdicts' and the records' own numbers; bad input is one line."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_study import FAKE_STUDY, _write_study, fake_work, no_resolve

from diffatlas import cli
from diffatlas.errors import UserError
from diffatlas.report.build import build_report
from diffatlas.report.export import export_study
from diffatlas.report.summary import Part, arms_reading, decide, holm_over_parts
from diffatlas.study import statistics as S
from diffatlas.study.export import load_export
from diffatlas.study.results import load_results
from diffatlas.study.runner import Runner
from diffatlas.study.spec import load_study, study_from_dict

RESULTS = Path(__file__).resolve().parent.parent / "results"
ORIGINAL, HARMONISED = RESULTS / "replication-digits", RESULTS / "replication-digits-edm"
CLAIMS = [S.CLAIM_DISCRETE, S.CLAIM_SDE, S.CLAIM_CONVERGENCE, S.CLAIM_GUIDANCE, S.CLAIM_SIZE, S.CLAIM_IS]
committed = pytest.mark.skipif(not ((ORIGINAL / "results.csv").is_file() and (HARMONISED / "results.csv").is_file()),
                               reason="no committed results in this checkout")


def _cells(line: str) -> list[str]:
    return [c.strip().replace("\\", "") for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def _table(md: str, section: str) -> tuple[list[str], dict[str, list[str]]]:
    """A section's first table: header and rows keyed by their first cell."""
    body = md.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in body.splitlines() if line.startswith("|")]
    header = _cells(lines[0])
    return header, {(c := _cells(line))[0]: c for line in lines[2:]}


def _section(md: str, section: str) -> str:
    return md.split(f"## {section}", 1)[1].split("\n## ", 1)[0].replace("\\", "")


def _own_verdicts(dest: Path) -> dict[str, S.Verdict]:
    """A part's verdict table, as its own report computes it, from its files."""
    res = load_export(dest)
    return {v.claim: v for v in S.verdicts(res.records(), res.axes, res.metrics, budget=res.budget_kimg,
                                           sweeps=res.sweeps())}


def _no_sampling(monkeypatch) -> None:
    import diffatlas.sampling

    def refuse(*_a, **_k):
        raise AssertionError("the summary sampled a network")

    monkeypatch.setattr(diffatlas.sampling, "sample_run", refuse)


# ---- the committed parts -----------------------------------------------------------------------------

@committed
def test_summary_of_the_two_digits_arms(tmp_path, monkeypatch):
    """Built from copies of the two committed exports alone: every claim has its row; each part's cell is
    that part's own verdict; a claim a part decides is never 'not tested'; guidance and model size, which
    neither part tests, stay 'not tested' (exactly those two); the arms are recognised and the process
    claims say whether they survive the harmonised arm."""
    parts = tmp_path / "results"
    for src in (ORIGINAL, HARMONISED):
        shutil.copytree(src, parts / src.name, ignore=shutil.ignore_patterns("report*"))
    _no_sampling(monkeypatch)
    out = parts / "replication"
    assert cli.main(["report", str(parts / ORIGINAL.name), str(parts / HARMONISED.name), "-o", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert md.startswith("# Replication summary: replication-digits + replication-digits-edm")
    assert (out / "report.html").read_text().count("<h2>") == md.count("\n## ")

    own = {ORIGINAL.name: _own_verdicts(parts / ORIGINAL.name), HARMONISED.name: _own_verdicts(parts / HARMONISED.name)}
    header, rows = _table(md, "Decisions on the paper's claims")
    assert header[:3] == ["claim", ORIGINAL.name, HARMONISED.name] and header[3] == "decision"
    assert sorted(rows) == sorted(CLAIMS)
    for claim in CLAIMS:
        row = rows[claim]
        for i, part in ((1, ORIGINAL.name), (2, HARMONISED.name)):
            assert row[i].split(";")[0] == own[part][claim].verdict, (claim, part)
            if own[part][claim].verdict not in (S.UNTESTED,):
                assert f"p {own[part][claim].p_adj:.3g}" in row[i]
        tested = [own[p][claim].verdict for p in own if own[p][claim].verdict != S.UNTESTED]
        assert (row[3] == S.UNTESTED) == (not tested), claim
        if tested and len(set(tested)) == 1:
            assert row[3] == tested[0]
    assert {c for c in CLAIMS if rows[c][3] == S.UNTESTED} == {S.CLAIM_GUIDANCE, S.CLAIM_SIZE}

    # the arms: recognised, and the original arm decides where they disagree
    meta = json.loads((out / "summary.json").read_text())
    assert meta["arms"] == {ORIGINAL.name: "original", HARMONISED.name: "harmonised"}
    assert meta["parts"] == ["../replication-digits", "../replication-digits-edm"]
    found = _section(md, "What we found")
    paragraphs = {c: next(p for p in found.split("\n\n") if p.startswith(c + ":")) for c in CLAIMS}
    for claim in (S.CLAIM_DISCRETE, S.CLAIM_SDE):
        vo, vh = own[ORIGINAL.name][claim].verdict, own[HARMONISED.name][claim].verdict
        if vo in ("supported", "contradicted"):
            assert rows[claim][3] == vo
            said = "survives the harmonised arm" if vh == vo else "does not survive the harmonised arm"
            assert said in paragraphs[claim], claim
    # each testing part's effect and p, with their own numbers
    for part, verdicts in own.items():
        v = verdicts[S.CLAIM_DISCRETE]
        c = v.tests[0]
        assert f"In {part}: {v.verdict}. Effect: fid ddpm - ncsn = {c.diff:+.4g}" in paragraphs[S.CLAIM_DISCRETE]
        assert f"p = {v.p_adj:.3g} after the Holm correction" in paragraphs[S.CLAIM_DISCRETE]
    for claim in (S.CLAIM_GUIDANCE, S.CLAIM_SIZE):
        assert "What would decide it:" in paragraphs[claim]
    # links to each part's own report, provenance per part, threats over all parts
    for name in (ORIGINAL.name, HARMONISED.name):
        assert f"](../{name}/report.md)" in md
        prov = json.loads((parts / name / "provenance.json").read_text())
        assert f"{name}: commit {prov['code']['commit'][:12]}" in _section(md, "Provenance")
    threats = _section(md, "Threats to validity")
    for word in ("Scale:", "Metric:", "Sample counts:", "Seeds:", "Sampling budget:", "Sampling defaults:",
                 "Compute:", "Multiplicity:", "not comparable with published FID"):
        assert word in threats, word


def test_holm_over_all_parts_is_holm_over_their_raw_p_values():
    """The stricter family: Holm (1979) over every decidable claim of every part, by hand."""
    def verdict(claim: str, p: float) -> S.Verdict:
        return S.Verdict(claim, S.NO_DIFFERENCE, ["e"], 6, p=p, lean="supported", robust=True)

    a = _part("a", {S.CLAIM_DISCRETE: verdict(S.CLAIM_DISCRETE, 0.02), S.CLAIM_IS: verdict(S.CLAIM_IS, 0.30)})
    b = _part("b", {S.CLAIM_DISCRETE: verdict(S.CLAIM_DISCRETE, 0.01),
                    S.CLAIM_SIZE: S.Verdict(S.CLAIM_SIZE, S.UNTESTED, ["no size axis"], 0)})
    strict, k = holm_over_parts([a, b])
    assert k == 3
    # sorted p 0.01, 0.02, 0.30 -> 3 * 0.01, max(0.03, 2 * 0.02), max(0.04, 0.30)
    assert math.isclose(strict[("b", S.CLAIM_DISCRETE)].p_adj, 0.03)
    assert math.isclose(strict[("a", S.CLAIM_DISCRETE)].p_adj, 0.04)
    assert math.isclose(strict[("a", S.CLAIM_IS)].p_adj, 0.30)
    assert strict[("a", S.CLAIM_DISCRETE)].verdict == "supported" and strict[("a", S.CLAIM_IS)].verdict == S.NO_DIFFERENCE
    assert strict[("b", S.CLAIM_SIZE)].verdict == S.UNTESTED
    assert a.verdicts[S.CLAIM_DISCRETE].verdict == S.NO_DIFFERENCE   # the parts' own verdicts are left alone


# ---- combining verdicts ------------------------------------------------------------------------------

def _part(label: str, verdicts: dict[str, S.Verdict], arm: str | None = None) -> Part:
    return Part(Path(label), label, None, [], verdicts, [], {}, {}, arm)  # type: ignore[arg-type]


def _v(word: str, claim: str = S.CLAIM_SDE) -> S.Verdict:
    return S.Verdict(claim, word, [f"why {word}"], 6 if word != S.UNTESTED else 0)


@pytest.mark.parametrize("words,arms,decision", [
    ((S.UNTESTED, S.UNTESTED), (None, None), S.UNTESTED),
    (("supported", S.UNTESTED), (None, None), "supported"),            # a part that does not test it does not count
    ((S.UNTESTED, "contradicted"), (None, None), "contradicted"),
    ((S.UNDERPOWERED, S.UNTESTED), (None, None), S.UNDERPOWERED),
    (("supported", S.UNDERPOWERED), (None, None), "supported"),        # nor does one that cannot decide
    (("supported", "supported"), ("original", "harmonised"), "supported"),
    (("supported", S.NO_DIFFERENCE), ("original", "harmonised"), "supported"),    # the original arm replicates
    ((S.NO_DIFFERENCE, "supported"), ("original", "harmonised"), S.NO_DIFFERENCE),
    (("supported", "contradicted"), (None, None), S.INCONCLUSIVE),     # disagreeing parts, no arm to decide
    # three parts: the two arms and a part for guidance and size
    ((S.UNTESTED, S.UNTESTED, "supported"), ("original", "harmonised", None), "supported"),
    (("supported", S.NO_DIFFERENCE, S.UNTESTED), ("original", "harmonised", None), "supported"),
    ((S.INCONCLUSIVE, S.INCONCLUSIVE, "supported"), ("original", "harmonised", None), S.INCONCLUSIVE),
])
def test_decision_comes_from_the_parts_that_test_the_claim(words, arms, decision):
    parts = [_part(f"p{i}", {S.CLAIM_SDE: _v(w)}, arm) for i, (w, arm) in enumerate(zip(words, arms))]
    d = decide(S.CLAIM_SDE, parts)
    assert d.verdict == decision
    if decision != S.UNTESTED:
        assert d.testing == [p for p, w in zip(parts, words) if w != S.UNTESTED]
        assert all(p.verdicts[S.CLAIM_SDE].verdict != S.UNTESTED for p in d.basis)


@pytest.mark.parametrize("o,h,said", [
    ("supported", "supported", "survives the harmonised arm (one recipe for every process): it belongs to the process"),
    ("supported", S.NO_DIFFERENCE, "does not survive the harmonised arm: with one recipe for every process no "
                                   "difference is detected, so the original arm's difference belongs to the recipes"),
    ("supported", "contradicted", "reverses under the harmonised recipe"),
    (S.NO_DIFFERENCE, "supported", "appears only under the harmonised recipe"),
    (S.NO_DIFFERENCE, S.NO_DIFFERENCE, "Neither arm reaches a direction"),
    ("supported", S.UNDERPOWERED, "stays open"),
])
def test_arms_say_whether_a_process_verdict_belongs_to_the_process(o, h, said):
    parts = [_part("orig", {S.CLAIM_SDE: _v(o)}, "original"), _part("harm", {S.CLAIM_SDE: _v(h)}, "harmonised")]
    text = arms_reading(S.CLAIM_SDE, parts)
    assert text.startswith(f"Original arm (orig): {o}; harmonised arm (harm): {h}.") and said in text
    assert arms_reading(S.CLAIM_SDE, [parts[0], _part("other", {S.CLAIM_SDE: _v(h)})]) is None


# ---- the per-study report's generated sections ---------------------------------------------------------

@committed
def test_what_we_found_carries_the_verdicts_own_numbers(tmp_path):
    """Each claim's paragraph states its verdict and the effect, interval and Holm p of the test behind it;
    changing the data changes them (nothing in them is fixed text)."""
    dest = tmp_path / "part"
    shutil.copytree(ORIGINAL, dest, ignore=shutil.ignore_patterns("report*"))
    own = _own_verdicts(dest)

    def found() -> dict[str, str]:
        _, sections = build_report(dest)
        text = next(s for s in sections if s.title == "What we found").text[1:]
        return {c: next(t for t in text if t.startswith(c + ":")) for c in CLAIMS}

    paragraphs = found()
    for claim, v in own.items():
        assert paragraphs[claim].startswith(f"{claim}: {v.verdict}")
        if v.verdict == S.UNTESTED:
            assert v.evidence[0] in paragraphs[claim] and "What would decide it:" in paragraphs[claim]
    c = own[S.CLAIM_DISCRETE].tests[0]
    assert (f"fid ddpm - ncsn = {c.diff:+.4g} [95% CI {c.ci[0]:+.4g}, {c.ci[1]:+.4g}]" in paragraphs[S.CLAIM_DISCRETE]
            and f"p = {own[S.CLAIM_DISCRETE].p_adj:.3g}" in paragraphs[S.CLAIM_DISCRETE]
            and f"{c.n_pairs} pairs of trained models" in paragraphs[S.CLAIM_DISCRETE])
    e = own[S.CLAIM_IS].effect
    assert f"= {e.estimate:+.3g} ICC [95% CI {e.ci[0]:+.3g}, {e.ci[1]:+.3g}]" in paragraphs[S.CLAIM_IS]

    # NCSN's FID curves moved towards DDPM's (the final values are the curves' last points): the
    # paragraph follows the data
    rows = list(csv.reader((dest / "curves.csv").open()))
    i_dyn, i_metric, i_value = (rows[0].index(k) for k in ("dynamics.name", "metric", "value"))
    for r in rows[1:]:
        if r[i_dyn] == "ncsn" and r[i_metric] == "fid":
            r[i_value] = repr(float(r[i_value]) - 50.0)
    with (dest / "curves.csv").open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    again = _own_verdicts(dest)[S.CLAIM_DISCRETE]
    assert again.tests[0].diff != c.diff
    assert f"fid ddpm - ncsn = {again.tests[0].diff:+.4g}" in found()[S.CLAIM_DISCRETE]


def facts_work(task) -> None:
    """fake_work, then the records a real run leaves about its scale and compute."""
    fake_work(task)
    rd = task.run_dir
    seed = task.labels["seed"]
    (rd / "network.json").write_text(json.dumps({"preset": "unet-xs", "params": 1234 + seed}))
    (rd / "dataset.json").write_text(json.dumps({"name": "digits", "shape": [1, 8, 8]}))
    (rd / "environment.json").write_text(json.dumps({"device": "cpu", "torch": "2.x"}))
    with open(rd / "stats.jsonl", "a") as f:
        f.write(json.dumps({"kimg": 10.0, "loss": 0.1, "wall_s": 10.0 + seed}) + "\n")


def test_run_facts_travel_with_the_export_into_the_threats(tmp_path):
    study = {**FAKE_STUDY, "seeds": [0, 1, 2]}
    out = tmp_path / "out"
    Runner(load_study(_write_study(tmp_path, study)), out, work=facts_work, resolve=no_resolve).run()
    live = load_results(out)
    assert all(r.facts["params"] == 1234 + r.labels["seed"] and r.facts["data_shape"] == [1, 8, 8]
               and r.facts["finished"] >= r.facts["started"] for r in live.runs)
    dest = tmp_path / "published"
    export_study(out, dest, samples=0)
    back = load_export(dest)
    assert [r.facts for r in back.runs] == [r.facts for r in live.runs]
    threats = next(s for s in build_report(dest)[1] if s.title == "Threats to validity").text
    text = " ".join(threats)
    assert "digits at 1x8x8 (channels x height x width)" in text
    for seed in (0, 1, 2):
        assert f"{1234 + seed:,} parameters" in text
    assert "trained on cpu with torch 2.x" in text
    assert "training took 11 s per run (median" in text     # wall_s 10, 11, 12 per seed, for each configuration
    # an export written before runs.csv carried facts reads back without them
    rows = list(csv.reader(io.StringIO((dest / "runs.csv").read_text())))
    k = rows[0].index("facts")
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([r[:k] + r[k + 1:] for r in rows])
    (dest / "runs.csv").write_text(buf.getvalue())
    assert all(r.facts == {} for r in load_export(dest).runs)
    text = " ".join(next(s for s in build_report(dest)[1] if s.title == "Threats to validity").text)
    assert "parameters not recorded" in text and "are not recorded in these results" in text


# ---- the study file's arm, and bad input -------------------------------------------------------------------

def test_arm_is_an_optional_study_key():
    base = {"name": "s", "base": {}, "seeds": [0]}
    assert study_from_dict(base).arm is None
    assert study_from_dict({**base, "arm": "original"}).arm == "original"
    assert study_from_dict({**base, "arm": "Harmonized"}).arm == "harmonised"
    with pytest.raises(UserError, match="arm"):
        study_from_dict({**base, "arm": "both"})


def _one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for w in words:
        assert w in err[0], (w, err[0])
    return err[0]


@committed
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "summary"
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(ORIGINAL), str(tmp_path / "empty"), "-o", str(out)]) == 2
    _one_line_error(capsys, "results.csv", "empty")
    assert cli.main(["report", str(ORIGINAL), str(tmp_path / "nothing"), "-o", str(out)]) == 2
    _one_line_error(capsys, "not a folder")
    study_out = tmp_path / "study-out"
    study_out.mkdir()
    (study_out / "ledger.sqlite").write_bytes(b"")
    assert cli.main(["report", str(ORIGINAL), str(study_out), "-o", str(out)]) == 2
    _one_line_error(capsys, "study export")
    assert cli.main(["report", str(ORIGINAL), str(HARMONISED)]) == 2
    _one_line_error(capsys, "--out")
    assert cli.main(["report", str(ORIGINAL), str(ORIGINAL), "-o", str(out)]) == 2
    _one_line_error(capsys, "twice")
    assert cli.main(["report", str(ORIGINAL), str(HARMONISED), "-o", str(ORIGINAL)]) == 2
    _one_line_error(capsys, "one of its parts")
    bad = tmp_path / "bad-arm"
    shutil.copytree(HARMONISED, bad, ignore=shutil.ignore_patterns("report*"))
    (bad / "study.yaml").write_text((bad / "study.yaml").read_text() + "arm: maybe\n")
    assert cli.main(["report", str(ORIGINAL), str(bad), "-o", str(out)]) == 2
    _one_line_error(capsys, "arm")
    assert not out.exists()


SUMMARY = RESULTS / "replication"


@pytest.mark.skipif(not (SUMMARY / "summary.json").is_file(), reason="no committed summary in this checkout")
def test_committed_summary_is_rebuilt_from_its_parts(tmp_path, monkeypatch):
    """`diffatlas report PART ... -o results/replication`, run on copies of the parts summary.json names,
    reproduces the committed summary apart from its date line: nothing in it is hand-edited."""
    meta = json.loads((SUMMARY / "summary.json").read_text())
    root = tmp_path / "results"
    names = []
    for rel in meta["parts"]:
        src = (SUMMARY / rel).resolve()
        shutil.copytree(src, root / src.name)
        names.append(str(root / src.name))
    _no_sampling(monkeypatch)
    out = root / SUMMARY.name
    assert cli.main(["report", *names, "-o", str(out)]) == 0

    def body(p: Path) -> list[str]:
        return [line for line in p.read_text().splitlines() if not line.startswith("Generated ")]

    assert body(out / "report.md") == body(SUMMARY / "report.md")
    assert json.loads((out / "summary.json").read_text()) == meta
