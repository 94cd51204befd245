"""Assemble a study report: sections of tables and figures, rendered to Markdown and to one HTML file.

Every string that comes from a config, a label or a path is HTML-escaped in report.html; figures
are embedded as base64 PNG data URIs so the file stands alone. report.md references the same
figures as PNG files in report_files/.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io import atomic_write_bytes, atomic_write_text
from ..rundir import EVAL_GRID_PREFIX, RunDir
from ..study import statistics as S
from ..study.convergence import bootstrap_mean_ci
from ..study.export import load_any
from ..study.results import StudyResults, setting_label
from ..study.spec import short_key
from . import fairness as FA
from . import figures as F
from . import findings as FI
from . import threats as TH
from .tuning import tuning_sections


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    name: str
    png: bytes
    caption: str


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)   # (text, relative address), listed after the text


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:.{digits}g}"


def _config_label(labels: dict, axes: list[str]) -> str:
    return ", ".join(f"{short_key(k)}={labels[k]}" for k in axes if k in labels and k != "guidance") or "base"


def _final_table(res: StudyResults, records: list[dict]) -> Table:
    axes = [a for a in res.axes if a != "guidance"]
    groups: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        key = (_config_label(r["labels"], axes), r["labels"][S.EVAL_KEY])
        groups[key][r["metric"]].append(r["final"])
    header = ["configuration", "evaluation"] + [f"{m} ({'lower' if S.direction(m, records) < 0 else 'higher'} better)" for m in res.metrics] + ["seeds"]
    rows = []
    for (conf, ev), by_metric in groups.items():
        row = [conf, ev]
        n = 0
        for m in res.metrics:
            vals = by_metric.get(m, [])
            if vals:
                mean, lo, hi = bootstrap_mean_ci(vals)
                row.append(f"{_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}]" if len(vals) > 1 else _fmt(mean))
                n = max(n, len(vals))
            else:
                row.append("-")
        rows.append(row + [str(n)])
    return Table(header, rows)


def _convergence_table(res: StudyResults, records: list[dict], metric: str) -> Table:
    axes = [a for a in res.axes if a != "guidance"]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        if r["metric"] == metric:
            groups[(_config_label(r["labels"], axes), r["labels"][S.EVAL_KEY])].append(r)
    rows = []
    for (conf, ev), recs in groups.items():
        pts = [r["converged_kimg"] for r in recs if r["converged_kimg"] is not None]
        mean, lo, hi = bootstrap_mean_ci(pts)
        plateau = float(np.mean([r["plateau"] for r in recs]))
        rows.append([conf, ev, f"{_fmt(mean)} [{_fmt(lo)}, {_fmt(hi)}]" if pts else "not settled", _fmt(plateau),
                     f"{len(pts)}/{len(recs)}"])
    return Table(["configuration", "evaluation", f"kimg to within 5% of the {metric} plateau (95% CI)", "plateau",
                  "settled seeds"], rows)


def sample_grids(res: StudyResults, show: bool = True) -> tuple[list[Figure], list[str]]:
    """One figure per configuration, read from what its runs wrote; nothing is sampled.

    The grid is an evaluation's (RunDir.eval_grids) from the configuration's first run that has one: of
    the last evaluated snapshot, preferring an unguided setting, the study's evaluation seed and its first
    setting. A configuration without any shows its first run's latest `diffatlas sample` PNG, if any, and
    otherwise gets a note. show=False leaves the grids out; their size is the evaluation's
    (evaluation.sample_grid). Returns (figures, notes)."""
    if not show:
        return [], []
    axes = [a for a in res.axes if a != "guidance"]
    ev = res.evaluation or {}
    first = setting_label(ev["samplers"][0]) if ev.get("samplers") else None
    configs: dict[str, list] = {}
    for r in res.runs:
        configs.setdefault(_config_label(r.labels, axes), []).append(r)
    figs: list[Figure] = []
    notes: list[str] = []
    for conf, runs in configs.items():
        found = next(((r, g) for r in runs if (g := RunDir(r.run_dir).eval_grids())), None)
        if found is not None:
            r, grids = found
            png, meta = max(grids, key=lambda g: (g[1]["kimg"], not g[1].get("guidance"),
                                                   (g[1].get("seeds") or [None])[0] == ev.get("seed", 0),
                                                   g[1].get("label") == first, g[0].name))
            nfe = f", NFE {meta['nfe']}" if meta.get("nfe") is not None else ""
            figs.append(Figure(f"samples-{r.id}", png.read_bytes(),
                               f"{conf} (seed {r.labels.get('seed')}): {meta.get('label')}{nfe}, kimg {meta['kimg']:g}, "
                               f"samples of seeds {meta['seeds'][0]}..{meta['seeds'][1]} ({png.name})"))
            continue
        own = next(((r, pngs) for r in runs if (pngs := sorted(p for p in RunDir(r.run_dir).samples_dir.glob("*.png")
                                                           if not p.name.startswith(EVAL_GRID_PREFIX)))), None)
        if own is not None:
            r, pngs = own
            latest = max(pngs, key=lambda p: (p.stat().st_mtime, p.name))
            figs.append(Figure(f"samples-{r.id}", latest.read_bytes(), f"{conf} (seed {r.labels.get('seed')}): {latest.name}"))
            continue
        notes.append(f"{conf}: no sample grid: the evaluation of its runs wrote none (an evaluation that samples "
                     "writes RUN/samples/eval-*.png; `diffatlas sample RUN` writes one for any run)")
    return figs, notes


def _nfe_points(res: StudyResults, metric: str) -> dict[str, list[tuple[float, float]]]:
    """sampler -> [(NFE used, final value)]: each unguided curve of `metric` that reaches its run's last
    evaluated snapshot, at the NFE its final entry spent."""
    pts: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in res.runs:
        curves = {key: c for key, c in r.curves.items() if key[0] == metric and c}
        if not curves:
            continue
        final = max(c[-1][0] for c in curves.values())
        for key, c in curves.items():
            s = r.sampled.get(key) or {}
            if c[-1][0] == final and s.get("nfe") is not None and s.get("guidance") in (None, "none"):
                pts[str(s.get("sampler") or "auto")].append((float(s["nfe"]), float(c[-1][1])))
    return dict(pts)


def _dynamics_configs(res: StudyResults) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for r in res.runs:
        d = r.row.config.get("dynamics") or {}
        opts = d.get("options") or {}
        detail = ", ".join(f"{k}={opts[k]}" for k in ("schedule", "levels", "sigma_max", "steps") if k in opts)
        label = f"{d.get('name')}" + (f" ({detail})" if detail else "")
        out.setdefault(label, d)
    return out


def _verdict_section(verdicts: list[S.Verdict], checks: list[FA.Check] | None = None) -> Section:
    """The verdict table and, below it, each claim's operational definition. `checks`: the fairness
    checks of the comparisons (a claim whose comparison gave its sides unequal sampling is marked)."""
    k = sum(1 for v in verdicts if np.isfinite(v.p_adj))
    text = [f"Each claim of arXiv 2402.13369 is tested on this study's trained models (one seed of one configuration "
            f"is one unit; evaluation settings of one model are averaged, not counted as replicates). p: the claim's "
            f"p-value after the Holm correction over the {k} claim(s) this design can decide; 'underpowered': the design "
            f"cannot reach p < {S.ALPHA} at all (e.g. fewer than {S.min_pairs(S.ALPHA)} seeds); 'not tested': the "
            "study lacks what the claim needs. How each claim is decided:"]
    text += [f"{v.claim}: {v.definition}" for v in verdicts if v.definition]

    def sampling(claim: str) -> str:
        mine = [c for c in checks or () if claim in c.claims]
        if not mine:
            return "-"
        flagged = [c for c in mine if c.flagged]
        if flagged:
            return (f"{FA.FLAG}: unequal sampling in {len(flagged)} of {len(mine)} matched setting(s), see "
                    "'Fairness of the comparisons'")
        return "; ".join(sorted({c.summary() for c in mine}))

    table = Table(["claim", "verdict", "n", "p (Holm)", "evidence", "sampling of the compared sides"],
                  [[v.claim, v.verdict, str(v.n), _fmt(v.p_adj, 3), " | ".join(v.evidence), sampling(v.claim)]
                   for v in verdicts])
    return Section("Verdicts on the paper's claims", text, [table])


def _fairness_section(res: StudyResults, checks: list[FA.Check]) -> Section:
    """How every configuration was sampled, and each comparison's two sides checked for equal sampling."""
    n_flag = sum(1 for c in checks if c.flagged)
    text = ["How each configuration was sampled, from its runs' metric entries at the last evaluated snapshot: the "
            "sampler and its kind (stochastic: fresh noise at every step; ODE: the deterministic probability-flow "
            "ODE), the time grid, the steps, the network evaluations per sample actually spent (NFE used) and the "
            "budget asked for, x0 clipping and the sampler options, each marked as tuned (set explicitly in the "
            f"study's evaluation plan or the run's config) or a default; '{FA.NOT_RECORDED}': the run's entries "
            "predate the field. Where the runs of one configuration differ, every value is shown."]
    sections_tables = []
    rows = FA.sampling_rows(res, _config_label)
    if rows:
        sections_tables.append(Table(FA.SAMPLING_HEADER, rows))
    if checks:
        text.append(f"Each comparison of the statistics (the same pairs of trained models and matched evaluation "
                    f"settings) with the sampling of its two sides. {FA.FLAG}: the sides spent unequal NFE at the same "
                    f"requested setting (e.g. a discrete process with fewer levels than the requested steps), had "
                    f"unequal NFE budgets, used different kinds of sampler, or different x0 clipping: the difference "
                    f"measured may be the sampling's, not the models'. {n_flag} of {len(checks)} flagged.")
        sections_tables.append(Table(FA.CHECK_HEADER, FA.check_rows(checks)))
    elif res.runs:
        text.append("No comparison between configurations was formed, so none is checked.")
    return Section("Fairness of the comparisons", text, sections_tables)


def analyse(res: StudyResults, seed: int = 0) -> tuple[list[dict], list[S.Verdict], list[S.Comparison], list[FA.Check]]:
    """A study's records, its verdict table, every pairwise comparison and the fairness checks of both:
    what a report (and the replication summary) is written from."""
    records = res.records()
    verdicts = S.verdicts(records, res.axes, res.metrics, budget=res.budget_kimg, sweeps=res.sweeps(), seed=seed)
    comps = S.all_pairwise(records, [a for a in res.axes], res.metrics, seed=seed) if records else []
    checks = FA.check_comparisons(records, comps + [t for v in verdicts for t in v.tests if t.axis in res.axes],
                                  FA.claim_map(verdicts, res.axes))
    return records, verdicts, comps, checks


def seed_count(res: StudyResults) -> int:
    return len({str(r.labels.get("seed")) for r in res.runs if r.labels.get("seed") is not None})


def build_report(out: str | Path | StudyResults, samples: bool = True, seed: int = 0) -> tuple[str, list[Section]]:
    """Collect results and statistics into sections. Returns (study name, sections). `out`: a study
    output folder, an exported one (study.export: its files alone) or StudyResults already read."""
    res = out if isinstance(out, StudyResults) else load_any(out)
    records, verdicts, comps, checks = analyse(res, seed)
    metrics = res.metrics
    primary = next((m for m in ("fid", "is") if m in metrics), metrics[0] if metrics else None)
    sections: list[Section] = []

    done = sum(1 for r in res.runs if r.row.status == "done")
    failed = [r for r in res.runs if r.row.status == "failed"]
    overview = Section("Overview", [f"{len(res.runs)} runs ({done} done, {len(failed)} failed); axes: "
                                    f"{', '.join(res.axes) or 'none'}; metrics: {', '.join(metrics) or 'none'} "
                                    f"at n = {res.n}; training budget {res.budget_kimg or '-'} kimg."])
    if failed:
        overview.tables.append(Table(["run", "labels", "error"], [[r.id, json.dumps(r.labels), r.row.error or ""] for r in failed]))
    sections.append(overview)

    seeds = seed_count(res)
    sections.append(Section("What we found", ["One paragraph per claim of arXiv 2402.13369, written from the verdict "
                                              "table below: its verdict, its effect with a 95% interval, its "
                                              "corrected p-value and what it means."] +
                            FI.what_we_found(verdicts, seeds or None)))
    sections.append(_verdict_section(verdicts, checks))
    sections.append(Section("Threats to validity", ["What limits these verdicts, from the study's own design and "
                                                    "records."] + TH.threats(res, records, verdicts, checks)))
    sections.append(_fairness_section(res, checks))
    sections += tuning_sections(res.out, Section, Table)  # a study with `tune`: its tuning.json

    if records:
        sections.append(Section("Final metrics", ["Mean over seeds at the last evaluated snapshot, with a 95% bootstrap interval."],
                                [_final_table(res, records)]))
        flagged = {(c.axis, c.a, c.b, m) for c in checks if c.flagged for m in c.metrics}
        if comps:
            sections.append(Section("Pairwise comparisons", [
                "Every pair of values of every axis on every metric, over pairs of trained models (each model reduced to "
                "its mean over the evaluation settings both sides share). p: paired t-test, Holm-corrected over this "
                f"table; a direction also needs the sign-flip test below {S.ALPHA}. Smallest detectable d_z: at "
                f"{S.POWER:.0%} power and Holm's strictest level."], [Table(
                ["axis", "a", "b", "metric", "mean a - b", "95% CI", "d_z [95% CI]", "p (Holm)", "sign-flip p", "pairs",
                 "smallest detectable d_z", "better", "sampling"],
                [[c.axis, str(c.a), str(c.b), c.metric, _fmt(c.diff), f"[{_fmt(c.ci[0])}, {_fmt(c.ci[1])}]",
                  f"{_fmt(c.dz, 3)} [{_fmt(c.dz_ci[0], 3)}, {_fmt(c.dz_ci[1], 3)}]", _fmt(c.p_adj, 3), _fmt(c.p_signflip, 3),
                  str(c.n_pairs), _fmt(c.detectable, 3) if np.isfinite(c.detectable) else "none (too few pairs)",
                  {"a": str(c.a), "b": str(c.b), "none": "no detectable difference", "underpowered": "underpowered"}[c.verdict],
                  f"{FA.FLAG}: unequal, see 'Fairness of the comparisons'"
                  if (c.axis, str(c.a), str(c.b), c.metric) in flagged else "no flag"]
                 for c in comps])]))
        eff_rows = []
        for axis in res.axes:
            for m in metrics:
                for e in S.axis_effect(records, axis, m, seed=seed):
                    eff_rows.append([axis, str(e["value"]), m, _fmt(e["mean"]), f"[{_fmt(e['low'])}, {_fmt(e['high'])}]", str(e["seeds"])])
                for e in S.axis_effect(records, axis, m, value="converged_kimg", seed=seed):
                    eff_rows.append([axis, str(e["value"]), f"{m} convergence kimg", _fmt(e["mean"]),
                                     f"[{_fmt(e['low'])}, {_fmt(e['high'])}]", str(e["seeds"])])
        if eff_rows:
            sections.append(Section("Effect of each axis", ["Mean over seeds (and over the other axes) per axis value."],
                                    [Table(["axis", "value", "quantity", "mean", "95% CI", "seeds"], eff_rows)]))

    curves = Section("Training curves", ["Metric against training progress, per axis (line: mean; band: min..max over runs)."])
    evals = sorted({ev for r in res.runs for (_, ev) in r.curves})
    for m in metrics:
        for ev in evals:
            png = F.curves_per_axis(res.runs, res.axes, m, ev)
            if png:
                curves.figures.append(Figure(f"curves-{m}-{ev}", png, f"{m} vs kimg, {ev}"))
    if curves.figures:
        sections.append(curves)
    if primary and records:
        sections.append(Section("Convergence", ["The first kimg from which the curve stays within 5% of its plateau "
                                                "(median of the last 3 evaluations); 95% bootstrap interval across seeds."],
                                [_convergence_table(res, records, primary)]))
    if primary:
        png = F.metric_vs_nfe(_nfe_points(res, primary), primary)
        if png:
            sections.append(Section("Quality vs sampling cost", [], [], [Figure("nfe", png, f"final {primary} vs NFE per sampler")]))
    png = F.log_snr_plot(_dynamics_configs(res))
    if png:
        sections.append(Section("Noise schedules", ["log-SNR and sigma/alpha of each run's forward process."], [],
                                [Figure("logsnr", png, "log-SNR(t) per dynamics")]))
    if res.sample_grids is not None and samples:  # an exported study: the grids its export carries
        grids = [Figure(name, path.read_bytes(), caption) for name, path, caption in res.sample_grids[0]]
        notes = list(res.sample_grids[1])
    else:
        grids, notes = sample_grids(res, samples)
    if grids or notes:
        sections.append(Section("Samples", notes, [], grids))
    return res.name, sections


# ---- rendering -------------------------------------------------------------------------------

def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]


# Characters that Markdown (and the HTML it may carry) would read as markup; user strings (study names,
# axis values, labels, errors) are written with them escaped, so report.md shows them as text.
_MD_ESCAPES = str.maketrans({**{c: "\\" + c for c in "\\`*_[]|~$"}, "<": "&lt;", ">": "&gt;", "&": "&amp;"})


_MD_LIST_NUMBER = re.compile(r"^(\d+)([.)])")


def markdown_text(text: object) -> str:
    """`text` as literal Markdown: markup characters escaped, one line, no block syntax at its start."""
    out = " ".join(str(text).translate(_MD_ESCAPES).split())
    if out[:1] in ("#", "+", "-", "="):
        return "\\" + out
    return _MD_LIST_NUMBER.sub(r"\1\\\2", out)


def _href(address: str) -> str:
    return urllib.parse.quote(address.replace("\\", "/"), safe="/.-_~#")


def render_markdown(name: str, sections: list[Section], figure_dir: str, title: str = "Study report") -> str:
    cell = markdown_text

    lines = [f"# {cell(title)}: {cell(name)}", "", f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.", ""]
    for s in sections:
        lines += [f"## {cell(s.title)}", ""]
        lines += [cell(t) + "\n" for t in s.text]
        if s.links:
            lines += [f"- [{cell(text)}]({_href(address)})" for text, address in s.links] + [""]
        for t in s.tables:
            lines.append("| " + " | ".join(cell(h) for h in t.header) + " |")
            lines.append("|" + "---|" * len(t.header))
            lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in t.rows]
            lines.append("")
        for f in s.figures:
            lines += [f"![{cell(f.caption)}]({figure_dir}/{_safe_name(f.name)}.png)", ""]
    return "\n".join(lines)


_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.supported { background: #d8f5d8; } td.contradicted { background: #f8d4d4; }
td.inconclusive, td.no-detectable-difference, td.underpowered { background: #fbf3d0; } td.not-tested { background: #eee; }
td.flag { background: #f8d4d4; font-weight: bold; }
figure { display: inline-block; margin: 0.5em; } figcaption { font-size: 0.8em; color: #555; }
img { max-width: 100%; image-rendering: pixelated; }
"""


def render_html(name: str, sections: list[Section], title: str = "Study report") -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{e(title)}: {e(name)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}: {e(name)}</h1>",
             f"<p>Generated {e(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>"]
    for s in sections:
        parts.append(f"<h2>{e(s.title)}</h2>")
        parts += [f"<p>{e(t)}</p>" for t in s.text]
        if s.links:
            parts.append("<ul>" + "".join(f"<li><a href='{e(_href(address), quote=True)}'>{e(text)}</a></li>"
                                          for text, address in s.links) + "</ul>")
        for t in s.tables:
            parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in t.header) + "</tr>")
            for row in t.rows:
                cells = []
                for c in row:
                    cls = c.replace(" ", "-") if c in S.VERDICTS else "flag" if c.startswith(FA.FLAG + ":") else ""
                    cells.append(f"<td class='{cls}'>{e(c)}</td>" if cls else f"<td>{e(c)}</td>")
                parts.append("<tr>" + "".join(cells) + "</tr>")
            parts.append("</table>")
        for f in s.figures:
            data = base64.b64encode(f.png).decode("ascii")
            parts.append(f"<figure><img alt='{e(f.caption, quote=True)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{e(f.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out: str | Path, samples: bool = True, seed: int = 0) -> dict[str, Path]:
    """Write <out>/report.md (+ report_files/*.png) and the self-contained <out>/report.html; `out` is a
    study output folder or an exported one (study.export)."""
    out = Path(out)
    name, sections = build_report(out, samples=samples, seed=seed)
    fig_dir = out / "report_files"
    fig_dir.mkdir(exist_ok=True)
    for s in sections:
        for f in s.figures:
            atomic_write_bytes(fig_dir / f"{_safe_name(f.name)}.png", f.png)
    atomic_write_text(out / "report.md", render_markdown(name, sections, "report_files"))
    atomic_write_text(out / "report.html", render_html(name, sections))
    return {"md": out / "report.md", "html": out / "report.html"}
