"""The replication summary: one report over several exported studies (parts), deciding every claim.

    diffatlas report results/replication-digits results/replication-digits-edm -o results/replication

Each part is a folder `diffatlas study export` wrote; the summary is written from those files alone
(OUT/report.md, OUT/report.html and OUT/summary.json, which lists the parts so the summary can be
rebuilt). Per part it recomputes the verdict table exactly as the part's own report does
(report.build.analyse), then per claim:

* the claim x part table: each part's verdict, effect and p (Holm within that part's table);
* a combined decision from the parts that test the claim ("not tested" never counts): the verdict
  the deciding parts agree on; where they disagree, the original arm's verdict (the arm that
  replicates the paper's recipes), else "inconclusive"; only underpowered parts: "underpowered";
* where an original and a harmonised arm both test a claim, generated words on whether the verdict
  survives the harmonised arm (it belongs to the process) or not (to its recipe);
* the same decisions under Holm over every claim of every part (a stricter family), said alongside.

Arms: a study's optional `arm` key (study.spec); else the words "original" or "harmonised" in its
name or description; else a part whose base sets one model.parameterization and model.weighting for
every run, with the same axes as a part that does not, is the harmonised arm of that part.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..io import atomic_write_text, read_json, read_yaml
from ..study import statistics as S
from ..study.export import load_export
from ..study.results import StudyResults
from ..study.spec import ARMS, parse_arm
from . import fairness as FA
from . import findings as FI
from . import threats as TH
from .build import Section, Table, analyse, render_html, render_markdown, seed_count

CLAIMS = (S.CLAIM_DISCRETE, S.CLAIM_SDE, S.CLAIM_CONVERGENCE, S.CLAIM_GUIDANCE, S.CLAIM_SIZE, S.CLAIM_IS)
PROCESS_CLAIMS = (S.CLAIM_DISCRETE, S.CLAIM_SDE)   # claims about a process, where an arm separates it from its recipe
DECISIVE = ("supported", "contradicted", S.NO_DIFFERENCE, S.INCONCLUSIVE)
DIRECTIONS = ("supported", "contradicted")


@dataclass
class Part:
    """One exported study, analysed as its own report analyses it."""

    path: Path
    label: str
    res: StudyResults
    records: list[dict]
    verdicts: dict[str, S.Verdict]
    checks: list[FA.Check]
    study: dict
    provenance: dict
    arm: str | None = None
    arm_why: str = ""

    @property
    def family(self) -> int:
        return sum(1 for v in self.verdicts.values() if math.isfinite(v.p_adj))


def check_export(path: str | Path) -> Path:
    """`path` as an export folder, or a one-line UserError saying what it is instead."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{str(p)!r} is not a folder; give folders that `diffatlas study export` wrote")
    if (p / "ledger.sqlite").exists():
        raise UserError(f"{str(p)!r} is a study output folder, not an export; the summary is built from exports "
                        f"alone: run `diffatlas study export {p} DEST` and give DEST")
    if not (p / "results.csv").is_file():
        raise UserError(f"{str(p)!r} holds no exported results (no results.csv); give folders that "
                        "`diffatlas study export` wrote")
    return p


def load_part(path: str | Path, seed: int = 0) -> Part:
    """Read an export folder and compute its verdicts; UserError (one line) if it is not one."""
    p = check_export(path)
    res = load_export(p)   # no results.csv or damaged files: one line naming the file
    records, verdicts, _, checks = analyse(res, seed)
    study: dict = {}
    if (p / "study.yaml").is_file():
        loaded = read_yaml(p / "study.yaml", "exported study file", "export the study again")
        if not isinstance(loaded, dict):
            raise UserError(f"{str(p / 'study.yaml')!r} is not a study mapping; export the study again")
        study = loaded
    prov: dict = {}
    if (p / "provenance.json").is_file():
        prov = read_json(p / "provenance.json", "export provenance", "export the study again")
    part = Part(p, res.name, res, records, {v.claim: v for v in verdicts}, checks, study, prov)
    arm = parse_arm(study.get("arm"))
    if arm:
        part.arm, part.arm_why = arm, "its study file's `arm`"
    else:
        words = f"{study.get('name', res.name)} {study.get('description', '')}".lower()
        found = [a for a, pattern in (("harmonised", r"harmoni[sz]ed"), ("original", r"\boriginal\b"))
                 if re.search(pattern, words)]
        if len(found) == 1:
            part.arm, part.arm_why = found[0], f"the word '{found[0]}' in its study's name or description"
    return part


def _pins_recipe(study: dict) -> bool:
    model = (study.get("base") or {}).get("model") or {}
    varied = json.dumps(study.get("axes") or [])
    return ("parameterization" in model and "weighting" in model and "model.parameterization" not in varied
            and "model.weighting" not in varied)


def recognise_arms(parts: Sequence[Part]) -> None:
    """Parts without an arm: one whose base pins the recipe (model.parameterization and weighting), with
    the axes of a part that does not, is that part's harmonised arm and the other its original arm."""
    for h in parts:
        if h.arm or not h.study or not _pins_recipe(h.study):
            continue
        twins = [o for o in parts if o is not h and o.study and o.arm in (None, "original")
                 and not _pins_recipe(o.study) and o.study.get("axes") == h.study.get("axes")]
        if twins:
            h.arm = "harmonised"
            h.arm_why = (f"its base sets one parameterization and loss weighting for every run, with the axes of "
                         f"{', '.join(o.label for o in twins)}")
            for o in twins:
                if o.arm is None:
                    o.arm, o.arm_why = "original", f"the part whose recipe {h.label} harmonises"


def load_parts(paths: Sequence[str | Path], seed: int = 0) -> list[Part]:
    if len(paths) < 2:
        raise UserError("a replication summary needs at least two exported studies")
    seen: set[Path] = set()
    for p in paths:
        rp = Path(p).resolve()
        if rp in seen:
            raise UserError(f"{str(p)!r} is given twice; give each exported study once")
        seen.add(rp)
        check_export(p)   # every part before the first is analysed
    parts = [load_part(p, seed) for p in paths]
    names = [p.label for p in parts]
    for part in parts:
        if names.count(part.label) > 1:
            part.label = f"{part.label} ({part.path.name})"
    recognise_arms(parts)
    return parts


# ---- combining the parts -------------------------------------------------------------------------

@dataclass
class Decision:
    claim: str
    verdict: str
    basis: list[Part]          # the parts the verdict is taken from
    testing: list[Part]        # every part whose row is not "not tested"
    why: str                   # how the decision was reached, in words


def _cell_verdict(part: Part, claim: str, verdicts: dict[tuple[str, str], S.Verdict] | None = None) -> S.Verdict:
    return verdicts[(str(part.path), claim)] if verdicts is not None else part.verdicts[claim]


def decide(claim: str, parts: Sequence[Part], verdicts: dict[tuple[str, str], S.Verdict] | None = None) -> Decision:
    """The combined decision on one claim (see the module docstring). `verdicts`: (part path, claim) ->
    verdict to use instead of each part's own (e.g. under Holm over every part)."""
    def v(p: Part) -> S.Verdict:
        return _cell_verdict(p, claim, verdicts)

    testing = [p for p in parts if v(p).verdict != S.UNTESTED]
    decisive = [p for p in testing if v(p).verdict in DECISIVE]
    if not testing:
        return Decision(claim, S.UNTESTED, [], [], "no part tests it")
    if not decisive:
        return Decision(claim, S.UNDERPOWERED, testing, testing,
                        f"every part that tests it is underpowered ({', '.join(p.label for p in testing)})")
    words = {v(p).verdict for p in decisive}
    names = ", ".join(p.label for p in decisive)
    if len(words) == 1:
        how = f"decided by {names}" if len(decisive) == 1 else f"the parts that decide it agree ({names})"
        return Decision(claim, words.pop(), decisive, testing, how)
    original = [p for p in decisive if p.arm == "original"]
    if original and len({v(p).verdict for p in original}) == 1:
        return Decision(claim, v(original[0]).verdict, original, testing,
                        f"the parts disagree ({'; '.join(f'{p.label}: {v(p).verdict}' for p in decisive)}); the "
                        f"original arm ({', '.join(p.label for p in original)}), which replicates the paper's "
                        "recipes, decides")
    return Decision(claim, S.INCONCLUSIVE, decisive, testing,
                    f"the parts disagree ({'; '.join(f'{p.label}: {v(p).verdict}' for p in decisive)})")


def arms_reading(claim: str, parts: Sequence[Part]) -> str | None:
    """Whether the original arm's verdict survives the harmonised arm, in words; None without both arms."""
    orig = [p for p in parts if p.arm == "original" and p.verdicts[claim].verdict != S.UNTESTED]
    harm = [p for p in parts if p.arm == "harmonised" and p.verdicts[claim].verdict != S.UNTESTED]
    if not orig or not harm:
        return None
    o, h = orig[0], harm[0]
    vo, vh = o.verdicts[claim], h.verdicts[claim]
    process = claim in PROCESS_CLAIMS
    owner = ("it belongs to the process, not to its recipe" if process else "it holds under both recipes")
    head = f"Original arm ({o.label}): {vo.verdict}; harmonised arm ({h.label}): {vh.verdict}."
    if vo.verdict in (S.UNDERPOWERED,) or vh.verdict in (S.UNDERPOWERED,):
        return head + " One arm cannot reach a verdict, so whether the verdict belongs to the process or to its recipe stays open."
    if vo.verdict in DIRECTIONS and vo.verdict == vh.verdict:
        return head + f" The verdict survives the harmonised arm (one recipe for every process): {owner}."
    if vo.verdict in DIRECTIONS and vh.verdict in DIRECTIONS:
        return head + (" The direction reverses under the harmonised recipe: the recipe, not the process, decides "
                       "which side wins." if process else " The direction reverses: the verdict depends on the recipe.")
    if vo.verdict in DIRECTIONS:
        det = FI.detectable_text(vh)
        return head + (" The verdict does not survive the harmonised arm: with one recipe for every process no "
                       "difference is detected, so the original arm's difference belongs to the recipes, not to the "
                       "processes" if process else " The verdict does not survive the harmonised recipe: it depends "
                       "on the recipe") + (f" (or is smaller than the harmonised arm detects: {det})" if det else "") + "."
    if vh.verdict in DIRECTIONS:
        return head + (" A difference appears only under the harmonised recipe: the original recipes hid a "
                       "difference between the processes." if process else
                       " A verdict appears only under the harmonised recipe: it depends on the recipe.")
    return head + " Neither arm reaches a direction."


def holm_over_parts(parts: Sequence[Part], alpha: float = S.ALPHA) -> tuple[dict[tuple[str, str], S.Verdict], int]:
    """Every part's verdicts re-decided with Holm over all decidable claims of all parts together.
    Returns ((part path, claim) -> verdict, size of that family)."""
    cells = [(p, v) for p in parts for v in p.verdicts.values()]
    family = [(p, v) for p, v in cells if v.decidable]
    adjusted = S.holm([v.p for _, v in family])
    out: dict[tuple[str, str], S.Verdict] = {}
    for p, v in cells:
        out[(str(p.path), v.claim)] = v
    for (p, v), pa in zip(family, adjusted):
        w = dataclasses.replace(v, evidence=list(v.evidence), verdict=v.undecided)
        out[(str(p.path), v.claim)] = w.decide(pa, alpha)
    return out, len(family)


# ---- the report ----------------------------------------------------------------------------------

def _cell(v: S.Verdict) -> str:
    if v.verdict == S.UNTESTED:
        return v.verdict
    p = f"p {v.p_adj:.3g}" if math.isfinite(v.p_adj) else "no p"
    eff = FI.short_effect(v)
    return f"{v.verdict}; {eff}; {p}" if eff != "-" else f"{v.verdict}; {p}"


def _commit(prov: dict) -> str:
    code = prov.get("code") or {}
    c = code.get("commit")
    if not c:
        return "commit not recorded"
    return f"commit {str(c)[:12]}" + (" (with uncommitted changes)" if code.get("dirty") else "")


def _machine(prov: dict) -> str:
    m = prov.get("machine") or {}
    if not m:
        return "machine not recorded"
    bits = [str(m.get("platform") or "?")]
    if m.get("cpus"):
        bits.append(f"{m['cpus']} CPUs")
    if m.get("torch"):
        bits.append(f"torch {m['torch']}")
    bits.append(f"CUDA {m['cuda']}" if m.get("cuda") else "no CUDA")
    return ", ".join(bits)


def provenance_line(part: Part) -> str:
    prov = part.provenance
    date = f"exported {prov['date']}" if prov.get("date") else "export date not recorded"
    devices = sorted({r.facts["device"] + (f" ({r.facts['gpu']})" if r.facts.get("gpu") else "")
                      for r in part.res.runs if r.facts.get("device")})
    trained = f"trained on {', '.join(devices)}" if devices else "training device not recorded"
    return f"{part.label}: {_commit(prov)}, {date} on {_machine(prov)}; {trained}; {TH.wall_time_text(part.res)}."


def _relative(target: Path, start: Path) -> str:
    try:
        return os.path.relpath(target.resolve(), start.resolve())
    except ValueError:  # another drive (Windows)
        return str(target.resolve())


def _merge(texts: Sequence[tuple[str, str]]) -> list[str]:
    """One paragraph if every part says the same, else one per part, each named."""
    if len({t for _, t in texts}) == 1:
        return [f"(every part) {texts[0][1]}"]
    return [f"{label}: {t}" for label, t in texts]


def _changed(claim: str, parts: Sequence[Part], holm_all: dict[tuple[str, str], S.Verdict]) -> str:
    """The parts whose verdict on `claim` changes under Holm over every part, in words ('' if none)."""
    out = []
    for p in parts:
        own, strict = p.verdicts[claim], holm_all[(str(p.path), claim)]
        if strict.verdict != own.verdict:
            out.append(f"{p.label}'s verdict becomes {strict.verdict} (p {strict.p_adj:.3g})")
    return "; ".join(out)


def build_summary(paths: Sequence[str | Path], out: str | Path, seed: int = 0) -> tuple[str, list[Section], list[Part]]:
    """The summary's sections from the exported studies `paths` (written into `out`: links are relative to it)."""
    out = Path(out)
    parts = load_parts(paths, seed)
    name = " + ".join(p.label for p in parts)
    holm_all, k_all = holm_over_parts(parts)
    decisions = {c: decide(c, parts) for c in CLAIMS}
    strict = {c: decide(c, parts, holm_all) for c in CLAIMS}
    sections: list[Section] = []

    rows = []
    for p in parts:
        seeds = seed_count(p.res)
        rows.append([p.label, str(p.study.get("description") or "-"),
                     f"{p.arm} ({p.arm_why})" if p.arm else "none (not an arm of a replication)",
                     f"{len(p.res.runs)} runs, {seeds} seeds", str(p.family)])
    links = []
    for p in parts:
        report = p.path / "report.md"
        note = "" if report.is_file() else " (not built yet: run `diffatlas report` on the part)"
        links.append((f"{p.label}: its own report{note}", _relative(report, out)))
    sections.append(Section("Parts", [
        f"{len(parts)} exported studies, each analysed exactly as its own report analyses it (the same records, "
        "verdicts and corrections). Arm: original (each process trained with its paper's recipe) or harmonised "
        "(one recipe for every process), and how it was recognised. Each part's own report:"],
        [Table(["part", "description", "arm", "size", "claims it decides"], rows)], links=links))

    text = [
        "Each part's cell: its verdict, the claim's effect with its 95% interval, and its p-value after the Holm "
        "correction over the claims that part can decide (as in its own report). Decision: from the parts that test "
        "the claim ('not tested' does not count): the verdict they agree on; where they disagree, the original "
        "arm's, which replicates the paper's recipes (the harmonised arm then says whether it belongs to the "
        "process or to its recipe); else 'inconclusive'; 'underpowered' where every testing part is.",
        f"Multiplicity: each part corrects within its own verdict table. As a stricter check, the column 'under "
        f"Holm over all parts' re-decides every claim with the Holm correction over all {k_all} decidable claims of "
        f"all {len(parts)} parts together and says whether the decision stands.",
    ]
    header = ["claim"] + [p.label for p in parts] + ["decision", "under Holm over all parts", "how decided"]
    table_rows = []
    for c in CLAIMS:
        d, sd = decisions[c], strict[c]
        if d.verdict == S.UNTESTED:
            strict_cell = "-"
        else:
            strict_cell = "stands" if sd.verdict == d.verdict else f"becomes {sd.verdict}"
            strict_cell += "".join(f"; {p.label}: {w.verdict}, p {w.p_adj:.3g}" for p in d.testing
                                   if math.isfinite((w := holm_all[(str(p.path), c)]).p_adj))
        table_rows.append([c] + [_cell(p.verdicts[c]) for p in parts] + [d.verdict, strict_cell, d.why])
    sections.append(Section("Decisions on the paper's claims", text, [Table(header, table_rows)]))

    found = ["One paragraph per claim: the decision, then what each part that tests it found (its verdict, effect "
             "with its 95% interval, p after its own Holm correction, and what it means), and for two arms whether "
             "the verdict survives the harmonised one."]
    for c in CLAIMS:
        d = decisions[c]
        para = [f"{c}: {d.verdict}; {d.why}."]
        if d.verdict == S.UNTESTED:
            reasons = []
            for p in parts:
                r = p.verdicts[c].evidence[0] if p.verdicts[c].evidence else "the study lacks what the claim needs"
                reasons.append(f"{p.label}: {r}")
            need = FI.NEEDS[c].format(k=S.min_pairs(S.ALPHA))
            para.append(f"No part tests it ({'; '.join(reasons)}). What would decide it: {need}.")
        else:
            for p in d.testing:
                v = p.verdicts[c]
                para.append(f"In {p.label}: {FI.claim_paragraph(v, p.family, seed_count(p.res) or None, named=False)}")
            reading = arms_reading(c, parts)
            if reading:
                para.append(reading)
            changed = _changed(c, d.testing, holm_all)
            if strict[c].verdict != d.verdict or changed:
                para.append(f"Under Holm over all {k_all} decidable claims of all parts the decision "
                            + ("stands" if strict[c].verdict == d.verdict else f"becomes {strict[c].verdict}")
                            + (f", but {changed}" if changed else "")
                            + (", so whether the verdict survives the harmonised arm depends on that correction"
                               if reading and any(p.arm == "harmonised" and p.label in changed for p in d.testing)
                               else "") + ".")
        found.append(" ".join(para))
    sections.append(Section("What we found", found))

    threats = ["What limits these decisions, from each part's design and records."]
    for fn in (TH.scale_text, TH.extractor_text, TH.samples_text):
        threats += _merge([(p.label, fn(p.res)) for p in parts])
    threats += _merge([(p.label, TH.seeds_text(p.res, list(p.verdicts.values()))) for p in parts])
    threats += _merge([(p.label, TH.nfe_text(p.res, p.checks)) for p in parts])
    threats += _merge([(p.label, TH.defaults_text(p.res)) for p in parts])
    conv = [(p.label, t) for p in parts if (t := TH.convergence_text(p.res, p.records))]
    if conv:
        threats += _merge(conv)
    threats += _merge([(p.label, TH.compute_text(p.res)) for p in parts])
    threats.append("Multiplicity: each part's p-values are Holm-corrected over the claims that part decides; the "
                   f"decisions are also checked under Holm over all {k_all} decidable claims of all parts (see "
                   "'Decisions on the paper's claims'). Parts trained on different data or recipes are separate "
                   "experiments: a claim decided in one is a statement about that part's setting.")
    sections.append(Section("Threats to validity", threats))

    sections.append(Section("Provenance", ["Per part: the code's commit and the machine its export recorded, the "
                                           "device its runs trained on and the study's wall time from the ledger's "
                                           "start and finish of its runs."] +
                            [provenance_line(p) for p in parts]))
    return name, sections, parts


def write_summary(paths: Sequence[str | Path], out: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write OUT/report.md, OUT/report.html and OUT/summary.json (the parts, relative to OUT) from the
    exported studies `paths` alone."""
    out = Path(out)
    for p in paths:
        if out.resolve() == Path(p).resolve():
            raise UserError(f"the summary's folder {str(out)!r} is one of its parts; choose another folder")
    if (out / "ledger.sqlite").exists() or (out / "results.csv").exists():
        raise UserError(f"the summary's folder {str(out)!r} holds a study or an export; choose another folder")
    name, sections, parts = build_summary(paths, out, seed)
    out.mkdir(parents=True, exist_ok=True)
    title = "Replication summary"
    atomic_write_text(out / "report.md", render_markdown(name, sections, "report_files", title=title))
    atomic_write_text(out / "report.html", render_html(name, sections, title=title))
    meta = {"parts": [_relative(p.path, out).replace(os.sep, "/") for p in parts],
            "arms": {p.label: p.arm for p in parts}, "seed": seed}
    atomic_write_text(out / "summary.json", json.dumps(meta, indent=2) + "\n")
    return {"md": out / "report.md", "html": out / "report.html", "json": out / "summary.json"}


__all__ = ["ARMS", "Decision", "Part", "arms_reading", "build_summary", "decide", "holm_over_parts", "load_part",
           "load_parts", "write_summary"]
