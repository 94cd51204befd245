"""Reports: built from a study folder of fake runs; HTML self-contained, escaped, and rendered by
headless Chromium without broken images."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_study import FAKE_STUDY, fake_work, no_resolve  # noqa: E402

from diffatlas import cli  # noqa: E402
from diffatlas.report import write_report  # noqa: E402
from diffatlas.study.runner import Runner  # noqa: E402
from diffatlas.study.spec import study_from_dict  # noqa: E402


@pytest.fixture(scope="module")
def study_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "out"
    d = {**FAKE_STUDY, "name": "fake <script>alert(1)</script> & co",
         "axes": [{"product": {"dynamics.name": ["ddpm", "ncsn"]}}], "seeds": [0, 1, 2, 3, 4, 5]}
    Runner(study_from_dict(d), out, work=fake_work, resolve=no_resolve).run()
    # one run ships its own sample grid
    rd = sorted((out / "runs").iterdir())[0]
    (rd / "samples").mkdir()
    Image.fromarray((np.random.default_rng(0).random((24, 24)) * 255).astype(np.uint8)).save(rd / "samples" / "grid.png")
    write_report(out)
    return out


def _data_uris(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)]


def test_report_contents_and_escaping(study_out):
    html_text = (study_out / "report.html").read_text()
    md = (study_out / "report.md").read_text()
    assert "<script>" not in html_text and "&lt;script&gt;" in html_text
    for needle in ("Verdicts on the paper", "Final metrics", "Training curves", "Convergence", "Noise schedules", "Samples",
                   "Quality vs sampling cost"):
        assert needle in html_text and needle in md
    # the fake study makes ncsn worse on both metrics; 6 seeds are 6 pairs of trained models (2 samplers each)
    assert re.search(r"DDPM-based beats NCSN-based \(discrete: ddpm vs ncsn\)</td><td class='supported'>supported</td>"
                     r"<td>6</td>", html_text)
    assert "not tested" in html_text and "How each claim is decided" in md and "never dropped" in md
    # no external resources: everything inline
    assert not re.search(r"""(src|href)=['"](?!data:)""", html_text)
    imgs = _data_uris(html_text)
    assert len(imgs) >= 5
    for b in imgs:
        im = Image.open(io.BytesIO(b))
        im.verify()
        assert im.format == "PNG"
    for ref in re.findall(r"\]\((report_files/[^)]+)\)", md):
        assert (study_out / ref).is_file()


def test_report_cli(study_out, capsys):
    assert cli.main(["report", str(study_out), "--no-samples"]) == 0
    assert "report.html" in capsys.readouterr().out
    assert cli.main(["report", str(study_out.parent / "nothing-here")]) == 2


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(study_out, tmp_path):
    shot = tmp_path / "shot.png"
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1200,2000", (study_out / "report.html").resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120)
    assert shot.is_file(), "chromium wrote no screenshot"
    a = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert a.shape == (2000, 1200)
    assert a.std() > 10 and (a < 128).mean() > 0.005  # text, tables and figures, not a blank page


def test_user_strings_are_text_in_figures_and_markdown(tmp_path):
    """Axis values that matplotlib would read as math, and Markdown or HTML in names and labels, are shown
    as they are written."""
    out = tmp_path / "out"
    d = {**FAKE_STUDY, "name": "[click](javascript:alert(1)) *bold*",
         "axes": [{"product": {"dynamics.name": ["ddpm", "ncsn"], "model.weighting": ["$x^$", "<b>|</b>"]}}],
         "seeds": [0, 1]}
    Runner(study_from_dict(d), out, work=fake_work, resolve=no_resolve).run()
    paths = write_report(out, samples=0)
    md = paths["md"].read_text()
    assert "[click](javascript" not in md and "\\[click\\](javascript:alert(1)) \\*bold\\*" in md
    assert "\\$x^\\$" in md and "&lt;b&gt;\\|&lt;/b&gt;" in md and "<b>" not in md
    assert "&lt;b&gt;|&lt;/b&gt;" in paths["html"].read_text()
    assert any(p.name.startswith("curves-") for p in (out / "report_files").iterdir())  # the figures were drawn
