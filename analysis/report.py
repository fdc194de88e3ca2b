"""``report.md`` and the figures for one or many run directories: the arm table, what bound
each arm, the lost sources, where the arms had an emulated link its table (NIC bytes, TCP/IP
overhead, link limit and use, trace fidelity), where the traces hold latency parts the
latency table, then every figure drawn with a one-line caption."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import metrics, plots, summary
from .load import load_runs

# column of metrics.arm_table, title, format: every number comes from analysis.metrics, the
# same figures summary.json holds (tests/test_analysis.py checks that they agree)
TABLE_COLUMNS = [
    ("label", "arm", "{}"), ("sources", "sources", "{}"), ("mb_sent", "MB sent", "{:.3f}"),
    ("mb_received", "MB received", "{:.3f}"),
    ("coded_bytes_per_sample", "payload bytes per sample, train", "{:.1f}"),
    ("eval_coded_bytes_per_sample", "payload bytes per sample, inference", "{:.1f}"),
    ("traffic_ratio", "traffic ratio (x)", "{:.2f}"),
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


# figure name -> title, one-line caption (report.md lists every figure drawn with them)
FIGURES = {
    "traffic": ("Data traffic", "Cumulative MB sent by all sources over time, one line per arm."),
    "throughput": ("Throughput", "Samples processed over time by every source, one colour per arm."),
    "summary": ("Summary", "Traffic ratio, throughput ratio, time to finish and final accuracy per arm."),
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

# report.md's link table: column of metrics.arm_table (or headline), title, format
LINK_COLUMNS = [
    ("link", "link", "{}"),
    ("nic_mb", "NIC MB (both directions)", "{:.3f}"),
    ("nic_bytes_per_sample", "NIC bytes per sample", "{:.1f}"),
    ("tcpip_overhead", "TCP/IP overhead", "{:.1%}"),
    ("link_limit_mean", "link limit (samples/s per source)", "{:.2f}"),
    ("samples_per_s_per_source", "samples/s per source", "{:.2f}"),
    ("link_use", "link use", "{:.0%}"),
]
LATENCY_PARTS_TITLES = {"compute_s": "compute", "encode_s": "encode", "network_s": "network", "queue_s": "queue",
                        "server_s": "server", "decode_s": "decode", "backward_s": "backward",
                        "net_up_s": "net up", "net_down_s": "net down"}


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


def _known(value):
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else value


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    return fmt.format(value)


def link_table(table: pd.DataFrame) -> str | None:
    """The arms' links (arms without one left out); None when no arm had one."""
    rows = [row for row in table.to_dict("records") if isinstance(row.get("link"), str)]
    if not rows:
        return None
    lines = ["| arm | " + " | ".join(title for _, title, _ in LINK_COLUMNS) + " |",
             "|" + "---|" * (len(LINK_COLUMNS) + 1)]
    for row in rows:
        sent, received = _known(row.get("nic_bytes_sent_total")), _known(row.get("nic_bytes_received_total"))
        row["nic_mb"] = None if sent is None or received is None else (sent + received) / metrics.MB
        lines.append(f"| {row['label']} | " + " | ".join(_cell(row.get(c), f) for c, _, f in LINK_COLUMNS) + " |")
    return "\n".join(lines)


def latency_table(table: pd.DataFrame) -> str | None:
    """p50/p95 end to end and the median parts (ms), a row per arm and phase; None when no
    arm's traces hold them."""
    parts = [*metrics.LATENCY_PARTS, *metrics.ONE_WAY]
    lines = []
    for row in table.to_dict("records"):
        for phase in ("train", "infer"):
            p50, p95 = (_known(row.get(f"latency_{phase}_{q}_s")) for q in ("p50", "p95"))
            medians = row.get(f"latency_parts_{phase}")
            medians = medians if isinstance(medians, dict) else {}
            if p50 is None and p95 is None and not medians:
                continue
            cells = [_cell(None if v is None else 1e3 * v, "{:.1f}") for v in (p50, p95)]
            cells += [_cell(None if medians.get(p) is None else 1e3 * medians[p], "{:.1f}") for p in parts]
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
              "server's time in requests over its serving time (definitions: `analysis/metrics.py`).", "",
              markdown_table(table), ""]
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
                  "limit (definitions: `analysis/metrics.py`).", "", links, ""]
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
