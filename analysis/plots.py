"""The papers' comparison figures, each saved as PNG and SVG.

One colour per module, the same in every figure (paper 002 draws "with module" in
red); arms of a module from different runs share its colour with another line style.
Every traffic, throughput and latency figure names the arms' emulated link in its title
("… — link 5mbit shared"). A figure whose data the runs lack returns no files.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from . import metrics  # noqa: E402
from .figures import COLUMNS  # noqa: E402
from .load import Runs  # noqa: E402

MODULE_COLOURS = {"none": "#1f77b4", "filter": "#d62728", "deprune": "#2ca02c", "prune": "#9467bd",
                  "raw": "#7f7f7f", "crbq": "#8c564b", "jpeg": "#e377c2", "webp": "#bcbd22",
                  "cdc": "#17becf", "entropic": "#ff7f0e", "mcr2": "#393b79"}
FALLBACK = ["#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"]
STYLES = ["-", "--", ":", "-."]


class Palette:
    def __init__(self, runs: Runs):
        self.module = {}
        self.style = {}
        seen: dict[str, int] = {}
        modules = runs.sources.drop_duplicates("label").set_index("label")["module"].to_dict()
        for label in runs.labels:
            module = modules.get(label, label)
            self.module[label] = module
            self.style[label] = STYLES[seen.get(module, 0) % len(STYLES)]
            seen[module] = seen.get(module, 0) + 1

    def colour(self, label: str) -> str:
        return module_colour(self.module.get(label, label))


def module_colour(module: str) -> str:
    if module in MODULE_COLOURS:
        return MODULE_COLOURS[module]
    return FALLBACK[sum(map(ord, module)) % len(FALLBACK)]


def link_suffix(runs: Runs, labels=None) -> str:
    """" — link 5mbit shared" for a title (every link of the arms, or of ``labels``), "" without one."""
    links = metrics.link_labels(runs)
    names = list(dict.fromkeys(v for k, v in links.items() if v and (labels is None or k in labels)))
    if not names:
        return ""
    return f" — link {names[0]}" if len(names) == 1 else " — links " + ", ".join(names)


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    plt.close(fig)
    return paths


def traffic(runs: Runs, out: Path) -> list[Path]:
    """Cumulative MB sent by all sources over time, one line per arm (figures 4 and 6)."""
    palette = Palette(runs)
    data = metrics.cumulative_bytes(runs.batches)
    table = metrics.arm_table(runs)
    ratios = dict(zip(table["label"], table["traffic_ratio"]))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label in runs.labels:
        arm = data[data["label"] == label]
        if arm.empty:
            continue
        ratio = ratios.get(label)
        name = label if ratio is None or pd.isna(ratio) or palette.module[label] == "none" else f"{label} ({ratio:.1f}x less)"
        ax.plot([0.0, *arm["t"]], [0.0, *arm["mb_sent"]], color=palette.colour(label),
                linestyle=palette.style[label], label=name, drawstyle="steps-post")
    _over_time(ax, "cumulative data sent by all sources (MB)", "Data traffic" + link_suffix(runs), "arm")
    return _save(fig, out, "traffic")


def throughput(runs: Runs, out: Path) -> list[Path]:
    """Samples processed over time for every data source, one colour per arm (figures 5 and 7)."""
    palette = Palette(runs)
    data = metrics.samples_over_time(runs.batches)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label in runs.labels:
        arm = data[data["label"] == label]
        for i, (_, source) in enumerate(arm.groupby("source")):
            began = source["t"].iloc[0] - source["duration_s"].iloc[0]  # the first batch's start: 0 samples
            ax.plot([began, *source["t"]], [0, *source["samples_done"]], color=palette.colour(label),
                    linestyle=palette.style[label], alpha=0.7, linewidth=1.2, marker=".", markersize=3, label=label if i == 0 else None)
    lost = metrics.lost_sources(runs)
    for row in lost.itertuples():  # where a lost source stopped: an x at its last traced step
        x, y = (0.0, 0) if pd.isna(row.last_t) else (row.last_t, row.samples_done)
        ax.plot([x], [y], marker="x", markersize=9, markeredgewidth=2, color=palette.colour(row.label),
                linestyle="none", label="lost source" if row.Index == 0 else None)
        ax.annotate(f"source {row.source} lost", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8,
                    color=palette.colour(row.label))
    _over_time(ax, "samples processed per source", "Throughput: every data source" + link_suffix(runs),
               "arm (one line per source)")
    return _save(fig, out, "throughput")


def _over_time(ax, ylabel: str, title: str, legend: str) -> None:
    ax.set_xlabel("time since the arm started (s)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(title=legend)


def summary(runs: Runs, out: Path, table: pd.DataFrame | None = None) -> list[Path]:
    """Bars: traffic ratio, throughput ratio, duration, test accuracy (their declared titles)."""
    palette = Palette(runs)
    table = metrics.arm_table(runs) if table is None else table
    panels = [COLUMNS[name] for name in ("traffic_ratio", "throughput_ratio", "duration_s", "test_accuracy")]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    for ax, declared in zip(axes, panels):
        column, title = declared.name, declared.title
        values = pd.to_numeric(table[column], errors="coerce")
        colours = [palette.colour(label) for label in table["label"]]
        ax.bar(range(len(table)), values.fillna(0), color=colours)
        for i, v in enumerate(values):
            ax.text(i, 0 if pd.isna(v) else v, "n/a" if pd.isna(v) else f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(table)), table["label"], rotation=20, ha="right")
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Summary per arm" + link_suffix(runs))
    fig.tight_layout()
    return _save(fig, out, "summary")


def accuracy(runs: Runs, out: Path) -> list[Path]:
    """Test accuracy against epoch and against cumulative network bytes, budget changes
    marked (figures 8 to 13)."""
    palette = Palette(runs)
    curves = metrics.accuracy_curves(runs)
    changes = metrics.budget_changes(runs.batches)
    fig, (by_epoch, by_bytes) = plt.subplots(1, 2, figsize=(12, 4.2))
    for row, label in enumerate(runs.labels):
        arm = curves[curves["label"] == label]
        if arm.empty:
            continue
        style = dict(color=palette.colour(label), linestyle=palette.style[label], marker="o", markersize=3)
        by_epoch.plot(arm["epoch"] + 1, 100 * arm["accuracy"], label=label, **style)
        by_bytes.plot(arm["mb_total"], 100 * arm["accuracy"], label=label, **style)
        for change in changes[changes["label"] == label].itertuples():
            # the change takes effect at the start of epoch `change.epoch` (0-based)
            by_epoch.axvline(change.epoch + 0.5, color=palette.colour(label), linestyle=":", alpha=0.7)
            by_epoch.annotate(f"B={int(change.budget)}", (change.epoch + 0.5, 2 + 14 * row), color=palette.colour(label),
                              fontsize=8, rotation=90, va="bottom", ha="right")
            before = arm[arm["epoch"] == change.epoch - 1]
            if len(before):
                by_bytes.axvline(before["mb_total"].iloc[0], color=palette.colour(label), linestyle=":", alpha=0.7)
    by_epoch.set_xlabel("epoch")
    epochs = int(curves["epoch"].max()) + 1 if len(curves) else 1
    by_epoch.set_xlim(0.5, epochs + 0.5)
    by_epoch.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, min_n_ticks=1))
    by_bytes.set_xlabel("cumulative training traffic, both directions (MB)")
    by_bytes.set_xscale("log")
    by_bytes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # decades only: no crowded labels
    by_bytes.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    for ax in (by_epoch, by_bytes):
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        ax.grid(True, alpha=0.3)
        ax.legend(title="arm")
    fig.suptitle("Accuracy (dotted lines: budget changes)")
    fig.tight_layout()
    return _save(fig, out, "accuracy")


def _figures(runs: Runs, figures) -> dict[str, dict]:
    return metrics.arm_figures(runs) if figures is None else figures


def rate_axes(ax, rates_mbit, asymmetric: bool) -> None:
    """Samples/s per source against the link's rate, log-log as a roofline: the link's limit is
    a line of slope 1, a source bound by its link follows it, one bound by computing stays
    flat. The rates drawn are the x ticks."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    rates = sorted(rates_mbit)
    ax.set_xticks(rates, [f"{v:g}" for v in rates])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("link rate, uplink (Mbit/s)" if asymmetric else "link rate (Mbit/s)")
    ax.set_ylabel("samples/s per source")
    ax.grid(True, which="both", alpha=0.3)


def throughput_vs_bandwidth(runs: Runs, out: Path, figures=None) -> list[Path]:
    """Samples/s per source against the link's rate (log-log), one line per module, the
    link limit of the ``none`` arm dashed: where compression starts to pay. Drawn only when
    a module ran behind links of different rates (run folders at several ``--bandwidth``;
    a sweep over bandwidths draws its own, analysis/sweep.py)."""
    sweep = metrics.bandwidth_sweep(_figures(runs, figures))
    sweep["x"] = sweep["up_bps"].fillna(sweep["down_bps"]) / 1e6
    if sweep.empty or sweep.groupby("module")["x"].nunique().max() < 2:  # no module seen at two rates
        return []
    asymmetric = (sweep["up_bps"] != sweep["down_bps"]).any()
    modules = list(dict.fromkeys(Palette(runs).module.get(label) for label in runs.labels))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for module in [m for m in modules if m in set(sweep["module"])]:
        rows = sweep[sweep["module"] == module].sort_values("x")
        ax.plot(rows["x"], rows["samples_per_s"], marker="o", color=module_colour(module), label=module)
    none = sweep[(sweep["module"] == "none") & sweep["link_limit"].notna()].sort_values("x")
    if len(none):
        ax.plot(none["x"], none["link_limit"], linestyle="--", color=module_colour("none"),
                label="link limit (none)")
    rate_axes(ax, set(sweep["x"]), asymmetric)
    ax.set_title("Throughput against link rate (dashed: what the link allows the none arm)")
    ax.legend(title="module")
    return _save(fig, out, "throughput_vs_bandwidth")


def link_trace(runs: Runs, out: Path, figures=None) -> list[Path]:
    """For every arm whose link follows a capacity trace, stacked panels over time: per
    traced direction the capacity (step line) and the rate delivered each second, then the
    samples/s of each training step of every source. Drawn only when an arm has one."""
    figures = _figures(runs, figures)
    traced = {label: fig["link_trace_fidelity"] for label, fig in figures.items() if fig.get("link_trace_fidelity")}
    if not traced:
        return []
    palette = Palette(runs)
    capacity = metrics.capacity_over_time(runs)
    rates = metrics.step_rates(runs.batches)
    ends = runs.events.groupby(["run", "arm"])["t_rel"].max()
    panels = max(len(directions) for directions in traced.values()) + 1
    fig, axes = plt.subplots(panels, len(traced), figsize=(6.5 * len(traced), 2.4 * panels), sharex="col",
                             squeeze=False)
    for column, (label, directions) in enumerate(traced.items()):
        run, arm = figures[label]["run"], figures[label]["arm"]
        end = float(ends.get((run, arm), 0.0))
        for row, direction in enumerate(directions):
            ax = axes[row][column]
            shown = capacity[(capacity["run"] == run) & (capacity["arm"] == arm)
                             & capacity["direction"].isin(("up", "down") if direction == "both" else (direction,))]
            if direction == "both" and (shown["direction"] == "up").any():
                shown = shown[shown["direction"] == "up"]
            for k, (_, series) in enumerate(shown.groupby(shown["source"].fillna(-1), sort=True)):
                ax.step([*series["t"], max(end, series["t"].max())], [*series["mbit_s"], series["mbit_s"].iloc[-1]],
                        where="post", color="black", linewidth=1.0, label="capacity" if k == 0 else None)
            delivered = metrics.delivered_rate(runs, direction)
            delivered = delivered[(delivered["run"] == run) & (delivered["arm"] == arm)]
            for k, (_, series) in enumerate(delivered.groupby(delivered["source"].fillna(-1), sort=True)):
                ax.plot(series["second"] + 0.5, series["mbit_s"], color=palette.colour(label), alpha=0.8,
                        linewidth=1.2, marker=".", markersize=3, label="delivered, per second" if k == 0 else None)
            ax.set_ylabel(f"{direction} (Mbit/s)")
            ax.set_ylim(bottom=0)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8, loc="upper right")
        for row in range(len(directions), panels - 1):
            axes[row][column].set_visible(False)
        ax = axes[panels - 1][column]
        mine = rates[rates["label"] == label]
        for k, (_, source) in enumerate(mine.groupby("source")):
            ax.plot(source["t"], source["samples_per_s"], color=palette.colour(label), alpha=0.7, linewidth=1.0,
                    marker=".", markersize=3, label="one line per source" if k == 0 else None)
        ax.set_ylabel("samples/s (each step)")
        ax.set_xlabel("time since the arm started (s)")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
        axes[0][column].set_title(f"{label}{link_suffix(runs, [label])}", fontsize=10)
    fig.suptitle("Trace-driven link: capacity, delivered rate and throughput")
    fig.tight_layout()
    return _save(fig, out, "link_trace")


PART_COLOURS = {"compute_s": "#c7c7c7", "encode_s": "#9edae5", "network_s": "#fdae6b", "queue_s": "#f7b6d2",
                "server_s": "#98df8a", "decode_s": "#c5b0d5", "backward_s": "#dbdb8d"}


def latency(runs: Runs, out: Path, figures=None) -> list[Path]:
    """Per arm, one bar for a training step and one (hatched) for an inference request:
    the median of each part stacked, with the p50 (dot) and p95 (triangle) end to end.
    Drawn only when the traces hold the latency fields."""
    figures = _figures(runs, figures)
    arms = [label for label, fig in figures.items()
            if any(fig.get(k) is not None for k in ("latency_train_p50_s", "latency_infer_p50_s",
                                                    "latency_parts_train", "latency_parts_infer"))]
    if not arms:
        return []
    palette = Palette(runs)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(arms) + 2), 4.4))
    named = set()
    for x, label in enumerate(arms):
        arm = figures[label]
        for offset, phase, hatch in ((-0.2, "train", None), (0.2, "infer", "//")):
            parts = arm.get(f"latency_parts_{phase}") or {}
            bottom = 0.0
            for part in metrics.LATENCY_PARTS:
                value = parts.get(part)
                if value is None:
                    continue
                ax.bar(x + offset, 1e3 * value, width=0.38, bottom=bottom, color=PART_COLOURS[part], hatch=hatch,
                       edgecolor="white", label=part[:-2] if part not in named else None)
                named.add(part)
                bottom += 1e3 * value
            for q, marker in (("p50", "o"), ("p95", "^")):
                value = arm.get(f"latency_{phase}_{q}_s")
                if value is not None:
                    ax.plot([x + offset], [1e3 * value], marker=marker, color=palette.colour(label), linestyle="none",
                            markersize=7, markeredgecolor="black", label=f"{q} end to end" if f"{q}" not in named else None)
                    named.add(q)
    ax.set_xticks(range(len(arms)), [f"{label}\ntrain | infer" for label in arms])
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, title="median parts\n(hatched: inference)", bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_title("Latency of a training step and of an inference request" + link_suffix(runs, arms))
    return _save(fig, out, "latency")


def adaptation(runs: Runs, out: Path, figures=None) -> list[Path]:
    """``--adapt``: three stacked panels over time since each arm started — the link's
    capacity (the first traced direction of each arm with a trace), the level each adapting
    source chose, and samples/s per interval of every arm (the adapting arms' own intervals;
    a fixed arm's steps binned into intervals of the same length) against the target —
    and beside them each arm's final accuracy and MB sent. Drawn only when an arm adapted."""
    figures = _figures(runs, figures)
    adapting = [label for label, fig in figures.items() if fig.get("adapt_policy")]
    if not adapting:
        return []
    colours = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(figures)}
    names = _short_labels(figures)
    decisions = metrics.adaptations(runs)
    capacity = metrics.capacity_over_time(runs)
    ends = runs.events.groupby(["run", "arm"])["t_rel"].max()
    fig = plt.figure(figsize=(12, 7.5))
    grid = fig.add_gridspec(3, 2, width_ratios=(3, 1.15), hspace=0.12, wspace=0.55)
    link_ax = fig.add_subplot(grid[0, 0])
    level_ax = fig.add_subplot(grid[1, 0], sharex=link_ax)
    rate_ax = fig.add_subplot(grid[2, 0], sharex=link_ax)
    drawn_links: list[tuple] = []
    links = {}
    for label, arm in figures.items():
        shown = capacity[(capacity["run"] == arm["run"]) & (capacity["arm"] == arm["arm"])]
        if shown.empty:
            continue
        direction = "up" if (shown["direction"] == "up").any() else shown["direction"].iloc[0]
        series = shown[shown["direction"] == direction]
        links[label] = direction, (series[series["source"].isna()] if series["source"].isna().all() else
                                   series[series["source"] == series["source"].dropna().min()])
    for label, (direction, series) in sorted(links.items(), key=lambda item: -len(item[1][1])):
        key = tuple(series["mbit_s"].round(3))
        if any(seen[:len(key)] == key for seen in drawn_links):  # the same trace, under an arm that ended sooner
            continue
        drawn_links.append(key)
        end = max(float(ends.get((f["run"], f["arm"]), series["t"].max())) for f in figures.values())
        link_ax.step([*series["t"], max(end, series["t"].max())], [*series["mbit_s"], series["mbit_s"].iloc[-1]],
                     where="post", color="black" if len(drawn_links) == 1 else colours[label], linewidth=1.2,
                     label=f"capacity, {direction}" + ("" if len(drawn_links) == 1 else f" ({names[label]})"))
    link_ax.set_ylabel("link (Mbit/s)")
    link_ax.set_ylim(bottom=0)
    if drawn_links:
        link_ax.legend(fontsize=8, loc="upper right")
    else:
        link_ax.text(0.5, 0.5, "no emulated link traced", transform=link_ax.transAxes, ha="center", va="center")
    level_names = set()
    for label in adapting:
        arm = figures[label]
        levels = arm["adapt_levels"]
        level_names.add(arm["adapt_level_name"])
        mine = decisions[(decisions["run"] == arm["run"]) & (decisions["arm"] == arm["arm"])]
        for k, (source, rows) in enumerate(mine.groupby("source")):
            index = [levels.index(int(v)) for v in rows["value"]]
            first = levels.index(int(rows["previous"].iloc[0]))
            level_ax.step([0.0, *rows["t"]], [first, *index], where="post", color=colours[label],
                          linewidth=1.6 if k == 0 else 0.8, alpha=1.0 if k == 0 else 0.6,
                          label=names[label] + (" (one line per source)" if mine["source"].nunique() > 1 else "")
                          if k == 0 else None)
        level_ax.set_yticks(range(len(levels)), [str(v) for v in levels])
    level_ax.set_ylabel(" / ".join(sorted(level_names)) + "\n(more compression below)")
    level_ax.legend(fontsize=8, loc="lower right")
    target = figures[adapting[0]]["adapt_target_samples_per_s"]
    interval = _interval_s(runs)
    for label, arm in figures.items():
        if label in adapting:
            mine = decisions[(decisions["run"] == arm["run"]) & (decisions["arm"] == arm["arm"])]
            for k, (_, rows) in enumerate(mine.groupby("source")):  # each source's own intervals
                rate_ax.plot(rows["t"], rows["samples_per_s"], color=colours[label], marker=".", markersize=4,
                             linewidth=1.4 if k == 0 else 0.8, alpha=1.0 if k == 0 else 0.6,
                             label=f"{names[label]} (adaptive, one line per source)" if k == 0 else None)
        else:
            binned = metrics.binned_rates(runs.batches, label, interval)
            rate_ax.plot(binned["t"], binned["samples_per_s"], color=colours[label], linewidth=1.2, alpha=0.85,
                         linestyle="--", label=f"{names[label]} (fixed)")
    rate_ax.axhline(target, color="black", linestyle="-", linewidth=0.8, label=f"target {target:g}")
    rate_ax.axhline((1 - metrics.TARGET_TOLERANCE) * target, color="black", linestyle=":", linewidth=0.8,
                    label=f"{1 - metrics.TARGET_TOLERANCE:.0%} of the target")
    rate_ax.set_ylabel(f"samples/s per source\n(per {interval:g} s interval)")
    rate_ax.set_xlabel("time since the arm started (s)")
    rate_ax.set_xlim(left=0)
    highest = max((float(np.nanmax(np.asarray(line.get_ydata(), dtype=float))) for line in rate_ax.get_lines()
                   if len(line.get_ydata())), default=0.0)
    if highest > 20 * target:  # a spread that hides the target on a linear axis (a cellular trace)
        rate_ax.set_yscale("log")
        rate_ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        rate_ax.set_ylim(bottom=0)
    rate_ax.legend(fontsize=7, loc="upper right")
    for ax in (link_ax, level_ax, rate_ax):
        ax.grid(True, alpha=0.3)
    plt.setp(link_ax.get_xticklabels(), visible=False)
    plt.setp(level_ax.get_xticklabels(), visible=False)
    acc_ax = fig.add_subplot(grid[:, 1])
    labels = list(figures)
    accuracy = [100 * (figures[label].get("test_accuracy") or 0) for label in labels]
    acc_ax.barh(range(len(labels)), accuracy, color=[colours[label] for label in labels])
    for y, label in enumerate(labels):
        arm = figures[label]
        mb = (arm.get("bytes_sent_total") or 0) / 1e6
        inside = accuracy[y] > 60  # the words fit inside the bar, else they follow it
        acc_ax.text(1 if inside else accuracy[y] + 1, y, f"{accuracy[y]:.1f}%  {mb:.2f} MB sent", va="center",
                    fontsize=8, color="white" if inside else "black", fontweight="bold")
    acc_ax.set_yticks(range(len(labels)), [names[label] + ("\n(adaptive)" if label in adapting else "")
                                           for label in labels], fontsize=8)
    acc_ax.invert_yaxis()
    acc_ax.set_xlim(0, 100)
    acc_ax.set_xlabel("final test accuracy (%)")
    acc_ax.set_title("at the end", fontsize=10)
    fig.suptitle("Adaptive compression: the link, the level chosen, samples/s" + link_suffix(runs))
    return _save(fig, out, "adaptation")


def _short_labels(figures: dict) -> dict[str, str]:
    """Arm labels without the module where every arm has the same one ("filter (fixed-b=4)"
    -> "fixed-b=4": the trials of one module's sweep)."""
    modules = {fig.get("module") for fig in figures.values()}
    if len(modules) != 1:
        return {label: label for label in figures}
    module = next(iter(modules))
    return {label: label[len(module) + 2:-1] if label.startswith(f"{module} (") and label.endswith(")") else label
            for label in figures}


def _interval_s(runs: Runs) -> float:
    """The adapting arms' decision interval (the first one's), for binning the fixed arms."""
    starts = metrics.adapt_starts(runs)
    return float(next(iter(starts.values()))["interval_s"]) if starts else 2.0
