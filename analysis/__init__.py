"""Reading run directories into pandas and drawing the papers' comparison figures.

Reads files only: it imports nothing from ``testbed`` or ``workloads``.

    from analysis import load_runs, metrics, plots, write_report
    from analysis.summary import summarise_arm, compare, format_table
"""
from . import metrics, plots, summary
from .load import RunDirError, Runs, load_runs
from .report import Report, write_report

__all__ = ["metrics", "plots", "summary", "load_runs", "Runs", "RunDirError", "Report", "write_report"]
