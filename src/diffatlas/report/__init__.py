"""Study reports: report.md and a self-contained report.html (figures embedded as base64 PNG).

    paths = write_report("studies-out/quickstart")   # {"md": Path, "html": Path}
    paths = write_summary(["results/a", "results/b"], "results/summary")   # several exported studies

Contents: "What we found" (a paragraph per claim) and "Threats to validity", both generated from the
results (findings.py, threats.py); the verdict table on the paper's claims, final-metric tables (mean and 95%
bootstrap interval across seeds), metric-vs-kimg curves per axis, the convergence table, FID-vs-NFE
per sampler, log-SNR curves of each run's dynamics and the sample grids the evaluation wrote per configuration. A summary
(summary.py) decides every claim over several exported studies.
"""

from .build import build_report, write_report
from .export import export_study
from .summary import write_summary

__all__ = ["build_report", "export_study", "write_report", "write_summary"]
