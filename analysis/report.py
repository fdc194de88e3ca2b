"""``report.md`` and the figures for one or many run directories."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import metrics, plots
from .load import load_runs

# column of metrics.arm_table, title, format: every number comes from analysis.metrics, the
# same figures summary.json holds (tests/test_analysis.py checks that they agree)
TABLE_COLUMNS = [
    ("label", "arm", "{}"), ("sources", "sources", "{}"), ("mb_sent", "MB sent", "{:.3f}"),
    ("mb_received", "MB received", "{:.3f}"), ("traffic_ratio", "traffic ratio (x)", "{:.2f}"),
    ("samples_per_s_per_source", "samples/s per source", "{:.2f}"),
    ("throughput_ratio", "throughput ratio (x)", "{:.3f}"), ("time_to_finish_s", "time to finish (s)", "{:.1f}"),
    ("final_loss", "final loss", "{:.4f}"), ("final_accuracy", "final test accuracy", "{:.3f}"),
    ("max_cpu_share", "max CPU share", "{:.3f}"),
    ("cpu_over_cap_median", "CPU share / cap computing (median)", "{:.0%}"),
    ("cpu_over_cap_min", "CPU share / cap computing (min)", "{:.0%}"),
    ("reply_wait_median", "waiting for replies (median)", "{:.0%}"),
    ("server_busy_fraction", "server busy", "{:.0%}"), ("server_lr_scale", "server lr scale", "{:g}"),
    ("pretrain_s_max", "pre-training (s, max)", "{:.1f}"), ("pretrain_share", "pre-training / duration", "{:.0%}"),
    ("bound_by", "bound by", "{}"), ("lost_sources", "lost sources", "{}"),
]


@dataclass
class Report:
    markdown: Path
    figures: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    table: pd.DataFrame | None = None


def markdown_table(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(title for _, title, _ in TABLE_COLUMNS) + " |"
    rule = "|" + "---|" * len(TABLE_COLUMNS)
    rows = []
    for row in table.itertuples(index=False):
        cells = []
        for column, _, fmt in TABLE_COLUMNS:
            value = getattr(row, column)
            cells.append("–" if value is None or (isinstance(value, float) and pd.isna(value)) else fmt.format(value))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows])


def write_report(run_dirs, out: Path) -> Report:
    runs = load_runs(run_dirs)
    out.mkdir(parents=True, exist_ok=True)
    table = metrics.arm_table(runs)
    figures = []
    sections = [("traffic", "Data traffic", plots.traffic), ("throughput", "Throughput", plots.throughput),
                ("summary", "Summary", lambda r, o: plots.summary(r, o, table))]
    if not runs.evals.empty:
        sections.append(("accuracy", "Accuracy", plots.accuracy))
    else:
        runs.problems.append("no test accuracy was traced: the accuracy figure is left out")
    drawn = []
    for name, title, draw in sections:
        if runs.batches.empty:
            runs.problems.append(f"no training batch was traced: the {name} figure is left out")
            continue
        figures += draw(runs, out)
        drawn.append((name, title))
    lines = ["# splittest report", "", "Runs: " + ", ".join(f"`{Path(p)}`" for p in run_dirs), ""]
    for run, manifest in runs.manifests.items():
        spec = manifest.get("spec", {})
        if spec:
            lines.append(f"- `{run}`: {spec.get('sources')} sources at {spec.get('cpu')} CPU, model {spec.get('model')} "
                         f"split {spec.get('split')}, batch {spec.get('batch_size')} x {spec.get('batches')} batches x "
                         f"{spec.get('epochs')} epochs, data: {manifest.get('data')}, cap: "
                         f"{manifest.get('cap', {}).get('method', 'unknown')}")
    lines += ["", "Ratios compare each arm with `none`: traffic ratio = its bytes / the arm's bytes (both "
              "directions); throughput ratio = the arm's samples/s / its samples/s (warm-up batch excluded). "
              "CPU share / cap computing: the CPU a source got while computing in its training window over its "
              "cap; waiting for replies: the share of each step spent waiting for the server; server busy: the "
              "server's time in requests over its serving time (definitions: `analysis/metrics.py`).", "",
              markdown_table(table), ""]
    if len(table) and "bound_reason" in table:
        lines += ["What bound the throughput:", ""]
        lines += [f"- {row.label}: {row.bound_by or 'not known'}: {row.bound_reason}" for row in table.itertuples()]
        lines += [""]
    partial = [row for row in table.itertuples() if isinstance(getattr(row, "partial_note", None), str)]
    if partial:
        lines += ["Lost sources (the throughput figure marks where each stopped with an x):", ""]
        lines += [f"- {row.label}: {row.partial_note}" for row in partial]
        lines += [""]
    for name, title in drawn:
        lines += [f"## {title}", "", f"![{title}]({name}.png)", ""]
    if runs.problems:
        lines += ["## Problems found while reading", ""] + [f"- {p}" for p in runs.problems] + [""]
    markdown = out / "report.md"
    markdown.write_text("\n".join(lines))
    return Report(markdown, figures, runs.problems, table)
