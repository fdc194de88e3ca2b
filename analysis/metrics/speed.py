"""Speed and learning over time: bytes and samples as the steps went, samples/s per source, the
pooled final loss, accuracy per epoch, budget changes, binned and per-step rates."""
from __future__ import annotations

import pandas as pd

from ..figures import rounded
from ..load import Runs
from .common import MB, _num


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


def pooled_final_loss(batches: pd.DataFrame) -> pd.Series:
    """Per label: the loss over all samples of the arm's last epoch (per-batch losses of
    every source weighted by their samples)."""
    out = {}
    for label, arm in batches.groupby("label", sort=False):
        last = arm[arm["epoch"] == arm["epoch"].max()]
        loss, samples = _num(last["loss"]), _num(last["samples"])
        known = loss.notna() & samples.notna()
        weight = samples[known].sum()
        out[label] = rounded("final_loss", float((loss[known] * samples[known]).sum() / weight)) if weight > 0 else None
    return pd.Series(out, name="final_loss", dtype=object)


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


def binned_rates(batches: pd.DataFrame, label: str, bin_s: float) -> pd.DataFrame:
    """An arm's samples/s per source in bins of ``bin_s`` seconds (by each step's end): the
    bin's samples over its steps' seconds, the mean over sources; warm-up steps left out.
    Columns: t (the bin's end), samples_per_s."""
    mine = batches[(batches["label"] == label) & ~batches["warmup"].astype(bool)]
    if mine.empty:
        return pd.DataFrame(columns=["t", "samples_per_s"])
    bins = (_num(mine["t"]) // bin_s).astype(int)
    grouped = mine.assign(bin=bins, seconds=_num(mine["duration_s"]), n=_num(mine["samples"]))
    per_source = grouped.groupby(["bin", "source"])[["n", "seconds"]].sum()
    rates = (per_source["n"] / per_source["seconds"].where(per_source["seconds"] > 0)).groupby(level="bin").mean()
    return pd.DataFrame({"t": (rates.index + 1) * bin_s, "samples_per_s": rates.values})


def step_rates(batches: pd.DataFrame) -> pd.DataFrame:
    """Each training step's samples / duration_s, at its end. Columns: label, source, t,
    samples_per_s."""
    steps = batches.sort_values("t")
    duration = _num(steps["duration_s"])
    frame = steps[["label", "source", "t"]].copy()
    frame["samples_per_s"] = _num(steps["samples"]) / duration.where(duration > 0)
    return frame.reset_index(drop=True)
