"""The papers' comparison figures, each saved as PNG and SVG.

One colour per module, the same in every figure (paper 002 draws "with module" in
red); arms of a module from different runs share its colour with another line style.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import pandas as pd  # noqa: E402

from . import metrics  # noqa: E402
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
        module = self.module.get(label, label)
        if module in MODULE_COLOURS:
            return MODULE_COLOURS[module]
        return FALLBACK[sum(map(ord, module)) % len(FALLBACK)]


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
    _over_time(ax, "cumulative data sent by all sources (MB)", "Data traffic", "arm")
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
    _over_time(ax, "samples processed per source", "Throughput: every data source", "arm (one line per source)")
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
    """Bars: traffic ratio, throughput ratio, time to finish, final accuracy."""
    palette = Palette(runs)
    table = metrics.arm_table(runs) if table is None else table
    panels = [("traffic_ratio", "traffic ratio vs none (x)"), ("throughput_ratio", "throughput ratio vs none (x)"),
              ("time_to_finish_s", "time to finish (s)"), ("final_accuracy", "final test accuracy")]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    for ax, (column, title) in zip(axes, panels):
        values = pd.to_numeric(table[column], errors="coerce")
        colours = [palette.colour(label) for label in table["label"]]
        ax.bar(range(len(table)), values.fillna(0), color=colours)
        for i, v in enumerate(values):
            ax.text(i, 0 if pd.isna(v) else v, "n/a" if pd.isna(v) else f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(table)), table["label"], rotation=20, ha="right")
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("Summary per arm")
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
