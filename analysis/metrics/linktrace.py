"""The emulated link's records (link.jsonl): its settings, the shaper's rate over time, the rate
it delivered each second, and how well the delivered rate followed a trace."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd

from ..figures import rounded
from ..load import Runs
from .common import MB, _missing, _num


def _link_rows(runs: Runs) -> pd.DataFrame:
    ev = runs.events
    return ev[ev["role"] == "link"] if "role" in ev else ev.iloc[:0]


def link_settings(runs: Runs) -> dict[tuple[str, str], dict]:
    """(run, arm) -> its ``link`` event (the last one) as a dict, for the arms that have
    one; its ``label`` is under ``link_label``."""
    out = {}
    rows = _link_rows(runs)
    for (run, arm), events in rows[rows["event"] == "link"].groupby(["run", "arm"], sort=False):
        out[(run, arm)] = {k: v for k, v in events.iloc[-1].to_dict().items() if not _missing(v)}
    return out


def link_labels(runs: Runs) -> dict[str, str | None]:
    """Arm label -> its link's label (None for an arm without link.jsonl): how figures name
    the link."""
    settings = link_settings(runs)
    arms = runs.sources.drop_duplicates("label")
    return {r.label: settings.get((r.run, r.arm), {}).get("link_label") for r in arms.itertuples()}


def training_window(runs: Runs) -> dict[tuple[str, str], tuple[float, float]]:
    """(run, arm) -> (begin, end), s since the arm started: from the start of the first
    training step of any source (its ``t`` - ``duration_s``) to the end of the last one."""
    out = {}
    for (run, arm), steps in runs.batches.groupby(["run", "arm"], sort=False):
        t = _num(steps["t"])
        out[(run, arm)] = (float((t - _num(steps["duration_s"]).fillna(0.0)).min()), float(t.max()))
    return out


def capacity_over_time(runs: Runs, direction: str | None = None) -> pd.DataFrame:
    """The shaper's rate over time, one row per ``capacity`` event of link.jsonl (of one
    direction, "up" or "down", or all). Columns: run, arm, label, direction, source (None:
    the shared channel), t (s since the arm started; the rate holds from t until the next
    row of the same run, arm, direction and source, and before the first one), mbit_s."""
    columns = ["run", "arm", "label", "direction", "source", "t", "mbit_s"]
    rows = _link_rows(runs)
    rows = rows[rows["event"] == "capacity"]
    if direction is not None and len(rows):
        rows = rows[rows["direction"] == direction]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    out = pd.DataFrame({"run": rows["run"], "arm": rows["arm"], "label": rows["label"],
                        "direction": rows["direction"],
                        "source": [None if _missing(v) else int(v) for v in rows["source"]],
                        "t": rows["t_rel"].astype(float), "mbit_s": _num(rows["bps"]) / MB})
    return out.sort_values(["run", "arm", "direction", "t"], kind="stable").reset_index(drop=True)


def _capacity_series(capacity: pd.DataFrame, run: str, arm: str, direction: str, source) -> pd.DataFrame:
    """One step series of capacity_over_time: ("both" = the shared half-duplex channel, traced
    as "both", else "up", else "down")."""
    for d in (("both", "up", "down") if direction == "both" else (direction,)):
        mine = capacity[(capacity["run"] == run) & (capacity["arm"] == arm) & (capacity["direction"] == d)]
        mine = mine[mine["source"].isna()] if source is None else mine[mine["source"] == source]
        if len(mine):
            return mine
    return capacity.iloc[:0]


def _step_mean(times, values, begin: float, end: float) -> float | None:
    """Time-weighted mean over [begin, end] of a step function: values[k] holds from times[k]
    to times[k + 1] (the first also before times[0]); the value at begin when end <= begin."""
    times, values = list(times), list(values)
    if not times:
        return None
    if end <= begin:
        return float(values[max(0, sum(1 for t in times if t <= begin) - 1)])
    total = 0.0
    for k, value in enumerate(values):
        lo = begin if k == 0 else max(times[k], begin)
        hi = end if k + 1 == len(times) else min(times[k + 1], end)
        if hi > lo:
            total += float(value) * (hi - lo)
    return total / (end - begin)


def delivered_rate(runs: Runs, direction: str, *, per_source: bool | None = None) -> pd.DataFrame:
    """The rate each link delivered, per whole second since the arm started: each source's
    interface counters (link.jsonl's ``sample`` events: tx_bytes for "up", rx_bytes for
    "down", both for "both") interpolated linearly at the seconds they cover; a second's bytes
    x 8 / 1e6. ``per_source`` None: by the medium (shared: summed over the sources, in the
    seconds every one of them covers; dedicated: per source). Columns: run, arm, label,
    direction, source (None when summed), second (its start), mbit_s."""
    columns = ["run", "arm", "label", "direction", "source", "second", "mbit_s"]
    rows = _link_rows(runs)
    rows = rows[rows["event"] == "sample"]
    counters = {"up": ["tx_bytes"], "down": ["rx_bytes"], "both": ["tx_bytes", "rx_bytes"]}[direction]
    settings = link_settings(runs)
    out = []
    for (run, arm), samples in rows.groupby(["run", "arm"], sort=False):
        summed = (settings.get((run, arm), {}).get("medium") == "shared") if per_source is None else not per_source
        series = {}
        for source, mine in samples.groupby("source"):
            mine = mine.sort_values("t_rel")
            t = mine["t_rel"].astype(float).to_numpy()
            count = sum(_num(mine[c]).to_numpy(dtype=float) for c in counters)
            seconds = np.arange(math.ceil(t[0]), math.floor(t[-1])) if len(t) > 1 else np.array([])
            if len(seconds):
                series[int(source)] = pd.Series((np.interp(seconds + 1, t, count) - np.interp(seconds, t, count))
                                                * 8 / MB, index=seconds.astype(float))
        if not series:
            continue
        label = samples["label"].iloc[0]
        if summed:
            total = pd.concat(series.values(), axis=1, join="inner").sum(axis=1)
            out += [{"run": run, "arm": arm, "label": label, "direction": direction, "source": None,
                     "second": float(k), "mbit_s": float(v)} for k, v in total.items()]
        else:
            out += [{"run": run, "arm": arm, "label": label, "direction": direction, "source": source,
                     "second": float(k), "mbit_s": float(v)} for source, one in series.items() for k, v in one.items()]
    return pd.DataFrame(out, columns=columns)


def _traced_directions(link: dict, capacity: pd.DataFrame, run: str, arm: str) -> list[str]:
    """The directions of a link whose capacity follows a trace (a source's trace_up/trace_down,
    or a shaper rate that changes); "both" for a shared half-duplex channel."""
    mine = capacity[(capacity["run"] == run) & (capacity["arm"] == arm)]
    traced = []
    if link.get("medium") == "shared" and link.get("duplex") == "half":
        rows = mine[mine["direction"] == "both"]
        if link.get("trace_up") or (len(rows) and rows["mbit_s"].nunique() > 1):
            return ["both"]
    for d in ("up", "down"):
        named = bool(link.get(f"trace_{d}")) or \
            any(isinstance(s, dict) and s.get(f"trace_{d}") for s in link.get("sources") or [])
        rows = mine[mine["direction"] == d]
        changes = any(g["mbit_s"].nunique() > 1 for _, g in rows.groupby(rows["source"].fillna(-1)))
        if named or changes:
            traced.append(d)
    if traced and link.get("medium") == "shared" and link.get("duplex") == "half":
        return ["both"]
    return traced


def _fidelity(delivered: pd.Series, capacity: pd.DataFrame, begin: float, end: float) -> dict | None:
    """One link's delivered rate (second -> Mbit/s) against its capacity series, over the
    seconds wholly inside [begin, end]."""
    inside = delivered[(delivered.index >= begin) & (delivered.index + 1 <= end)]
    if inside.empty or capacity.empty:
        return None
    times, rates = capacity["t"].tolist(), capacity["mbit_s"].tolist()
    cap = pd.Series([_step_mean(times, rates, s, s + 1) for s in inside.index], index=inside.index)
    constant = inside.nunique() < 2 or cap.nunique() < 2
    return {"correlation": None if constant else float(np.corrcoef(inside, cap)[0, 1]),
            "mae_mbit_s": float((inside - cap).abs().mean()), "mean_capacity_mbit_s": float(cap.mean()),
            "mean_delivered_mbit_s": float(inside.mean()), "seconds": len(inside)}


def link_trace_fidelity(runs: Runs) -> dict[tuple[str, str], dict | None]:
    """(run, arm) -> link_trace_fidelity (analysis/figures.py): per traced direction, the rate
    delivered each second against the capacity in force; None without a traced direction."""
    capacity = capacity_over_time(runs)
    windows = training_window(runs)
    delivered: dict[tuple[str, bool], pd.DataFrame] = {}  # (direction, per source) -> every arm's
    out = {}
    for (run, arm), link in link_settings(runs).items():
        directions = _traced_directions(link, capacity, run, arm)
        if not directions or (run, arm) not in windows:
            out[(run, arm)] = None
            continue
        begin, end = windows[(run, arm)]
        shared = link.get("medium") == "shared"
        figures = {}
        for d in directions:
            if (d, not shared) not in delivered:
                delivered[(d, not shared)] = delivered_rate(runs, d, per_source=not shared)
            rates = delivered[(d, not shared)]
            rates = rates[(rates["run"] == run) & (rates["arm"] == arm)]
            found = []
            for source, one in rates.groupby(rates["source"].fillna(-1), sort=True):
                key = None if shared else int(source)
                found.append(_fidelity(one.set_index("second")["mbit_s"],
                                       _capacity_series(capacity, run, arm, d, key), begin, end))
            found = [f for f in found if f is not None]
            if not found:
                figures[d] = None
                continue
            correlations = [f["correlation"] for f in found if f["correlation"] is not None]
            figures[d] = {"correlation": rounded("link_trace_fidelity", statistics.fmean(correlations))
                          if correlations else None,
                          **{k: rounded("link_trace_fidelity", statistics.fmean(f[k] for f in found))
                             for k in ("mae_mbit_s", "mean_capacity_mbit_s", "mean_delivered_mbit_s")},
                          "seconds": min(f["seconds"] for f in found)}
        out[(run, arm)] = figures
    return out
