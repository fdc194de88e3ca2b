"""Adaptive compression (``--adapt``): every decision, and an adapting arm's figures."""
from __future__ import annotations

import pandas as pd

from ..figures import rounded
from ..load import Runs
from .common import _num

TARGET_TOLERANCE = 0.25  # an interval within the target: at least 75% of it
ADAPT_KEYS = ("adapt_policy", "adapt_level_name", "adapt_levels", "adapt_target_samples_per_s", "adapt_decisions",
              "adapt_changes", "adapt_changes_per_min", "adapt_time_at_level", "adapt_within_target",
              "adapt_samples_per_s_min", "adapt_samples_per_s_median")
ADAPT_COLUMNS = ["run", "arm", "label", "source", "t", "interval", "samples", "bytes", "network_s", "compute_s",
                 "samples_per_s", "bandwidth_mbit_s", "level", "value", "previous", "changed", "reason"]


def adaptations(runs: Runs) -> pd.DataFrame:
    """One row per decision of ``--adapt`` (the sources' ``adapt`` events), ADAPT_COLUMNS;
    ``t`` (s since the arm started) is when the interval closed, ``previous`` the level
    in force during it, ``value`` the one after."""
    events = runs.events
    if "event" not in events:
        return pd.DataFrame(columns=ADAPT_COLUMNS)
    rows = events[(events["event"] == "adapt") & (events["role"] == "source")].copy()
    rows["t"] = rows["t_rel"]
    for column in ADAPT_COLUMNS:
        if column not in rows:
            rows[column] = pd.NA
    return rows[ADAPT_COLUMNS].sort_values(["run", "arm", "source", "t"]).reset_index(drop=True)


def adapt_starts(runs: Runs) -> dict[tuple[str, str], dict]:
    """(run, arm) -> the first source's ``adapt_start`` event (policy, levels, target)."""
    events = runs.events
    if "event" not in events:
        return {}
    rows = events[(events["event"] == "adapt_start") & (events["role"] == "source")].sort_values("source")
    return {key: group.iloc[0].to_dict() for key, group in rows.groupby(["run", "arm"], sort=False)}


def adapt_figures(runs: Runs) -> dict[tuple[str, str], dict]:
    """(run, arm) -> the adaptation figures of an arm that adapted (analysis/figures.py)."""
    decisions = adaptations(runs)
    out = {}
    for key, start in adapt_starts(runs).items():
        mine = decisions[(decisions["run"] == key[0]) & (decisions["arm"] == key[1])]
        seconds = _num(mine["network_s"]).fillna(0) + _num(mine["compute_s"]).fillna(0)
        target = float(start["target_samples_per_s"])
        rates = _num(mine["samples_per_s"]).dropna()
        changes = int(mine["changed"].fillna(False).astype(bool).sum())
        at_level: dict[str, float] = {}
        for level, spent in zip(mine["previous"], seconds):
            name = str(int(level))
            at_level[name] = rounded("adapt_time_at_level", at_level.get(name, 0.0) + float(spent))
        minutes = float(seconds.sum()) / 60
        out[key] = {
            "adapt_policy": start["policy"], "adapt_level_name": start["level_name"],
            "adapt_levels": list(start["levels"]), "adapt_target_samples_per_s": target,
            "adapt_decisions": len(mine), "adapt_changes": changes,
            "adapt_changes_per_min": rounded("adapt_changes_per_min", changes / minutes) if minutes > 0 else None,
            "adapt_time_at_level": {str(v): at_level.get(str(v), 0.0) for v in start["levels"]},
            "adapt_within_target": rounded("adapt_within_target",
                                           float((rates >= (1 - TARGET_TOLERANCE) * target).mean()))
            if len(rates) else None,
            "adapt_samples_per_s_min": rounded("adapt_samples_per_s_min", float(rates.min())) if len(rates) else None,
            "adapt_samples_per_s_median": rounded("adapt_samples_per_s_median", float(rates.median()))
            if len(rates) else None,
        }
    return out
