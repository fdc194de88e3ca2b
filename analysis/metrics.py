"""Every figure of a run, defined once: ``summary.json``, the table ``testbed run``
prints, ``report.md``, the plots and the notebooks all take their numbers from here.

All figures come from the DataFrames of :mod:`analysis.load`. Per arm (the keys of an
arm in ``summary.json``; :func:`arm_figures` computes them, :mod:`analysis.summary`
writes them):

Traffic (exact stream bytes the sources traced; eval and control traffic apart)
    bytes_sent_total, bytes_received_total, payload_sent_total, payload_received_total —
    sums over the training steps (``batch`` events) of all sources;
    samples_total; bytes_per_sample_sent/received = bytes / samples (3 decimals);
    eval_bytes_sent_total, eval_bytes_received_total (``eval`` events);
    control_bytes_total (``connected`` and ``bye`` events, both directions).
Speed
    samples_per_s_per_source — samples / seconds in training steps (``duration_s``),
    leaving out each source's first (warm-up) batch (3 decimals).
    duration_s — from the first source process start (``process_created`` of the sources'
    ``start`` events) to the last source ``end`` event (3 decimals).
    startup_s_per_source — process start to the end of its first batch.
Learning
    final_loss — pooled over every sample of the arm's last epoch: the per-batch losses of
    all sources weighted by their samples (6 decimals).
    test_accuracy — the mean over sources of each source's last ``eval`` accuracy.
Hidden costs and fidelity
    pretrain_s_per_source — ``duration_s`` of each source's ``prepared`` event (cdc, mcr2,
    entropic train at the source before the first batch; ~0 for the others);
    pretrain_share = max(pretrain_s_per_source) / duration_s.
    server_lr_scale — ``lr_scale`` of the server's ``listening`` event (None when the trace
    does not say: traces written before it was recorded).
    cpu_share_lifetime_per_source — CPU seconds / wall seconds of the whole process (its
    ``end`` event); cpu_share_per_source is the same list, under its old name.
    cpu_share_computing_per_source — the CPU the source got while computing in the
    training window: over each pair of consecutive steps of one epoch after the warm-up
    batch (the warm-up batch's end opens the window; the gap across an evaluation is left
    out), sum(cpu_s[i] - cpu_s[i-1]) / (sum(t[i] - t[i-1]) - sum(wait_s[i])). ``cpu_s`` is
    the process CPU time at the end of each step, ``wait_s`` the step's wait for the
    server's reply. A cgroup quota is enforced per period (100 ms), so a source that
    computes in short bursts between waits can exceed its cap while computing.
    cpu_share_over_cap_per_source = cpu_share_computing / cpu_cap.
    reply_wait_share_per_source — sum(wait_s) / sum(duration_s) over the measured
    (non-warm-up) batches.
    server_busy_fraction — the server's time handling requests (``request`` events'
    ``duration_s``) over its training window: from the start of the first training step
    it answered (op ``grad``; t - duration_s) to the end of the last one. Hello, the
    sources' edge pre-training and the last evaluation lie outside the window.
    bound_by, bound_reason — what bound the throughput, by :func:`bound_by`'s rule.
    status_per_source — each source's ``end`` status ("no end event" when it has none;
    "lost" for a source the testbed saw die, its ``testbed.jsonl``).
Lost sources (the testbed's ``lost`` events)
    lost_sources — one entry per lost source: source, cause, injected (by ``--drop``),
    last_epoch, last_batch (of its last traced step; None before its first), batches_done,
    t (s since the arm started, when the testbed saw it die).
    partial — true when a source was lost: every figure above is then computed over what
    was done (the lost sources' traced steps count, their missing ones do not);
    partial_note — that in one line, naming the lost sources (None when not partial).
All per-source figures are None (JSON null) where the traces do not hold what they need
(e.g. ``cpu_s``/``wait_s`` in traces written before they existed).

Ratios compare every arm with the baseline arm (``none``, from the same run when it has
one): traffic ratio = baseline bytes / arm bytes (both directions, and each direction),
throughput ratio = arm samples/s / baseline samples/s (mean over sources), 3 decimals.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping

import pandas as pd

from .load import Runs

MB = 1e6

# bound_by's rule (see there)
CAP_REACHED = 0.9   # sources that got at least this share of their cap while computing got their cap
WAIT_MOST = 0.5     # sources that waited for replies this share of each step or more wait "most of each step"
SERVER_BUSY = 0.8   # a server busy this share of its serving time or more is saturated

HOST = "host CPU (oversubscribed)"
CAP = "sources' CPU cap"
SERVER = "the server"
ROUND_TRIP = "the round trip"
UNCAPPED = "the sources' CPU (uncapped)"


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
        out[label] = round(float((loss[known] * samples[known]).sum() / weight), 6) if weight > 0 else None
    return pd.Series(out, name="final_loss", dtype=object)


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
    return round(cpu_used / computing, 4) if pairs and computing > 0 else None


def source_figures(runs: Runs) -> pd.DataFrame:
    """One row per traced source: the per-source figures of the module docstring.
    Columns: run, arm, label, module, source, status, error, created, ended (absolute s),
    samples, bytes_sent, bytes_received, payload_sent, payload_received, eval_bytes_sent,
    eval_bytes_received, control_bytes, samples_per_s, cpu_share_lifetime,
    cpu_share_computing, reply_wait_share, startup_s, peak_rss_mb, pretrain_s,
    test_accuracy, split, data, budgets."""
    b, ev, evals = runs.batches, runs.events, runs.evals
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
        rows.append({
            "run": src.run, "arm": src.arm, "label": src.label, "module": src.module, "source": src.source,
            "status": src.status, "error": _value(end, "error"),
            "created": _value(start, "process_created"), "ended": _value(end, "t"),
            "samples": _int_sum(steps["samples"]),
            "bytes_sent": _int_sum(steps["bytes_sent"]), "bytes_received": _int_sum(steps["bytes_received"]),
            "payload_sent": _int_sum(steps["payload_sent"]), "payload_received": _int_sum(steps["payload_received"]),
            "eval_bytes_sent": _int_sum(source_evals["bytes_sent"]),
            "eval_bytes_received": _int_sum(source_evals["bytes_received"]),
            "control_bytes": _int_sum(control["bytes_sent"]) + _int_sum(control["bytes_received"])
            if len(control) else 0,
            "samples_per_s": round(samples_measured / busy, 3) if busy > 0 else None,
            "cpu_share_lifetime": _float(src.cpu_share),
            "cpu_share_computing": cpu_share_computing(steps) if len(steps) else None,
            "reply_wait_share": round(float(wait.sum()) / busy, 4) if busy > 0 and wait.notna().all() else None,
            "startup_s": round(float(steps["t"].iloc[0] - src.start_s), 3)
            if len(steps) and _float(src.start_s) is not None else None,
            "peak_rss_mb": _float(src.peak_rss_mb),
            "pretrain_s": _float(src.pretrain_s),
            "test_accuracy": _float(source_evals["accuracy"].iloc[-1]) if len(source_evals) else None,
            "split": _whole(_value(start, "split")),
            "data": {"origin": _value(data, "origin"), "synthetic": _value(data, "synthetic")},
            "budgets": [_whole(_clean(v)) for v in steps["budget"] if not _missing(v)],
        })
    return pd.DataFrame(rows)


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
                     "batches_done": len(steps), "t": round(float(event["t_rel"]), 3),
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


def server_figures(runs: Runs) -> dict[tuple[str, str], dict]:
    """Per (run, arm): requests_served (the server's ``end`` event), server_busy_fraction,
    server_lr_scale (see the module docstring)."""
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
            busy = round(float(durations[inside].sum()) / window, 4) if window > 0 else None
        lr_scale = _value(_rows(kinds, "listening"), "lr_scale")
        out[(run, arm)] = {"requests_served": _value(_rows(kinds, "end"), "served"),
                           "server_busy_fraction": busy,
                           "server_lr_scale": None if lr_scale is None else float(lr_scale)}
    return out


def bound_by(cpu_over_cap, reply_wait, server_busy) -> tuple[str | None, str]:
    """What bound an arm's throughput: (name, one sentence with the numbers).

    From the sources' CPU share over cap while computing (C, median over sources), their
    share of each step spent waiting for replies (W, median) and the server's busy
    fraction (B); the first rule that holds names it:

    1. C < CAP_REACHED (90%): "host CPU (oversubscribed)" — the sources did not get their
       cap even while computing, so the machine had fewer free cores than the caps (and
       the server) ask for; whatever they waited for shares that cause.
    2. W < WAIT_MOST (50%): "sources' CPU cap" — they got their cap and spent most of each
       step computing.
    3. B >= SERVER_BUSY (80%): "the server" — they waited for replies most of each step and
       the server was busy nearly all the time.
    4. otherwise "the round trip" — they waited most of each step, the server was often
       idle (or its busy time is not traced): the time went between them (link, queueing,
       message handling). A "network" case will split this one once link figures exist.
    Without a cap (C unknown, --cap-method none), rules 1 and 2 become: W < 50%: "the
    sources' CPU (uncapped)". None when W is not known (traces without wait_s).
    """
    over = [v for v in cpu_over_cap if v is not None]
    wait = [v for v in reply_wait if v is not None]
    if not wait:
        return None, "not known: the traces hold no CPU time or reply wait per batch (cpu_s, wait_s)"
    w = statistics.median(wait)
    busy = "not traced" if server_busy is None else f"{server_busy:.0%}"
    if not over:  # no cap to judge against (--cap-method none): only the waits tell
        if w < WAIT_MOST:
            return UNCAPPED, f"the sources ran uncapped and waited for replies only {w:.0%} of each step"
    else:
        c = statistics.median(over)
    if over and c < CAP_REACHED:
        return HOST, (f"while computing the sources got {c:.0%} of their CPU cap (median; min {min(over):.0%}), "
                      f"below {CAP_REACHED:.0%}, so the host had too few free cores; they waited for replies "
                      f"{w:.0%} of each step and the server was busy {busy}")
    if over and w < WAIT_MOST:
        return CAP, (f"the sources got {c:.0%} of their CPU cap while computing (median; min {min(over):.0%}) "
                     f"and waited for replies only {w:.0%} of each step")
    if server_busy is not None and server_busy >= SERVER_BUSY:
        return SERVER, (f"the sources waited for replies {w:.0%} of each step (median) and the server was busy "
                        f"{busy} of its training window")
    return ROUND_TRIP, (f"the sources waited for replies {w:.0%} of each step (median) while the server was busy "
                        f"{busy} of the time: the time went between them (link, queueing, message handling)")


def arm_figures(runs: Runs, caps: Mapping[str, float] | None = None) -> dict[str, dict]:
    """label -> that arm's figures, keyed as in ``summary.json`` (module docstring), plus
    run, arm, label and sources (the number of traced sources). ``caps`` gives each
    label's CPU cap; by default the run's summary.json or manifest."""
    per_source = source_figures(runs)
    if per_source.empty:
        return {}
    servers = server_figures(runs)
    losses = pooled_final_loss(runs.batches)
    lost_all = lost_sources(runs)
    out = {}
    for label, s in per_source.groupby("label", sort=False):
        run, arm = s["run"].iloc[0], s["arm"].iloc[0]
        cap = (caps or {}).get(label) if caps and label in caps else _cap(runs, run, arm)
        samples = int(s["samples"].sum())
        sent, received = int(s["bytes_sent"].sum()), int(s["bytes_received"].sum())
        created = [v for v in s["created"] if not _missing(v)]
        ended = [v for v in s["ended"] if not _missing(v)]
        duration = round(float(max(ended) - min(created)), 3) if created and ended else None
        computing = [_clean(v) for v in s["cpu_share_computing"]]
        over_cap = [round(v / cap, 4) if v is not None and cap else None for v in computing]
        waits = [_clean(v) for v in s["reply_wait_share"]]
        pretrain = [_clean(v) for v in s["pretrain_s"]]
        known_pretrain = [v for v in pretrain if v is not None]
        server = servers.get((run, arm), {"requests_served": None, "server_busy_fraction": None,
                                          "server_lr_scale": None})
        accuracies = [v for v in s["test_accuracy"] if not _missing(v)]
        lifetime = [_clean(v) for v in s["cpu_share_lifetime"]]
        bound, reason = bound_by(over_cap, waits, server["server_busy_fraction"])
        lost = [{k: _clean(r[k]) for k in ("source", "cause", "injected", "last_epoch", "last_batch",
                                             "batches_done", "t")}
                for _, r in lost_all[(lost_all["run"] == run) & (lost_all["arm"] == arm)].iterrows()]
        out[label] = _clean({
            "run": run, "arm": arm, "label": label, "module": s["module"].iloc[0], "sources": len(s),
            "cpu_cap": cap,
            "bytes_sent_total": sent, "bytes_received_total": received, "samples_total": samples,
            "bytes_per_sample_sent": round(sent / samples, 3) if samples else None,
            "bytes_per_sample_received": round(received / samples, 3) if samples else None,
            "split": s["split"].iloc[0],
            "payload_sent_total": int(s["payload_sent"].sum()),
            "payload_received_total": int(s["payload_received"].sum()),
            "eval_bytes_sent_total": int(s["eval_bytes_sent"].sum()),
            "eval_bytes_received_total": int(s["eval_bytes_received"].sum()),
            "control_bytes_total": int(s["control_bytes"].sum()),
            "samples_per_s_per_source": [_clean(v) for v in s["samples_per_s"]],
            "cpu_share_per_source": lifetime,
            "cpu_share_lifetime_per_source": lifetime,
            "cpu_share_computing_per_source": computing,
            "cpu_share_over_cap_per_source": over_cap,
            "reply_wait_share_per_source": waits,
            "startup_s_per_source": [_clean(v) for v in s["startup_s"]],
            "peak_rss_mb_per_source": [_clean(v) for v in s["peak_rss_mb"]],
            "pretrain_s_per_source": pretrain,
            "pretrain_share": round(max(known_pretrain) / duration, 4) if known_pretrain and duration else None,
            "duration_s": duration,
            "final_loss": losses.get(label),
            "test_accuracy": round(statistics.fmean(accuracies), 6) if accuracies else None,
            "budgets": sorted({b for budgets in s["budgets"] for b in budgets}),
            **server,
            "bound_by": bound, "bound_reason": reason,
            "status_per_source": [str(v) for v in s["status"]],
            "lost_sources": lost,
            "partial": bool(lost),
            "partial_note": partial_note(lost, len(s)),
            "data": s["data"].iloc[0],
        })
    return out


def headline(arm: Mapping) -> dict:
    """The one-number-per-arm figures that the printed table and report.md show beside the
    arm's own scalar figures, from an arm's figures (``arm_figures`` or summary.json)."""
    get = arm.get
    return {
        "samples_per_s": _mean(get("samples_per_s_per_source") or []),
        "cpu_share_lifetime_max": _extreme(max, get("cpu_share_lifetime_per_source")
                                           or get("cpu_share_per_source") or []),
        "cpu_over_cap_median": _median(get("cpu_share_over_cap_per_source") or []),
        "cpu_over_cap_min": _extreme(min, get("cpu_share_over_cap_per_source") or []),
        "reply_wait_median": _median(get("reply_wait_share_per_source") or []),
        "startup_s_mean": _mean(get("startup_s_per_source") or []),
        "peak_rss_mb_max": _extreme(max, get("peak_rss_mb_per_source") or []),
        "pretrain_s_max": _extreme(max, get("pretrain_s_per_source") or []),
    }


def lost_cell(arm: Mapping) -> str:
    """The lost sources of an arm for a table cell: "3, 5" or "none"."""
    lost = arm.get("lost_sources") or []
    return ", ".join(str(e["source"]) for e in lost) or "none"


def comparison(base: Mapping, arm: Mapping) -> dict:
    """Ratios of an arm against the baseline arm (module docstring), from their figures."""
    base_rate = _mean(base["samples_per_s_per_source"])
    rate = _mean(arm["samples_per_s_per_source"])
    return {
        "traffic_ratio": _ratio(base["bytes_sent_total"] + base["bytes_received_total"],
                                arm["bytes_sent_total"] + arm["bytes_received_total"]),
        "traffic_ratio_sent": _ratio(base["bytes_sent_total"], arm["bytes_sent_total"]),
        "traffic_ratio_received": _ratio(base["bytes_received_total"], arm["bytes_received_total"]),
        "throughput_ratio": _ratio(rate, base_rate) if rate and base_rate else None,
    }


def arm_table(runs: Runs, baseline: str = "none", caps: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per arm (the report's table): label, run, module, sources, mb_sent,
    mb_received, samples_per_s_per_source (mean over sources), time_to_finish_s
    (= duration_s), final_loss, final_accuracy (= test_accuracy), max_cpu_share (lifetime),
    the ``headline`` figures, server_busy_fraction, pretrain_share, server_lr_scale,
    bound_by, bound_reason, lost_sources (the lost sources' ids, "none" when none),
    partial_note, traffic_ratio, throughput_ratio — all from ``arm_figures``."""
    figures = arm_figures(runs, caps)
    rows = []
    for label, fig in figures.items():
        top = headline(fig)
        rows.append({
            "label": label, "run": fig["run"], "module": fig["module"], "sources": fig["sources"],
            "mb_sent": fig["bytes_sent_total"] / MB, "mb_received": fig["bytes_received_total"] / MB,
            "samples_per_s_per_source": top["samples_per_s"], "time_to_finish_s": fig["duration_s"],
            "final_loss": fig["final_loss"], "final_accuracy": fig["test_accuracy"],
            "max_cpu_share": top["cpu_share_lifetime_max"], **top,
            "server_busy_fraction": fig["server_busy_fraction"], "pretrain_share": fig["pretrain_share"],
            "server_lr_scale": fig["server_lr_scale"], "bound_by": fig["bound_by"],
            "bound_reason": fig["bound_reason"], "lost_sources": lost_cell(fig),
            "partial_note": fig.get("partial_note"),
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=["label", "run", "module", "sources", "traffic_ratio", "throughput_ratio"])
    traffic_ratio, throughput_ratio = [], []
    for row in table.itertuples():
        base = _baseline(table, baseline, row.run)
        ratios = comparison(figures[base], figures[row.label]) if base is not None else {}
        traffic_ratio.append(_nan(ratios.get("traffic_ratio")))
        throughput_ratio.append(_nan(ratios.get("throughput_ratio")))
    table["traffic_ratio"] = traffic_ratio
    table["throughput_ratio"] = throughput_ratio
    return table


def _baseline(table: pd.DataFrame, baseline: str, run: str) -> str | None:
    """The label of the baseline arm of the same run, else of the first one loaded."""
    rows = table[table["module"] == baseline]
    same = rows[rows["run"] == run]
    return same["label"].iloc[0] if len(same) else (rows["label"].iloc[0] if len(rows) else None)


def _cap(runs: Runs, run: str, arm: str):
    """An arm's CPU cap: its summary.json, else the run's manifest."""
    cap = runs.summaries.get(run, {}).get("arms", {}).get(arm, {}).get("cpu_cap")
    if cap is None:
        cap = runs.manifests.get(run, {}).get("spec", {}).get("cpu")
    return _float(cap)


def _rows(kinds, *names) -> pd.DataFrame:
    frames = [kinds.get_group(n) for n in names if n in kinds.groups]
    return pd.concat(frames) if frames else pd.DataFrame(columns=["t"])


def _value(rows: pd.DataFrame, column: str):
    """The last traced value of a column, None when absent."""
    if not len(rows) or column not in rows:
        return None
    value = rows[column].iloc[-1]
    return None if _missing(value) else _clean(value)


def _num(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce")


def _int_sum(series: pd.Series) -> int:
    return int(_num(series).fillna(0).sum()) if len(series) else 0


def _float(value) -> float | None:
    return None if _missing(value) else float(value)


def _missing(value) -> bool:
    if value is None or isinstance(value, (list, dict, str)):
        return value is None
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _clean(value):
    """Plain Python values for JSON: numpy scalars to int/float, NaN to None."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if _missing(value):
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and math.isinf(value):
        return None
    return value


def _whole(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _nan(value) -> float:
    return float("nan") if value is None else value


def _ratio(numerator, denominator) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.fmean(values), 6) if values else None


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 6) if values else None


def _extreme(pick, values):
    values = [v for v in values if v is not None]
    return pick(values) if values else None


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
