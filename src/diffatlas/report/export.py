"""`diffatlas study export`: a study output folder written as plain files (study.export's format)
together with the sample grids its report shows, so `diffatlas report DEST` rebuilds the same report."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..study.export import write_export
from ..study.results import load_results
from .build import sample_grids


def export_study(out: str | Path, dest: str | Path, samples: bool = True, command: str | None = None) -> dict[str, Path]:
    """Export the study output folder `out` into `dest`: its results (load_results), its study file
    and the sample grids its report shows (report.build.sample_grids: files the runs wrote; none when
    `samples` is false)."""
    out, dest = Path(out), Path(dest)
    if dest.resolve() == out.resolve():
        raise UserError(f"export folder {str(dest)!r} is the study output folder; choose another folder")
    if (dest / "ledger.sqlite").exists():
        raise UserError(f"export folder {str(dest)!r} holds a study ledger; choose a folder that is not a study output")
    res = load_results(out)
    study_yaml = (out / "study.yaml").read_text() if (out / "study.yaml").is_file() else None
    return write_export(res, dest, study_yaml=study_yaml, grids=sample_grids(res, samples), command=command)
