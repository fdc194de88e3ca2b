"""Reading run directories into pandas and drawing the papers' comparison figures.

Reads files only: it imports nothing from ``testbed`` or ``workloads``.

    from analysis import load_runs, metrics, plots, write_report
    from analysis.summary import summarise_arm, compare, format_table

Every figure of a run is declared in :mod:`analysis.figures` (which imports nothing else:
the sweep table reads its columns from there without loading pandas or matplotlib); the
other names load on first use.
"""
from __future__ import annotations

import importlib

_LAZY = {"metrics": ".metrics", "plots": ".plots", "summary": ".summary", "load_runs": ".load", "Runs": ".load",
         "RunDirError": ".load", "Report": ".report", "write_report": ".report"}

__all__ = ["metrics", "plots", "summary", "load_runs", "Runs", "RunDirError", "Report", "write_report"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name], __name__)
    value = module if module.__name__.endswith("." + name) else getattr(module, name)
    globals()[name] = value
    return value
