"""Study reports: report.md and a self-contained report.html (figures embedded as base64 PNG).

    paths = write_report("studies-out/quickstart")   # {"md": Path, "html": Path}

Contents: the verdict table on the paper's claims, final-metric tables (mean and 95% bootstrap
interval across seeds), metric-vs-kimg curves per axis, the convergence table, FID-vs-NFE per
sampler, log-SNR curves of each run's dynamics and sample grids per configuration.
"""

from .build import build_report, write_report
from .export import export_study

__all__ = ["build_report", "export_study", "write_report"]
