"""Metrics of paper 002's comparisons, computed from the DataFrames of ``load``.

Throughput leaves out each source's first (warm-up) batch: samples over the time
spent in training steps after it. Ratios compare every arm with the baseline arm
(``none``, from the same run when it has one): traffic ratio = baseline bytes / arm bytes (both
directions), throughput ratio = arm samples/s / baseline samples/s.
"""
from __future__ import annotations

import pandas as pd

from .load import Runs

MB = 1e6


def cumulative_bytes(batches: pd.DataFrame, *, per_source: bool = False) -> pd.DataFrame:
    """Cumulative MB sent and received over time, summed over sources (or per source).
    Columns: label, [source,] t, mb_sent, mb_received."""
    keys = ["label", "source"] if per_source else ["label"]
    frame = batches.sort_values("t")[keys + ["t", "bytes_sent", "bytes_received"]].copy()
    grouped = frame.groupby(keys, sort=False)
    frame["mb_sent"] = grouped["bytes_sent"].cumsum() / MB
    frame["mb_received"] = grouped["bytes_received"].cumsum() / MB
    return frame.drop(columns=["bytes_sent", "bytes_received"]).reset_index(drop=True)


def samples_over_time(batches: pd.DataFrame) -> pd.DataFrame:
    """Samples processed so far by each source. Columns: label, source, t, duration_s
    (of the batch that ended at t), samples_done."""
    frame = batches.sort_values("t")[["label", "source", "t", "samples", "duration_s"]].copy()
    frame["samples_done"] = frame.groupby(["label", "source"], sort=False)["samples"].cumsum()
    return frame.drop(columns="samples").reset_index(drop=True)


def samples_per_second(batches: pd.DataFrame) -> pd.DataFrame:
    """Per source, after warm-up. Columns: label, source, samples_per_s."""
    measured = batches[~batches["warmup"]]
    grouped = measured.groupby(["label", "source"], sort=False)
    out = (grouped["samples"].sum() / grouped["duration_s"].sum()).rename("samples_per_s")
    return out.reset_index()


def arm_table(runs: Runs, baseline: str = "none") -> pd.DataFrame:
    """One row per arm: traffic, throughput, time to finish, loss, accuracy, ratios."""
    b, s = runs.batches, runs.sources
    rows = []
    rates = samples_per_second(b)
    for label in runs.labels:
        arm = b[b["label"] == label]
        ended = s[s["label"] == label]
        evals = runs.evals[runs.evals["label"] == label]
        last_epoch = arm["epoch"].max() if len(arm) else None
        final_acc = (evals.sort_values("epoch").groupby("source")["accuracy"].last().mean() if len(evals) else None)
        rows.append({
            "label": label,
            "run": ended["run"].iloc[0] if len(ended) else arm["run"].iloc[0],
            "module": ended["module"].iloc[0] if len(ended) else label,
            "sources": int(ended["source"].nunique()) if len(ended) else int(arm["source"].nunique()),
            "mb_sent": arm["bytes_sent"].sum() / MB,
            "mb_received": arm["bytes_received"].sum() / MB,
            "samples_per_s_per_source": rates[rates["label"] == label]["samples_per_s"].mean(),
            "time_to_finish_s": ended["end_s"].max() if len(ended) else arm["t"].max(),
            "final_loss": arm[arm["epoch"] == last_epoch]["loss"].mean() if len(arm) else None,
            "final_accuracy": final_acc,
            "max_cpu_share": ended["cpu_share"].max() if len(ended) else None,
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    traffic_ratio, throughput_ratio = [], []
    for row in table.itertuples():
        base = _baseline(table, baseline, row.run)
        if base is None:
            traffic_ratio.append(float("nan"))
            throughput_ratio.append(float("nan"))
            continue
        traffic_ratio.append((base["mb_sent"] + base["mb_received"]) / (row.mb_sent + row.mb_received))
        throughput_ratio.append(row.samples_per_s_per_source / base["samples_per_s_per_source"])
    table["traffic_ratio"] = traffic_ratio
    table["throughput_ratio"] = throughput_ratio
    return table


def _baseline(table: pd.DataFrame, baseline: str, run: str):
    """The baseline arm of the same run, else the first one loaded."""
    rows = table[table["module"] == baseline]
    same = rows[rows["run"] == run]
    return same.iloc[0] if len(same) else (rows.iloc[0] if len(rows) else None)


def accuracy_curves(runs: Runs) -> pd.DataFrame:
    """Mean test accuracy over sources per arm and epoch, with the cumulative training
    MB (both directions, all sources) at the end of that epoch and the budget.
    Columns: label, epoch, accuracy, mb_total, budget."""
    if runs.evals.empty:
        return pd.DataFrame(columns=["label", "epoch", "accuracy", "mb_total", "budget"])
    b = runs.batches
    per_epoch = b.groupby(["label", "epoch"])[["bytes_sent", "bytes_received"]].sum()
    per_epoch["mb_total"] = (per_epoch["bytes_sent"] + per_epoch["bytes_received"]).groupby(level=0).cumsum() / MB
    accuracy = runs.evals.groupby(["label", "epoch"]).agg(accuracy=("accuracy", "mean"), budget=("budget", "first"))
    out = accuracy.join(per_epoch["mb_total"]).reset_index()
    order = {label: i for i, label in enumerate(runs.labels)}
    return out.sort_values(["label", "epoch"], key=lambda c: c.map(order) if c.name == "label" else c).reset_index(drop=True)


def budget_changes(batches: pd.DataFrame) -> pd.DataFrame:
    """Where each arm's budget changed. Columns: label, epoch, budget."""
    first = batches.groupby(["label", "epoch"], sort=False)["budget"].first().reset_index()
    changed = first.groupby("label", sort=False)["budget"].transform(lambda s: s.ne(s.shift()) & s.shift().notna())
    return first[changed].reset_index(drop=True)
