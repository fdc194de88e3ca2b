"""Every figure of a run, defined once: ``summary.json``, the table ``testbed run``
prints, ``report.md``, the plots and the notebooks all take their numbers from here.

All figures come from the DataFrames of :mod:`analysis.load`. Per arm (the keys of an
arm in ``summary.json``; :func:`arm_figures` computes them, :mod:`analysis.summary`
writes them):

Traffic (exact stream bytes the sources traced; eval and control traffic apart)
    bytes_sent_total, bytes_received_total, payload_sent_total, payload_received_total —
    sums over the training steps (``batch`` events) of all sources;
    samples_total; bytes_per_sample_sent/received = bytes / samples (3 decimals);
    eval_bytes_sent_total, eval_bytes_received_total (``eval`` events, each the sum of its
    evaluation's ``infer`` requests and, with --bn-batches, the ``calibrate`` requests that
    recomputed its BatchNorm statistics; for an evaluation cut short, with ``infer`` or
    ``calibrate`` events of an epoch but no ``eval`` event, those events);
    control_bytes_total (``connected`` and ``bye`` events, both directions).
Rate in the paper's unit (the method's own payload, "payload bytes" in the table and the
report; not ``payload_*_total`` above, which counts every array of a request, labels and
one-time shipments included: the arrays its source part names in
``coded_arrays`` — the entropy-coded latent, a codec's entropy-coded data and its tables
sent once, the filter's maps and indices; not the labels, shapes, lengths, a decoder
shipped once, the header, framing or encryption, which the stream bytes above include)
    coded_bytes_sent_total — summed over the training steps of all sources;
    coded_bytes_per_sample = that / samples_total (3 decimals);
    eval_coded_bytes_per_sample — the same over every evaluation's ``infer`` requests, per
    test sample: the rate at inference, which paper 004 plots (crbq quantizes only then).
    Each is None for traces written before ``coded_sent`` was traced.
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
    pretrain_steps_per_source, pretrain_samples_per_source — the optimizer steps each source
    took on its own, without the network (its ``pretrain`` events: a teacher, a distillation,
    an autoencoder, MCR^2's phase 1 before streaming; cdc's fine-tuning after a change of its
    mask number too) and the samples they saw: the training an arm had besides the steps
    every arm gets (0 for modules that train nothing at the source; samples 0 in
    traces written before the events carried them). Beside samples_total, they say how
    equal the arms' starting points were.
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
    cpu_share_over_cap_per_source = cpu_share_computing / cpu_cap (each source's own cap when
    ``cpu_cap`` is a list: ``--cpu 0.4,0.2`` gives one per source, cycled).
    reply_wait_share_per_source — sum(wait_s) / sum(duration_s) over the measured
    (non-warm-up) batches.
    server_busy_fraction — the server's time handling requests (``request`` events'
    ``duration_s``) over its training window: from the start of the first training step
    it answered (op ``grad``; t - duration_s) to the end of the last one. Hello, the
    sources' edge pre-training and the last evaluation lie outside the window.
    bound_by, bound_reason — what bound the throughput, by :func:`bound_by`'s rule (with a
    link: "the network (<link>)" when the link was full, see there).
    status_per_source — each source's ``end`` status ("no end event" when it has none;
    "lost" for a source the testbed saw die, its ``testbed.jsonl``).
Lost sources (the testbed's ``lost`` events)
    lost_sources — one entry per lost source: source, cause, injected (by ``--drop``),
    last_epoch, last_batch (of its last traced step; None before its first), batches_done,
    t (s since the arm started, when the testbed saw it die).
    partial — true when a source was lost: every figure above is then computed over what
    was done (the lost sources' traced steps count, their missing ones do not);
    partial_note — that in one line, naming the lost sources (None when not partial).
The emulated link (``<arm>/link.jsonl``; every figure here is None for an arm without one)
    link — the link's label (its ``link`` event's, e.g. "5mbit shared"); link_medium
    ("shared" or "dedicated") and link_duplex ("half": one rate that both directions share;
    "full") as it says; link_up_bps_per_source, link_down_bps_per_source, link_delay_ms_per_source
    — each source's entry of the ``link`` event (a rate None: that direction is not shaped, or
    the shared channel carries it); link_channel_bps — the shared channel's {up, down} rates
    (None on a dedicated medium).
    nic_bytes_sent_total, nic_bytes_received_total, nic_packets_sent_total,
    nic_packets_received_total — sums over sources of end - start of each source's own
    interface counters (``nic`` events; tx = sent by the source, rx = received): wire bytes,
    every Ethernet/IP/TCP header and every packet of the source (training, evaluation,
    hello/bye, TCP handshakes and acknowledgements) included. Only sources with both a start
    and an end counter count, here and in the two figures below.
    nic_bytes_per_sample — NIC bytes (both directions) / the samples that crossed the link:
    training samples (``batch`` events) plus evaluation samples (``eval`` events' samples,
    counted as the evaluation bytes are) (3 decimals).
    tcpip_overhead — NIC bytes / application stream bytes - 1 (4 decimals), both directions;
    the stream bytes are every byte the sources traced: training steps, evaluations,
    ``connected`` and ``bye``.
    wire_bytes_per_training_sample_sent, _received — the NIC bytes the training steps carried
    per training sample: per source, its NIC bytes of that direction x (its training stream
    bytes / all its stream bytes of that direction), over its training samples (warm-up
    included); the arm's is the sum over sources over all their training samples (3 decimals).
    link_limit_samples_per_s_per_source — the samples/s the link allows each source, from
    the wire bytes a training sample carries up (U_i) and down (D_i; the figure above per
    source; without NIC counters, the stream bytes per training sample) and the link's rates
    (the time-weighted mean of the shaper's rate, its ``capacity`` events, over the training
    window: from the start of the arm's first training step to the end of its last, so a
    trace-driven link counts with its mean; the ``link`` event's rate where no ``capacity``
    event is traced). A source has one request in flight, so its directions take turns:
      dedicated medium: 1 / (8 U_i / up_i + 8 D_i / down_i);
      shared, one rate for both directions (duplex "half"): C / (8 sum_i (U_i + D_i));
      shared, separate up/down rates: min(up / (8 sum_i U_i), down / (8 sum_i D_i)) (one
      source's directions take turns, but its upload overlaps another's download)
    (sums over the sources that trained; an unshaped direction adds nothing; None when no
    direction is shaped) (3 decimals).
    link_use — the mean over sources of samples_per_s / link limit (4 decimals): how full
    the link was while the sources trained.
    link_trace_fidelity — for a trace-driven link (the link's or a source's ``trace_up``/
    ``trace_down``, or a shaper rate that changes), per traced direction ("up", "down"; "both" for a shared
    half-duplex channel, whose one rate both directions share): the rate delivered each
    whole second (:func:`delivered_rate`: the ``sample`` counters, tx for up, rx for down,
    summed over sources on a shared medium, per source on a dedicated one) against the
    capacity in force in that second (:func:`capacity_over_time`, its time-weighted mean
    over the second), over the seconds that lie wholly in the training window: correlation
    (Pearson; None when either series is constant), mae_mbit_s (mean absolute difference),
    mean_capacity_mbit_s, mean_delivered_mbit_s (4 decimals), seconds (how many). On a
    dedicated medium each figure is the mean over sources of each source's (seconds: the
    fewest). Low correlation also means the sources did not fill the link. None without a
    traced direction.
Latency (new traces' per-step parts; None in traces written before them)
    latency_train_p50_s, latency_train_p95_s — percentiles (linear interpolation between
    the closest ranks) of ``latency_s`` (the whole step, = duration_s) over every source's
    non-warm-up ``batch`` events; latency_infer_p50_s, latency_infer_p95_s — the same over
    the ``infer`` events (every split-inference request of the evaluations) (6 decimals).
    latency_parts_train — the medians over the same steps of each part: compute_s (forward
    at the source), encode_s, network_s (rtt - server_s - queue_s), queue_s (waiting at the
    server), server_s (its decode, compute and encode), decode_s, backward_s; plus net_up_s
    and net_down_s (one-way wall-clock times), which are None unless the manifest says the
    local backend (only there do source and server share a clock). latency_parts_infer —
    the same over the ``infer`` events, without backward_s. A part not traced is None; the
    whole dict is None when no part is (6 decimals).
Adaptive compression (``--adapt``: the sources' ``adapt_start`` and ``adapt`` events; every
figure here is None for an arm that did not adapt)
    adapt_policy, adapt_level_name ("budget", "mask number", "quality"), adapt_levels (most
    compression first), adapt_target_samples_per_s — as the first source's ``adapt_start``
    event says.
    adapt_decisions — intervals decided, over all sources; adapt_changes — those that changed
    the level; adapt_changes_per_min — changes per minute of training steps (each source's
    intervals' seconds, summed).
    adapt_time_at_level — {level: seconds of training steps at it}, over all sources: each
    interval counts at the level in force while it ran (its ``previous``).
    adapt_within_target — the share of intervals, over all sources, whose samples/s reached
    at least 1 - TARGET_TOLERANCE (75%) of the target (4 decimals).
    adapt_samples_per_s_min, adapt_samples_per_s_median — over those intervals (3 decimals).
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

import numpy as np
import pandas as pd

from .load import Runs

MB = 1e6

# bound_by's rule (see there)
CAP_REACHED = 0.9   # sources that got at least this share of their cap while computing got their cap
WAIT_MOST = 0.5     # sources that waited for replies this share of each step or more wait "most of each step"
SERVER_BUSY = 0.8   # a server busy this share of its serving time or more is saturated
LINK_FULL = 0.8     # sources running at this share of what the link allows them or more filled it

HOST = "host CPU (oversubscribed)"
CAP = "sources' CPU cap"
SERVER = "the server"
ROUND_TRIP = "the round trip"
UNCAPPED = "the sources' CPU (uncapped)"
NETWORK = "the network"   # named with the link's label: "the network (5mbit shared)"

# the parts of a step's latency (latency_parts_train; inference has no backward pass)
LATENCY_PARTS = ("compute_s", "encode_s", "network_s", "queue_s", "server_s", "decode_s", "backward_s")
INFER_PARTS = LATENCY_PARTS[:-1]
ONE_WAY = ("net_up_s", "net_down_s")   # only where source and server share a clock (local backend)


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
            "samples_per_s": round(samples_measured / busy, 3) if busy > 0 else None,
            "cpu_share_lifetime": _float(src.cpu_share),
            "cpu_share_computing": cpu_share_computing(steps) if len(steps) else None,
            "reply_wait_share": round(float(wait.sum()) / busy, 4) if busy > 0 and wait.notna().all() else None,
            "startup_s": round(float(steps["t"].iloc[0] - src.start_s), 3)
            if len(steps) and _float(src.start_s) is not None else None,
            "peak_rss_mb": _float(src.peak_rss_mb),
            "pretrain_s": _float(src.pretrain_s),
            "pretrain_steps": len(_rows(kinds, "pretrain")),
            "pretrain_samples": _column_sum(_rows(kinds, "pretrain"), "samples"),
            "test_accuracy": _float(source_evals["accuracy"].iloc[-1]) if len(source_evals) else None,
            "split": _whole(_value(start, "split")),
            "data": {"origin": _value(data, "origin"), "synthetic": _value(data, "synthetic")},
            "budgets": [_whole(_clean(v)) for v in steps["budget"] if not _missing(v)],
        })
    return pd.DataFrame(rows)


def coded_figures(s: pd.DataFrame, samples: int) -> dict:
    """The method's own payload (the module docstring's "Rate in the paper's unit") over the
    rows of ``s`` (one per source of an arm); None where a trace does not say."""
    train, evaluated = _known_sum(s["coded_sent"]), _known_sum(s["eval_coded_sent"])
    eval_samples = int(s["eval_samples"].sum())
    return {"coded_bytes_sent_total": train,
            "coded_bytes_per_sample": round(train / samples, 3) if train is not None and samples else None,
            "eval_coded_bytes_per_sample": round(evaluated / eval_samples, 3)
            if evaluated is not None and eval_samples else None}


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


# -- the emulated link (link.jsonl) and the latency of a step -----------------------------------

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
    """(run, arm) -> link_trace_fidelity (module docstring): per traced direction, the rate
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
            figures[d] = {"correlation": round(statistics.fmean(correlations), 4) if correlations else None,
                          **{k: round(statistics.fmean(f[k] for f in found), 4)
                             for k in ("mae_mbit_s", "mean_capacity_mbit_s", "mean_delivered_mbit_s")},
                          "seconds": min(f["seconds"] for f in found)}
        out[(run, arm)] = figures
    return out


LINK_KEYS = ("link", "link_medium", "link_duplex", "link_up_bps_per_source", "link_down_bps_per_source",
             "link_delay_ms_per_source", "link_channel_bps", "nic_bytes_sent_total", "nic_bytes_received_total",
             "nic_packets_sent_total", "nic_packets_received_total", "nic_bytes_per_sample", "tcpip_overhead",
             "wire_bytes_per_training_sample_sent", "wire_bytes_per_training_sample_received",
             "link_limit_samples_per_s_per_source", "link_use", "link_trace_fidelity")


def _nic(events: pd.DataFrame, source: int) -> dict | None:
    """end - start of one source's interface counters (None without both)."""
    mine = events[(events["event"] == "nic") & (events["source"] == source)]
    if mine.empty or "phase" not in mine:
        return None
    start, end = mine[mine["phase"] == "start"], mine[mine["phase"] == "end"]
    if start.empty or end.empty:
        return None
    return {k: int(_num(end[k]).iloc[-1] - _num(start[k]).iloc[0])
            for k in ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets")}


def _link_rate(link: dict, capacity: pd.DataFrame, run: str, arm: str, direction: str, source,
               window: tuple[float, float]) -> float | None:
    """bit/s of one direction of a source's link (source None: the shared channel): the
    capacity events' time-weighted mean over the training window, else the link event's."""
    series = _capacity_series(capacity, run, arm, direction, source)
    if len(series):
        mean = _step_mean(series["t"].tolist(), series["mbit_s"].tolist(), *window)
        return None if mean is None else mean * MB
    if source is None:
        value = (link.get("channel") or {}).get(f"{'up' if direction == 'both' else direction}_bps")
    else:
        entry = next((e for e in link.get("sources") or [] if isinstance(e, dict) and e.get("source") == source), {})
        value = entry.get(f"{direction}_bps")
    return None if _missing(value) else float(value)


def link_figures(runs: Runs, per_source: pd.DataFrame | None = None) -> dict[tuple[str, str], dict]:
    """(run, arm) -> the link figures of the module docstring (LINK_KEYS; all None for an
    arm without link.jsonl). ``per_source``: source_figures(runs), when already computed."""
    per_source = source_figures(runs) if per_source is None else per_source
    settings, fidelity = link_settings(runs), link_trace_fidelity(runs)
    capacity, windows = capacity_over_time(runs), training_window(runs)
    rows = _link_rows(runs)
    out = {}
    for (run, arm), s in (per_source.groupby(["run", "arm"], sort=False) if len(per_source) else []):
        link = settings.get((run, arm))
        if link is None:
            out[(run, arm)] = dict.fromkeys(LINK_KEYS)
            continue
        events = rows[(rows["run"] == run) & (rows["arm"] == arm)]
        entries = {e.get("source"): e for e in link.get("sources") or [] if isinstance(e, dict)}
        s = s.sort_values("source")
        nic = {int(src.source): _nic(events, int(src.source)) for src in s.itertuples()}
        have = s[[nic[int(v)] is not None for v in s["source"]]]
        totals = {k: sum(nic[int(v)][k] for v in have["source"]) for k in ("tx_bytes", "rx_bytes", "tx_packets",
                                                                            "rx_packets")}
        wire = totals["tx_bytes"] + totals["rx_bytes"]
        stream = int((have["bytes_sent"] + have["bytes_received"] + have["eval_bytes_sent"]
                      + have["eval_bytes_received"] + have["control_bytes"]).sum())
        crossed = int((have["samples"] + have["eval_samples"]).sum())
        # wire bytes per training sample, per source and direction (U_i, D_i)
        up, down, trained, wire_sent, wire_received = {}, {}, {}, 0.0, 0.0
        for src in s.itertuples():
            i = int(src.source)
            if not src.samples:
                continue
            counters = nic[i]
            if counters is not None:
                app_sent = src.bytes_sent + src.eval_bytes_sent + src.control_bytes_sent
                app_received = src.bytes_received + src.eval_bytes_received + src.control_bytes_received
                sent = counters["tx_bytes"] * (src.bytes_sent / app_sent if app_sent else 0.0)
                received = counters["rx_bytes"] * (src.bytes_received / app_received if app_received else 0.0)
                wire_sent, wire_received = wire_sent + sent, wire_received + received
            else:
                sent, received = float(src.bytes_sent), float(src.bytes_received)
            up[i], down[i], trained[i] = sent / src.samples, received / src.samples, src.samples
        window = windows.get((run, arm), (0.0, 0.0))
        limits = _link_limits(link, capacity, run, arm, window, up, down)
        uses = [src.samples_per_s / limits[int(src.source)] for src in s.itertuples()
                if limits.get(int(src.source)) and not _missing(src.samples_per_s)]
        counted = sum(trained[i] for i in trained if nic[i] is not None)
        channel = link.get("channel")
        out[(run, arm)] = {
            "link": link.get("link_label"), "link_medium": link.get("medium"), "link_duplex": link.get("duplex"),
            "link_up_bps_per_source": [entries.get(int(v), {}).get("up_bps") for v in s["source"]],
            "link_down_bps_per_source": [entries.get(int(v), {}).get("down_bps") for v in s["source"]],
            "link_delay_ms_per_source": [entries.get(int(v), {}).get("delay_ms") for v in s["source"]],
            "link_channel_bps": {"up": channel.get("up_bps"), "down": channel.get("down_bps")}
            if isinstance(channel, dict) else None,
            "nic_bytes_sent_total": totals["tx_bytes"] if len(have) else None,
            "nic_bytes_received_total": totals["rx_bytes"] if len(have) else None,
            "nic_packets_sent_total": totals["tx_packets"] if len(have) else None,
            "nic_packets_received_total": totals["rx_packets"] if len(have) else None,
            "nic_bytes_per_sample": round(wire / crossed, 3) if len(have) and crossed else None,
            "tcpip_overhead": round(wire / stream - 1, 4) if len(have) and stream else None,
            "wire_bytes_per_training_sample_sent": round(wire_sent / counted, 3) if counted else None,
            "wire_bytes_per_training_sample_received": round(wire_received / counted, 3) if counted else None,
            "link_limit_samples_per_s_per_source": [None if limits.get(int(v)) is None else round(limits[int(v)], 3)
                                                    for v in s["source"]],
            "link_use": round(statistics.fmean(uses), 4) if uses else None,
            "link_trace_fidelity": fidelity.get((run, arm)),
        }
    return out


def _link_limits(link: dict, capacity: pd.DataFrame, run: str, arm: str, window: tuple[float, float],
                 up: dict[int, float], down: dict[int, float]) -> dict[int, float | None]:
    """Source -> the samples/s its link allows it (link_limit_samples_per_s_per_source)."""
    def seconds(bytes_per_sample: float, bps: float | None) -> float:
        return 0.0 if bps is None or bps <= 0 else 8 * bytes_per_sample / bps

    if link.get("medium") == "shared":
        if link.get("duplex") == "half":
            rate = _link_rate(link, capacity, run, arm, "both", None, window)
            per_sample = seconds(sum(up.values()) + sum(down.values()), rate)
        else:  # one source's directions take turns, but one source's upload and another's download overlap
            per_sample = max(seconds(sum(up.values()), _link_rate(link, capacity, run, arm, "up", None, window)),
                             seconds(sum(down.values()), _link_rate(link, capacity, run, arm, "down", None, window)))
        return {i: 1 / per_sample if per_sample > 0 else None for i in up}
    out = {}
    for i in up:
        per_sample = (seconds(up[i], _link_rate(link, capacity, run, arm, "up", i, window))
                      + seconds(down[i], _link_rate(link, capacity, run, arm, "down", i, window)))
        out[i] = 1 / per_sample if per_sample > 0 else None
    return out


def _percentile(values: pd.Series, q: float) -> float | None:
    values = _num(values).dropna()
    return round(float(np.percentile(values, q)), 6) if len(values) else None


def _part_medians(rows: pd.DataFrame, parts: tuple[str, ...], one_way: bool) -> dict | None:
    medians = {p: _percentile(rows[p], 50) if p in rows else None for p in parts}
    if all(v is None for v in medians.values()):
        return None
    return {**medians, **{p: _percentile(rows[p], 50) if one_way and p in rows else None for p in ONE_WAY}}


def latency_figures(runs: Runs) -> dict[tuple[str, str], dict]:
    """(run, arm) -> latency_train_p50_s, latency_train_p95_s, latency_infer_p50_s,
    latency_infer_p95_s, latency_parts_train, latency_parts_infer (module docstring)."""
    out = {}
    arms = runs.sources.drop_duplicates(["run", "arm"])
    for run, arm in zip(arms["run"], arms["arm"]):
        one_way = runs.manifests.get(run, {}).get("backend") == "local"  # one clock: one-way times hold
        b, i = runs.batches, runs.infers
        steps = b[(b["run"] == run) & (b["arm"] == arm) & ~b["warmup"]]
        infers = i[(i["run"] == run) & (i["arm"] == arm)]
        out[(run, arm)] = {
            "latency_train_p50_s": _percentile(steps["latency_s"], 50),
            "latency_train_p95_s": _percentile(steps["latency_s"], 95),
            "latency_infer_p50_s": _percentile(infers["latency_s"], 50),
            "latency_infer_p95_s": _percentile(infers["latency_s"], 95),
            "latency_parts_train": _part_medians(steps, LATENCY_PARTS, one_way),
            "latency_parts_infer": _part_medians(infers, INFER_PARTS, one_way),
        }
    return out


def bandwidth_sweep(runs: Runs, figures: Mapping[str, dict] | None = None) -> pd.DataFrame:
    """One row per arm with a link: run, label, module, up_bps, down_bps (the rate of a
    source's link: the shared channel's, else the mean over sources of theirs), samples_per_s
    (mean over sources), link_limit (mean over sources), link_use; sorted by module and rate.
    The throughput_vs_bandwidth figure draws it when the runs differ in rate."""
    columns = ["run", "label", "module", "up_bps", "down_bps", "samples_per_s", "link_limit", "link_use"]
    figures = arm_figures(runs) if figures is None else figures
    rows = []
    for label, fig in figures.items():
        if fig.get("link") is None:
            continue
        channel = fig.get("link_channel_bps") or {}
        rate = {d: channel.get(d) if channel.get(d) is not None else _mean(fig.get(f"link_{d}_bps_per_source") or [])
                for d in ("up", "down")}
        if rate["up"] is None and rate["down"] is None:
            continue
        rows.append({"run": fig["run"], "label": label, "module": fig["module"], "up_bps": rate["up"],
                     "down_bps": rate["down"], "samples_per_s": _mean(fig["samples_per_s_per_source"]),
                     "link_limit": _mean(fig.get("link_limit_samples_per_s_per_source") or []),
                     "link_use": fig.get("link_use")})
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["module", "up_bps", "down_bps"], kind="stable").reset_index(drop=True)


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
    """(run, arm) -> the adaptation figures of an arm that adapted (module docstring)."""
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
            at_level[str(int(level))] = round(at_level.get(str(int(level)), 0.0) + float(spent), 3)
        minutes = float(seconds.sum()) / 60
        out[key] = {
            "adapt_policy": start["policy"], "adapt_level_name": start["level_name"],
            "adapt_levels": list(start["levels"]), "adapt_target_samples_per_s": target,
            "adapt_decisions": len(mine), "adapt_changes": changes,
            "adapt_changes_per_min": round(changes / minutes, 3) if minutes > 0 else None,
            "adapt_time_at_level": {str(v): at_level.get(str(v), 0.0) for v in start["levels"]},
            "adapt_within_target": round(float((rates >= (1 - TARGET_TOLERANCE) * target).mean()), 4)
            if len(rates) else None,
            "adapt_samples_per_s_min": round(float(rates.min()), 3) if len(rates) else None,
            "adapt_samples_per_s_median": round(float(rates.median()), 3) if len(rates) else None,
        }
    return out


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


def bound_by(cpu_over_cap, reply_wait, server_busy, link_use=None, link=None) -> tuple[str | None, str]:
    """What bound an arm's throughput: (name, one sentence with the numbers).

    From the sources' CPU share over cap while computing (C, median over sources), their
    share of each step spent waiting for replies (W, median), the server's busy
    fraction (B) and, with an emulated link, its use (L: link_use, the sources' samples/s
    over what the link allows them, mean over sources); the first rule that holds names it:

    0. L >= LINK_FULL (80%) and W >= WAIT_MOST (50%): "the network (<link label>)" — the
       sources waited for replies most of each step and ran at nearly what the link allows
       them: the link's rate bound them, whatever the CPU or the server did. Without a
       link (L None) this rule never holds, and the rules below are as they were.
    1. C < CAP_REACHED (90%): "host CPU (oversubscribed)" — the sources did not get their
       cap even while computing, so the machine had fewer free cores than the caps (and
       the server) ask for; whatever they waited for shares that cause.
    2. W < WAIT_MOST (50%): "sources' CPU cap" — they got their cap and spent most of each
       step computing.
    3. B >= SERVER_BUSY (80%): "the server" — they waited for replies most of each step and
       the server was busy nearly all the time.
    4. otherwise "the round trip" — they waited most of each step, the server was often
       idle (or its busy time is not traced): the time went between them (link, queueing,
       message handling); with a link, its use is in the sentence.
    Without a cap (C unknown, --cap-method none), rules 1 and 2 become: W < 50%: "the
    sources' CPU (uncapped)". None when W is not known (traces without wait_s).
    """
    over = [v for v in cpu_over_cap if v is not None]
    wait = [v for v in reply_wait if v is not None]
    if not wait:
        return None, "not known: the traces hold no CPU time or reply wait per batch (cpu_s, wait_s)"
    w = statistics.median(wait)
    busy = "not traced" if server_busy is None else f"{server_busy:.0%}"
    if link_use is not None and link_use >= LINK_FULL and w >= WAIT_MOST:
        return (f"{NETWORK} ({link})" if link else NETWORK), (
            f"the sources ran at {link_use:.0%} of the samples/s the link ({link or 'emulated'}) allows them "
            f"(at least {LINK_FULL:.0%}: full) and waited for replies {w:.0%} of each step (median); the server "
            f"was busy {busy} of its training window")
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
    use = "" if link_use is None else f"; they used {link_use:.0%} of what the link ({link}) allows them"
    return ROUND_TRIP, (f"the sources waited for replies {w:.0%} of each step (median) while the server was busy "
                        f"{busy} of the time: the time went between them (link, queueing, message handling){use}")


def arm_figures(runs: Runs, caps: Mapping[str, float] | None = None) -> dict[str, dict]:
    """label -> that arm's figures, keyed as in ``summary.json`` (module docstring), plus
    run, arm, label and sources (the number of traced sources). ``caps`` gives each
    label's CPU cap; by default the run's summary.json or manifest."""
    per_source = source_figures(runs)
    if per_source.empty:
        return {}
    servers = server_figures(runs)
    links = link_figures(runs, per_source)
    latencies = latency_figures(runs)
    adapting = adapt_figures(runs)
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
        caps_of = _per_source(cap, [int(v) for v in s["source"]])
        over_cap = [round(v / c, 4) if v is not None and c else None for v, c in zip(computing, caps_of)]
        waits = [_clean(v) for v in s["reply_wait_share"]]
        pretrain = [_clean(v) for v in s["pretrain_s"]]
        known_pretrain = [v for v in pretrain if v is not None]
        server = servers.get((run, arm), {"requests_served": None, "server_busy_fraction": None,
                                          "server_lr_scale": None})
        accuracies = [v for v in s["test_accuracy"] if not _missing(v)]
        lifetime = [_clean(v) for v in s["cpu_share_lifetime"]]
        link = links.get((run, arm)) or dict.fromkeys(LINK_KEYS)
        bound, reason = bound_by(over_cap, waits, server["server_busy_fraction"], link["link_use"], link["link"])
        lost = [{k: _clean(r[k]) for k in ("source", "cause", "injected", "last_epoch", "last_batch",
                                             "batches_done", "t")}
                for _, r in lost_all[(lost_all["run"] == run) & (lost_all["arm"] == arm)].iterrows()]
        out[label] = _clean({
            **adapting.get((run, arm), dict.fromkeys(ADAPT_KEYS)),
            "run": run, "arm": arm, "label": label, "module": s["module"].iloc[0], "sources": len(s),
            "cpu_cap": cap,
            "bytes_sent_total": sent, "bytes_received_total": received, "samples_total": samples,
            "bytes_per_sample_sent": round(sent / samples, 3) if samples else None,
            "bytes_per_sample_received": round(received / samples, 3) if samples else None,
            "split": s["split"].iloc[0],
            "payload_sent_total": int(s["payload_sent"].sum()),
            "payload_received_total": int(s["payload_received"].sum()),
            **coded_figures(s, samples),
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
            "pretrain_steps_per_source": [int(v) for v in s["pretrain_steps"]],
            "pretrain_samples_per_source": [int(v) for v in s["pretrain_samples"]],
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
            **link,
            **latencies.get((run, arm), {}),
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
        "link_limit_mean": _mean(get("link_limit_samples_per_s_per_source") or []),
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


# the link and latency figures arm_table carries as they are (report.md's link and latency tables)
TABLE_LINK_KEYS = ("link", "nic_bytes_sent_total", "nic_bytes_received_total", "nic_bytes_per_sample",
                   "tcpip_overhead", "link_use", "link_trace_fidelity", "latency_train_p50_s",
                   "latency_train_p95_s", "latency_infer_p50_s", "latency_infer_p95_s", "latency_parts_train",
                   "latency_parts_infer")


def arm_table(runs: Runs, baseline: str = "none", caps: Mapping[str, float] | None = None,
              figures: Mapping[str, dict] | None = None) -> pd.DataFrame:
    """One row per arm (the report's table): label, run, module, sources, mb_sent,
    mb_received, coded_bytes_per_sample, eval_coded_bytes_per_sample (the method's payload:
    the rate in its paper's unit), samples_per_s_per_source (mean over sources), time_to_finish_s
    (= duration_s), final_loss, final_accuracy (= test_accuracy), max_cpu_share (lifetime),
    the ``headline`` figures, server_busy_fraction, pretrain_share, server_lr_scale,
    bound_by, bound_reason, lost_sources (the lost sources' ids, "none" when none),
    partial_note, the link and latency figures of TABLE_LINK_KEYS, traffic_ratio,
    throughput_ratio — all from ``arm_figures`` (``figures``, when already computed)."""
    figures = arm_figures(runs, caps) if figures is None else figures
    rows = []
    for label, fig in figures.items():
        top = headline(fig)
        rows.append({
            "label": label, "run": fig["run"], "module": fig["module"], "sources": fig["sources"],
            "mb_sent": fig["bytes_sent_total"] / MB, "mb_received": fig["bytes_received_total"] / MB,
            "coded_bytes_per_sample": fig["coded_bytes_per_sample"],
            "eval_coded_bytes_per_sample": fig["eval_coded_bytes_per_sample"],
            "samples_per_s_per_source": top["samples_per_s"], "time_to_finish_s": fig["duration_s"],
            "final_loss": fig["final_loss"], "final_accuracy": fig["test_accuracy"],
            "max_cpu_share": top["cpu_share_lifetime_max"], **top,
            "server_busy_fraction": fig["server_busy_fraction"], "pretrain_share": fig["pretrain_share"],
            "server_lr_scale": fig["server_lr_scale"], "bound_by": fig["bound_by"],
            "bound_reason": fig["bound_reason"], "lost_sources": lost_cell(fig),
            "partial_note": fig.get("partial_note"),
            **{key: fig.get(key) for key in TABLE_LINK_KEYS},
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
    """An arm's CPU cap: its summary.json, else the run's manifest; one number, or a list
    with one per source (``--cpu 0.4,0.2``)."""
    cap = runs.summaries.get(run, {}).get("arms", {}).get(arm, {}).get("cpu_cap")
    if cap is None:
        cap = runs.manifests.get(run, {}).get("spec", {}).get("cpu")
    if isinstance(cap, (list, tuple)):
        return [_float(c) for c in cap]
    return _float(cap)


def _per_source(cap, sources: list[int]) -> list:
    """Each source's cap from ``cpu_cap`` (one number for all, or a list cycled by source id)."""
    if isinstance(cap, (list, tuple)):
        return [cap[i % len(cap)] if cap else None for i in sources]
    return [cap] * len(sources)


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


def _known_sum(series: pd.Series) -> int | None:
    """The sum, or None where a row does not know it (traces written before it was traced)."""
    values = _num(series)
    return None if values.isna().any() else int(values.sum())


def _column_sum(rows: pd.DataFrame, column: str) -> int:
    return _int_sum(rows[column]) if column in rows else 0


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
