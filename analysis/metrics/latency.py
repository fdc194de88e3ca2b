"""The latency of a training step and of an inference request, end to end and by part."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..figures import decimals
from ..load import Runs
from .common import _num

# the parts of a step's latency (latency_parts_train; inference has no backward pass)
LATENCY_PARTS = ("compute_s", "encode_s", "network_s", "queue_s", "server_s", "decode_s", "backward_s")
INFER_PARTS = LATENCY_PARTS[:-1]
ONE_WAY = ("net_up_s", "net_down_s")   # only where source and server share a clock (local backend)


def _percentile(values: pd.Series, q: float, figure: str) -> float | None:
    """The ``q``th percentile, rounded as ``figure`` declares."""
    values = _num(values).dropna()
    return round(float(np.percentile(values, q)), decimals(figure)) if len(values) else None


def _part_medians(rows: pd.DataFrame, parts: tuple[str, ...], one_way: bool, figure: str) -> dict | None:
    medians = {p: _percentile(rows[p], 50, figure) if p in rows else None for p in parts}
    if all(v is None for v in medians.values()):
        return None
    return {**medians, **{p: _percentile(rows[p], 50, figure) if one_way and p in rows else None for p in ONE_WAY}}


def latency_figures(runs: Runs) -> dict[tuple[str, str], dict]:
    """(run, arm) -> latency_train_p50_s, latency_train_p95_s, latency_infer_p50_s,
    latency_infer_p95_s, latency_parts_train, latency_parts_infer (analysis/figures.py)."""
    out = {}
    arms = runs.sources.drop_duplicates(["run", "arm"])
    for run, arm in zip(arms["run"], arms["arm"]):
        one_way = runs.manifests.get(run, {}).get("backend") == "local"  # one clock: one-way times hold
        b, i = runs.batches, runs.infers
        steps = b[(b["run"] == run) & (b["arm"] == arm) & ~b["warmup"]]
        infers = i[(i["run"] == run) & (i["arm"] == arm)]
        out[(run, arm)] = {
            "latency_train_p50_s": _percentile(steps["latency_s"], 50, "latency_train_p50_s"),
            "latency_train_p95_s": _percentile(steps["latency_s"], 95, "latency_train_p95_s"),
            "latency_infer_p50_s": _percentile(infers["latency_s"], 50, "latency_infer_p50_s"),
            "latency_infer_p95_s": _percentile(infers["latency_s"], 95, "latency_infer_p95_s"),
            "latency_parts_train": _part_medians(steps, LATENCY_PARTS, one_way, "latency_parts_train"),
            "latency_parts_infer": _part_medians(infers, INFER_PARTS, one_way, "latency_parts_infer"),
        }
    return out
