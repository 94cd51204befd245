"""`diffatlas study status`: per-status counts, per-run progress and an ETA, read from the ledger
and the run folders (never written); a study with `tune` shows its tuning runs as a phase of their own."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import UserError
from ..io import read_json
from .ledger import Ledger
from .results import last_stats, run_metrics
from .spec import is_tuning
from .tuning import TUNING_FILE, TUNING_IDS_KEY, configuration_label


def study_status(out: str | Path) -> dict:
    """{counts, runs: [{id, status, attempts, kimg, budget, entries, error, seconds, job, log}], eta_s, per_run_s,
    tuning}: the seeded runs of the comparison; `tuning` (None without a `tune` section) the same for the
    tuning runs, with `chosen` (per configuration, from OUT/tuning.json once the tuning is decided)."""
    out = Path(out)
    if not (out / "ledger.sqlite").is_file():
        raise UserError(f"{str(out)!r} holds no study (no ledger.sqlite); start it with `diffatlas study run`")
    with Ledger(out / "ledger.sqlite") as ledger:
        rows = ledger.rows()
        ids = ledger.get_meta("run_ids")
        tuning_ids = ledger.get_meta(TUNING_IDS_KEY) or []
    by_id = {r.id: r for r in rows}
    seeded = [r for r in rows if not is_tuning(r.labels)]
    if ids is not None:
        keep = set(ids)
        seeded = [r for r in seeded if r.id in keep]
    st = _phase(seeded)
    st["tuning"] = None
    if tuning_ids:
        st["tuning"] = _phase([by_id[i] for i in tuning_ids if i in by_id])
        st["tuning"]["chosen"] = _chosen(out)
    return st


def _chosen(out: Path) -> list[str] | None:
    """'configuration: chosen values' per configuration of OUT/tuning.json (None before the tuning is decided)."""
    if not (out / TUNING_FILE).is_file():
        return None
    rec = read_json(out / TUNING_FILE, "tuning record", "move it away: `diffatlas study run` decides again")
    try:
        return [f"{configuration_label(c['labels'])}: {configuration_label(c['chosen'])}" for c in rec["configurations"]]
    except (KeyError, TypeError, AttributeError):
        raise UserError(f"tuning record {str(out / TUNING_FILE)!r} is damaged; move it away: `diffatlas study run` "
                        "decides again") from None


def _phase(rows: list) -> dict:
    now = time.time()
    runs, durations, frac_left, rates = [], [], 0.0, []
    for r in rows:
        rd = Path(r.run_dir)
        st = last_stats(rd)
        budget = float(r.config.get("train", {}).get("kimg") or 0) or None
        kimg = float(st["kimg"]) if st else 0.0
        entries = len(run_metrics(rd))
        secs = None
        if r.status == "done" and r.started and r.finished:
            secs = r.finished - r.started
            durations.append(secs)
        elif r.status == "running" and r.started:
            secs = now - r.started
            if kimg > 0 and budget:
                rates.append(secs / kimg * budget)
        progress = min(kimg / budget, 1.0) if budget else 0.0
        if r.status in ("pending", "running"):
            frac_left += 1.0 - (progress if r.status == "running" else 0.0)
        runs.append({"id": r.id, "status": r.status, "attempts": r.attempts, "kimg": kimg, "budget": budget,
                     "entries": entries, "error": r.error, "seconds": secs, "labels": r.labels, "worker": r.worker,
                     "job": r.job, "log": r.log})
    running = sum(1 for r in rows if r.status == "running")
    workers = max(running, 1)
    per_run = (sum(durations) / len(durations)) if durations else (sum(rates) / len(rates) if rates else None)
    eta = per_run * frac_left / workers if per_run is not None else None
    counts = {s: sum(1 for r in rows if r.status == s) for s in ("pending", "running", "done", "failed")}
    return {"counts": counts, "runs": runs, "eta_s": eta, "per_run_s": per_run}


def format_duration(s: float | None) -> str:
    if s is None:
        return "unknown"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s" if m else f"{sec}s"


def format_status(st: dict) -> str:
    lines: list[str] = []
    tuning = st.get("tuning")
    if tuning:
        c = tuning["counts"]
        lines.append(f"tuning runs (phase 1, held-out seed, not part of the comparison): {c['done']} done, "
                     f"{c['running']} running, {c['pending']} pending, {c['failed']} failed (of {sum(c.values())})")
        lines += _run_lines(tuning)
        if tuning.get("chosen") is not None:
            lines.append("chosen per configuration (tuning.json): " + "; ".join(tuning["chosen"]))
        elif c["pending"] + c["running"]:
            lines.append(f"ETA of the tuning: {format_duration(tuning['eta_s'])} for {c['pending'] + c['running']} "
                         "tuning run(s) left")
        if not st["runs"]:
            lines.append("seeded runs (phase 2): added with the chosen values once every tuning run is done")
            return "\n".join(lines)
        lines.append("seeded runs (phase 2):")
    c = st["counts"]
    lines.append(f"runs: {c['done']} done, {c['running']} running, {c['pending']} pending, {c['failed']} failed "
                 f"(of {sum(c.values())})")
    lines += _run_lines(st)
    left = c["pending"] + c["running"]
    if left:
        lines.append(f"ETA: {format_duration(st['eta_s'])} for {left} run(s) left"
                     + (f" (about {format_duration(st['per_run_s'])} per run)" if st["per_run_s"] else ""))
    else:
        lines.append("nothing left to run")
    return "\n".join(lines)


def _run_lines(st: dict) -> list[str]:
    lines = [f"{'id':12}  {'status':8} {'try':>3}  {'kimg':>14}  {'metrics':>7}  labels"]
    for r in st["runs"]:
        kimg = f"{r['kimg']:.4g}/{r['budget']:g}" if r["budget"] else f"{r['kimg']:.4g}"
        labels = ", ".join(f"{k}={v}" for k, v in r["labels"].items())
        line = f"{r['id']:12}  {r['status']:8} {r['attempts']:>3}  {kimg:>14}  {r['entries']:>7}  {labels}"
        if r["error"] and r["status"] == "failed":
            line += f"  error: {r['error']}"
        if r.get("job"):  # a cluster job: where to look
            line += f"  job {r['job']}" + (f"  log {r['log']}" if r.get("log") else "")
        lines.append(line)
    return lines
