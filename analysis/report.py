"""``report.md`` and the figures for one or many run directories: the arm table, what bound
each arm, the lost sources, where the arms had an emulated link its table (NIC bytes, TCP/IP
overhead, link limit and use, trace fidelity), where the traces hold latency parts the
latency table, then every figure drawn with a one-line caption."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import metrics, plots, summary
from .caveats import caveats
from .figures import FIGURES as DECLARED, cell, shown
from .load import load_runs

# figure name -> title, one-line caption (report.md lists every figure drawn with them)
FIGURES = {
    "traffic": ("Data traffic", "Cumulative MB sent by all sources over time, one line per arm."),
    "throughput": ("Throughput", "Samples processed over time by every source, one colour per arm."),
    "summary": ("Summary", "Traffic ratio, throughput ratio, duration and test accuracy per arm."),
    "accuracy": ("Accuracy", "Test accuracy against epoch and against cumulative training traffic."),
    "throughput_vs_bandwidth": ("Throughput against link rate",
                                "Samples/s per source against the link's rate, one line per module; dashed: "
                                "what the link allows the none arm — where compression starts to pay."),
    "link_trace": ("Trace-driven link", "The link's capacity (step line) and the rate it delivered each second, "
                                        "with the samples/s of every step, over time."),
    "adaptation": ("Adaptive compression", "Over time: the link's capacity, the level each adapting source chose "
                                           "(more compression below) and samples/s per interval of every arm "
                                           "against the target; beside them each arm's final accuracy and MB sent."),
    "latency": ("Latency per arm", "Median parts of a training step and of an inference request (hatched), stacked, with "
                           "the p50 and p95 end to end."),
}

LATENCY_PARTS_TITLES = {"compute_s": "compute", "encode_s": "encode", "network_s": "network", "queue_s": "queue",
                        "server_s": "server", "decode_s": "decode", "backward_s": "backward",
                        "net_up_s": "net up", "net_down_s": "net down"}


@dataclass
class Report:
    markdown: Path
    figures: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    table: pd.DataFrame | None = None


def _table(rows: list[dict], place: str) -> str:
    """A markdown table of the arms: "arm", then every declaration shown in ``place`` (its
    title, its value written as declared; "–" where it is not known)."""
    columns = shown(place)
    lines = ["| arm | " + " | ".join(d.title for d in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for row in rows:
        lines.append(f"| {row['label']} | " + " | ".join(cell(d, row.get(d.name), "–") for d in columns) + " |")
    return "\n".join(lines)


def markdown_table(table: pd.DataFrame) -> str:
    """The arms (metrics.arm_table): every declaration shown in "report"."""
    return _table(table.to_dict("records"), "report")


def link_table(table: pd.DataFrame) -> str | None:
    """The arms' links (arms without one left out): every declaration shown in "link table";
    None when no arm had one."""
    rows = [row for row in table.to_dict("records") if isinstance(row.get("link"), str)]
    return _table(rows, "link table") if rows else None


def latency_table(table: pd.DataFrame) -> str | None:
    """p50/p95 end to end and the median parts, a row per arm and phase, each written as its
    figure's declaration says (the declarations shown in "latency table"); None when no arm's
    traces hold them."""
    parts = [*metrics.LATENCY_PARTS, *metrics.ONE_WAY]
    lines = []
    for row in table.to_dict("records"):
        for phase in ("train", "infer"):
            ends = [DECLARED[f"latency_{phase}_{q}_s"] for q in ("p50", "p95")]
            known = [d for d in ends if cell(d, row.get(d.name)) != "-"]
            whole = DECLARED[f"latency_parts_{phase}"]
            medians = row.get(whole.name)
            medians = medians if isinstance(medians, dict) else {}
            if not known and not medians:
                continue
            cells = [cell(d, row.get(d.name), "–") for d in ends]
            cells += [cell(whole, medians.get(p), "–") for p in parts]
            lines.append(f"| {row['label']} | {phase} | " + " | ".join(cells) + " |")
    if not lines:
        return None
    header = "| arm | phase | p50 (ms) | p95 (ms) | " + " | ".join(LATENCY_PARTS_TITLES[p] for p in parts) + " |"
    return "\n".join([header, "|" + "---|" * (len(parts) + 4), *lines])


def write_report(run_dirs, out: Path) -> Report:
    runs = load_runs(run_dirs)
    out.mkdir(parents=True, exist_ok=True)
    arms = metrics.arm_figures(runs)
    table = metrics.arm_table(runs, figures=arms)
    figures = []
    sections = [("traffic", plots.traffic), ("throughput", plots.throughput),
                ("summary", lambda r, o: plots.summary(r, o, table))]
    if not runs.evals.empty:
        sections.append(("accuracy", plots.accuracy))
    else:
        runs.problems.append("no test accuracy was traced: the accuracy figure is left out")
    # drawn only where the runs hold their data (each returns no file otherwise)
    sections += [(name, lambda r, o, draw=draw: draw(r, o, arms)) for name, draw in (
        ("throughput_vs_bandwidth", plots.throughput_vs_bandwidth), ("link_trace", plots.link_trace),
        ("adaptation", plots.adaptation), ("latency", plots.latency))]
    drawn = []
    for name, draw in sections:
        if runs.batches.empty:
            runs.problems.append(f"no training batch was traced: the {name} figure is left out")
            continue
        files = draw(runs, out)
        figures += files
        if files:
            drawn.append(name)
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
              "server's time in requests over its serving time (definitions: `analysis/figures.py`).", "",
              markdown_table(table), ""]
    notes = caveats(arms)
    if notes:
        lines += ["What these figures do not measure:", ""] + [f"- {line}" for line in notes] + [""]
    if len(table) and "bound_reason" in table:
        lines += ["What bound the throughput:", ""]
        lines += [f"- {row.label}: {row.bound_by or 'not known'}: {row.bound_reason}" for row in table.itertuples()]
        lines += [""]
    adapted = [(label, fig) for label, fig in arms.items() if fig.get("adapt_policy")]
    if adapted:
        lines += ["Adaptive compression (`--adapt`; the figure below draws it over time):", ""]
        lines += [f"- {label}: {summary.adapt_text(fig)}" for label, fig in adapted]
        lines += [""]
    partial = [row for row in table.itertuples() if isinstance(getattr(row, "partial_note", None), str)]
    if partial:
        lines += ["Lost sources (the throughput figure marks where each stopped with an x):", ""]
        lines += [f"- {row.label}: {row.partial_note}" for row in partial]
        lines += [""]
    links = link_table(table) if len(table) else None
    if links:
        lines += ["## Link", "", "Every source behind an emulated link (`link.jsonl`). NIC bytes: the sources' "
                  "interface counters, every header and packet included; TCP/IP overhead: NIC bytes over the "
                  "stream bytes the sources traced, minus 1; link limit: the samples/s the link's rate allows a "
                  "source for the wire bytes a training sample carries each way; link use: samples/s over that "
                  "limit (definitions: `analysis/figures.py`).", "", links, ""]
        fidelity = [(label, d, f) for label, fig in arms.items()
                    for d, f in (fig.get("link_trace_fidelity") or {}).items() if f]
        if fidelity:
            lines += ["Trace-driven links, delivered rate against capacity over the training window:", ""]
            lines += [f"- {label}, {d}: {summary.fidelity_text(f)}" for label, d, f in fidelity]
            lines += [""]
    latencies = latency_table(table) if len(table) else None
    if latencies:
        lines += ["## Latency", "", "End-to-end p50 and p95 of a training step (warm-up left out) and of an "
                  "inference request, and the median of each part (ms); network = round trip - server - queue; "
                  "net up/down: one-way times, only where source and server share a clock (local backend).", "",
                  latencies, ""]
    for name in drawn:
        title, caption = FIGURES[name]
        lines += [f"## {title}", "", f"![{title}]({name}.png)", "", caption, ""]
    if runs.problems:
        lines += ["## Problems found while reading", ""] + [f"- {p}" for p in runs.problems] + [""]
    markdown = out / "report.md"
    markdown.write_text("\n".join(lines))
    return Report(markdown, figures, runs.problems, table)
