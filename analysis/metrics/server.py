"""The server's figures (requests served, busy fraction, lr scale) and the lost sources."""
from __future__ import annotations

import pandas as pd

from ..figures import rounded
from ..load import Runs
from .common import _clean, _int_sum, _missing, _num, _rows, _value, _whole


def server_figures(runs: Runs) -> dict[tuple[str, str], dict]:
    """Per (run, arm): requests_served (the server's ``end`` event), server_busy_fraction,
    server_lr_scale (analysis/figures.py)."""
    out = {}
    server = runs.events[runs.events["role"] == "server"]
    for (run, arm), events in server.groupby(["run", "arm"], sort=False):
        kinds = events.groupby("event")
        requests = _rows(kinds, "request").sort_values("t")
        busy = None
        training = requests[requests["op"] == "grad"] if "op" in requests else requests.iloc[:0]
        if len(training):
            # the training window: from the start of the first training step the server
            # answered to the end of the last one (hello, edge pre-training and the final
            # evaluation lie outside it); every request handled inside it counts as busy
            durations = _num(requests["duration_s"]).fillna(0.0)
            began = float(training["t"].iloc[0] - _num(training["duration_s"]).fillna(0.0).iloc[0])
            ended = float(training["t"].iloc[-1])
            inside = (requests["t"] > began) & (requests["t"] <= ended)
            window = ended - began
            busy = rounded("server_busy_fraction", float(durations[inside].sum()) / window) if window > 0 else None
        lr_scale = _value(_rows(kinds, "listening"), "lr_scale")
        out[(run, arm)] = {"requests_served": _value(_rows(kinds, "end"), "served"),
                           "server_busy_fraction": busy,
                           "server_lr_scale": None if lr_scale is None else float(lr_scale)}
    return out


def lost_sources(runs: Runs) -> pd.DataFrame:
    """One row per lost source (the testbed's ``lost`` events). Columns: run, arm, label,
    source, cause, injected, last_epoch, last_batch, batches_done, t (when it was seen
    dead, s since the arm started), last_t and samples_done (its last traced step's end
    and the samples it had done then: where the throughput figure marks it)."""
    columns = ["run", "arm", "label", "source", "cause", "injected", "last_epoch", "last_batch", "batches_done",
               "t", "last_t", "samples_done"]
    ev = runs.events
    if "role" not in ev or not (ev["role"] == "testbed").any():
        return pd.DataFrame(columns=columns)
    lost = ev[(ev["role"] == "testbed") & (ev["event"] == "lost")]
    rows = []
    for _, event in lost.iterrows():
        source = int(event["source"])
        steps = runs.batches[(runs.batches["run"] == event["run"]) & (runs.batches["arm"] == event["arm"])
                             & (runs.batches["source"] == source)].sort_values("t")
        last = steps.iloc[-1] if len(steps) else None
        rows.append({"run": event["run"], "arm": event["arm"], "label": event["label"], "source": source,
                     "cause": None if _missing(event.get("cause")) else str(event["cause"]),
                     "injected": bool(event.get("injected")) if not _missing(event.get("injected")) else False,
                     "last_epoch": None if last is None else _whole(_clean(last["epoch"])),
                     "last_batch": None if last is None else _whole(_clean(last["batch"])),
                     "batches_done": len(steps), "t": rounded("lost_sources", float(event["t_rel"])),
                     "last_t": None if last is None else float(last["t"]),
                     "samples_done": _int_sum(steps["samples"])})
    return pd.DataFrame(rows, columns=columns)


def partial_note(lost: list[dict], sources: int) -> str | None:
    """The one line a partial arm carries (None when no source was lost)."""
    if not lost:
        return None
    named = "; ".join(
        f"source {e['source']} ({e['cause']}{', injected' if e['injected'] else ''}) after {e['batches_done']} "
        f"batches" + (f", the last epoch {e['last_epoch']} batch {e['last_batch']}" if e["last_epoch"] is not None
                      else "") for e in lost)
    return (f"partial: {len(lost)} of {sources} sources lost: {named}; figures cover what was done "
            f"(the lost sources' traced steps count, their missing ones do not)")
