"""The per-source figures: one row per traced source (traffic, speed, CPU, waits, start-up,
memory, pre-training), and the method's own payload over an arm's sources."""
from __future__ import annotations

import pandas as pd

from ..figures import rounded
from ..load import Runs
from .common import _clean, _column_sum, _float, _int_sum, _known_sum, _missing, _num, _rows, _value, _whole


def cpu_share_computing(batches: pd.DataFrame) -> float | None:
    """CPU share of one source while computing in its training window (see the module
    docstring): over the pairs of consecutive steps of one epoch after the warm-up batch."""
    steps = batches.sort_values("t")
    cpu, t, wait = _num(steps["cpu_s"]), _num(steps["t"]), _num(steps["wait_s"])
    epoch, warmup = steps["epoch"].to_numpy(), steps["warmup"].to_numpy()
    cpu_used = wall = waited = 0.0
    pairs = 0
    for i in range(1, len(steps)):
        if warmup[i] or epoch[i] != epoch[i - 1]:
            continue
        values = (cpu.iloc[i], cpu.iloc[i - 1], t.iloc[i], t.iloc[i - 1], wait.iloc[i])
        if any(pd.isna(v) for v in values):
            return None
        cpu_used += values[0] - values[1]
        wall += values[2] - values[3]
        waited += values[4]
        pairs += 1
    computing = wall - waited
    return rounded("cpu_share_computing_per_source", cpu_used / computing) if pairs and computing > 0 else None


def source_figures(runs: Runs) -> pd.DataFrame:
    """One row per traced source: the per-source figures declared in analysis/figures.py.
    Columns: run, arm, label, module, source, status, error, created, ended (absolute s),
    samples, bytes_sent, bytes_received, payload_sent, payload_received, coded_sent,
    eval_coded_sent, eval_bytes_sent,
    eval_bytes_received, eval_samples, control_bytes, control_bytes_sent,
    control_bytes_received, samples_per_s, cpu_share_lifetime, cpu_share_computing,
    reply_wait_share, startup_s, peak_rss_mb, pretrain_s, pretrain_steps, pretrain_samples,
    test_accuracy, split, data, budgets."""
    b, ev, evals, infers = runs.batches, runs.events, runs.evals, runs.infers
    rows = []
    for src in runs.sources.itertuples():
        def mine(frame):
            return frame[(frame["run"] == src.run) & (frame["arm"] == src.arm) & (frame["source"] == src.source)]
        steps = mine(b).sort_values("t")
        events = mine(ev[ev["role"] == "source"])
        kinds = events.groupby("event")
        start, end = _rows(kinds, "start"), _rows(kinds, "end")
        data = _rows(kinds, "data")
        measured = steps[~steps["warmup"]]
        busy = float(_num(measured["duration_s"]).sum())
        wait = _num(measured["wait_s"])
        samples_measured = float(_num(measured["samples"]).sum())
        control = _rows(kinds, "connected", "bye")
        source_evals = mine(evals).sort_values("epoch")
        source_infers = mine(infers)
        cut_short = source_infers[~source_infers["epoch"].isin(source_evals["epoch"])]  # no eval event
        calibrations = _rows(kinds, "calibrate")
        if len(calibrations):  # --bn-batches: an evaluation cut short may have got no further
            calibrations = calibrations[~calibrations["epoch"].isin(source_evals["epoch"])]
        rows.append({
            "run": src.run, "arm": src.arm, "label": src.label, "module": src.module, "source": src.source,
            "status": src.status, "error": _value(end, "error"),
            "created": _value(start, "process_created"), "ended": _value(end, "t"),
            "samples": _int_sum(steps["samples"]),
            "bytes_sent": _int_sum(steps["bytes_sent"]), "bytes_received": _int_sum(steps["bytes_received"]),
            "payload_sent": _int_sum(steps["payload_sent"]), "payload_received": _int_sum(steps["payload_received"]),
            "coded_sent": _known_sum(steps["coded_sent"]),
            "eval_coded_sent": _known_sum(pd.concat([source_evals["coded_sent"], cut_short["coded_sent"]])),
            "eval_bytes_sent": _int_sum(source_evals["bytes_sent"]) + _int_sum(cut_short["bytes_sent"])
            + _column_sum(calibrations, "bytes_sent"),
            "eval_bytes_received": _int_sum(source_evals["bytes_received"]) + _int_sum(cut_short["bytes_received"])
            + _column_sum(calibrations, "bytes_received"),
            "eval_samples": _int_sum(source_evals["samples"]) + _int_sum(cut_short["samples"]),
            "control_bytes": _column_sum(control, "bytes_sent") + _column_sum(control, "bytes_received"),
            "control_bytes_sent": _column_sum(control, "bytes_sent"),
            "control_bytes_received": _column_sum(control, "bytes_received"),
            "samples_per_s": rounded("samples_per_s_per_source", samples_measured / busy) if busy > 0 else None,
            "cpu_share_lifetime": _float(src.cpu_share),
            "cpu_share_computing": cpu_share_computing(steps) if len(steps) else None,
            "reply_wait_share": rounded("reply_wait_share_per_source", float(wait.sum()) / busy)
            if busy > 0 and wait.notna().all() else None,
            "startup_s": rounded("startup_s_per_source", float(steps["t"].iloc[0] - src.start_s))
            if len(steps) and _float(src.start_s) is not None else None,
            "peak_rss_mb": _float(src.peak_rss_mb),
            "memory_peak_mb": _float(src.memory_peak_mb),
            "memory_limit_mb": _float(src.memory_limit_mb),
            "pretrain_s": _float(src.pretrain_s),
            "pretrain_steps": len(_rows(kinds, "pretrain")),
            "pretrain_samples": _column_sum(_rows(kinds, "pretrain"), "samples"),
            "test_accuracy": _float(source_evals["accuracy"].iloc[-1]) if len(source_evals) else None,
            "split": _whole(_value(start, "split")),
            "data": {"origin": _value(data, "origin"), "synthetic": _value(data, "synthetic"),
                     "difficulty": _float(_value(data, "difficulty"))},
            "budgets": [_whole(_clean(v)) for v in steps["budget"] if not _missing(v)],
        })
    return pd.DataFrame(rows)


def coded_figures(s: pd.DataFrame, samples: int) -> dict:
    """The method's own payload (analysis/figures.py, family "rate") over the
    rows of ``s`` (one per source of an arm); None where a trace does not say."""
    train, evaluated = _known_sum(s["coded_sent"]), _known_sum(s["eval_coded_sent"])
    eval_samples = int(s["eval_samples"].sum())
    return {"coded_bytes_sent_total": train,
            "coded_bytes_per_sample": rounded("coded_bytes_per_sample", train / samples)
            if train is not None and samples else None,
            "eval_coded_bytes_per_sample": rounded("eval_coded_bytes_per_sample", evaluated / eval_samples)
            if evaluated is not None and eval_samples else None}
