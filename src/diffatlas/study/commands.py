"""CLI: `diffatlas study plan|run|status|cancel|export`, `diffatlas report`, `diffatlas quickstart`.

Handlers import the code they drive when they run: `diffatlas --help` and argument errors build
every command's parser and should load none of it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .. import validate
from ..errors import UserError
from ..validate import Range, arg
from .spec import Study, load_study

WORKERS = Range(1, validate.WORKERS_MAX, integer=True)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="plan, run and follow a study (a grid of runs over axes and seeds)")
    ssub = p.add_subparsers(dest="study_command", required=True, parser_class=type(p))

    q = ssub.add_parser("plan", help="list the runs of a study, the verdicts it can reach, and estimate its time "
                                     "(training, evaluation, one-offs) from a short calibration")
    q.add_argument("study", help="study file (YAML)")
    q.add_argument("--no-calibrate", action="store_true", help="skip the measured training steps and evaluation pieces")
    q.add_argument("--steps", type=arg(Range(1, 1000, integer=True)), default=3,
                   help="timed training steps per distinct network/data (default 3; more when they take under a second)")
    q.add_argument("--workers", type=arg(WORKERS), default=None,
                   help="local executor: plan for this many worker processes, as `study run --workers` (default: "
                        "the study's, else 1)")
    q.add_argument("--gpu", default=None, help="also predict the time on this GPU from recorded rates: h200 "
                                               "(default: h200 when the study asks for a GPU, train.device cuda/auto)")
    q.add_argument("--executor", help="local, slurm or ray (default: the study's executor section, else local); "
                                      "slurm prints the sbatch script of one run")
    q.add_argument("--out", help="output folder the study would run in (default studies-out/<name>)")
    q.set_defaults(func=cmd_plan)

    q = ssub.add_parser("run", help="run (or continue) a study: train and evaluate every run not done yet")
    q.add_argument("study", help="study file (YAML)")
    q.add_argument("--out", help="output folder (default studies-out/<name>)")
    q.add_argument("--executor", help="local (worker processes on this machine), slurm (jobs through submitit) or ray "
                                      "(actors on a Ray cluster); default: the study's executor section, else local")
    q.add_argument("--workers", type=arg(WORKERS), default=None,
                   help="local executor: worker processes on this machine (default: the study's, else 1)")
    q.add_argument("--address", help="ray executor: the cluster, auto or HOST:PORT (default: ray.init's own search, "
                                     "else a local Ray instance)")
    q.add_argument("--retry-failed", action="store_true", help="give failed runs a fresh set of attempts")
    q.add_argument("--stale-after", type=arg(Range(0, 10**9, lo_open=True)), default=600.0,
                   help="seconds without a heartbeat after which another runner's run is taken over (default 600)")
    q.set_defaults(func=cmd_run)

    q = ssub.add_parser("status", help="per-status counts, per-run progress and an ETA")
    q.add_argument("study", help="study file (YAML) or its output folder")
    q.add_argument("--out", help="output folder (default studies-out/<name>)")
    q.set_defaults(func=cmd_status)

    q = ssub.add_parser("cancel", help="cancel a study's queued and running cluster jobs and local workers")
    q.add_argument("study", help="study file (YAML) or its output folder")
    q.add_argument("--out", help="output folder (default studies-out/<name>)")
    q.set_defaults(func=cmd_cancel)

    q = ssub.add_parser("export", help="write a study's results as plain files (CSV, its study file, provenance) "
                                       "from which `diffatlas report` rebuilds its report")
    q.add_argument("study", help="study file (YAML) or its output folder")
    q.add_argument("dest", help="folder to write results.csv, curves.csv, runs.csv, ... into (created if needed)")
    q.add_argument("--out", help="study output folder (default studies-out/<name>)")
    q.add_argument("--no-samples", dest="samples", action="store_false",
                   help="carry no sample grids (default: the grids the runs' evaluations wrote, as the report shows them)")
    q.set_defaults(func=cmd_export)

    q = sub.add_parser("report", help="write report.md and report.html for a study, or a replication summary over "
                                      "several exported studies")
    q.add_argument("study", nargs="+", help="study file (YAML), its output folder, or a folder `diffatlas study "
                                            "export` wrote; several exported folders: a replication summary of them")
    q.add_argument("--out", "-o", help="one study: its output folder (default studies-out/<name>); several: the "
                                       "folder the summary is written into (required)")
    q.add_argument("--no-samples", dest="samples", action="store_false",
                   help="leave the sample grids out (default: show the grids the runs' evaluations wrote; their size is "
                        "the study's evaluation.sample_grid)")
    q.set_defaults(func=cmd_report)

    q = sub.add_parser("quickstart", help="a small DDPM-vs-NCSN study on the bundled digits, trained, evaluated and reported")
    q.add_argument("--out", default="studies-out/quickstart", help="output folder (default studies-out/quickstart)")
    q.add_argument("--workers", type=arg(WORKERS), default=2, help="worker processes (default 2)")
    q.set_defaults(func=cmd_quickstart)


def _out_for(args: argparse.Namespace, study: Study) -> Path:
    from .runner import default_out

    return Path(args.out) if getattr(args, "out", None) else default_out(study)


def _study_or_folder(arg: str, out: str | None, exported: bool = False) -> Path:
    """A study file gives its output folder; a folder with ledger.sqlite is one (and, where `exported`,
    a folder with results.csv that `study export` wrote)."""
    p = Path(arg)
    if p.is_dir():
        if exported and not (p / "ledger.sqlite").exists() and (p / "results.csv").exists():
            return p
        if not (p / "ledger.sqlite").is_file():
            raise UserError(f"{arg!r} is a folder without a study ledger" + (" or an exported results.csv" if exported else "")
                            + "; give a study file or a study output folder" + (" or an export" if exported else ""))
        return p
    study = load_study(p)
    from .runner import default_out

    return Path(out) if out else default_out(study)


def cmd_plan(args: argparse.Namespace) -> int:
    from .executors import with_cli
    from .plan import executor_text, plan_text
    from .tuning import plan_runs

    from .cost import GPU_RATES

    study = load_study(args.study)
    spec = with_cli(study.executor, name=args.executor, workers=args.workers)
    if args.gpu is not None and args.gpu not in GPU_RATES:
        raise UserError(f"--gpu {args.gpu!r}: no recorded rates for it; known: {', '.join(GPU_RATES)}")
    runs = plan_runs(study)  # with `tune`: the tuning runs, then the seeded runs (ids known after tuning)
    text = plan_text(study, runs, measure=not args.no_calibrate, steps=args.steps, gpu=args.gpu, executor=spec)
    if spec.remote:
        text += "\n" + executor_text(spec, runs, _out_for(args, study))
    print(text, flush=True)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .executors import with_cli
    from .runner import Runner

    study = load_study(args.study)
    spec = with_cli(study.executor, name=args.executor, workers=args.workers, address=args.address)
    counts = Runner(study, _out_for(args, study), executor=spec, stale_after=args.stale_after,
                    retry_failed=args.retry_failed).run()
    return 0 if counts["failed"] == 0 and counts["pending"] == 0 and counts["running"] == 0 else 1


def cmd_cancel(args: argparse.Namespace) -> int:
    from .executors.remote import cancel_study

    out = _study_or_folder(args.study, args.out)
    rep = cancel_study(out)
    print(f"cancelled {len(rep['jobs'])} cluster job(s)" + (f" ({', '.join(rep['jobs'])})" if rep["jobs"] else "")
          + f" and {len(rep['local'])} local worker(s); {rep['runs']} run(s) pending again "
          "(`diffatlas study run` resumes them from their last snapshots)")
    for note in rep["notes"]:
        print(f"note: {note}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .status import format_status, study_status

    print(format_status(study_status(_study_or_folder(args.study, args.out))))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import write_report

    if len(args.study) > 1:
        from ..report.summary import write_summary

        if not args.out:
            raise UserError("a summary of several exported studies needs --out (-o): the folder to write it into")
        dest = validate.writable_dir(args.out, "--out")
        paths = write_summary(args.study, dest)
        print(f"summary: {paths['html']}")
        print(f"         {paths['md']}")
        return 0
    out = _study_or_folder(args.study[0], args.out, exported=True)
    validate.writable_dir(out, "study output folder")
    paths = write_report(out, samples=args.samples)
    print(f"report: {paths['html']}")
    print(f"        {paths['md']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..report.export import export_study

    out = _study_or_folder(args.study, args.out)
    dest = validate.writable_dir(args.dest, "export folder")
    paths = export_study(out, dest, samples=args.samples)
    print(f"exported {len(paths)} files to {dest}: " + ", ".join(sorted(p for p in paths if "/" not in p)))
    print(f"rebuild the report from them: diffatlas report {dest}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from ..report import write_report
    from .quickstart import quickstart_study
    from .runner import Runner

    study = quickstart_study()
    out = validate.writable_dir(args.out, "--out")
    t0 = time.time()
    counts = Runner(study, out, workers=args.workers).run()
    paths = write_report(out)
    print(f"quickstart: {counts['done']} runs done in {time.time() - t0:.0f} s")
    print(f"report: {paths['html'].resolve()}")
    return 0 if counts["failed"] == 0 else 1
