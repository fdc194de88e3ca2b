"""The link figures of an arm (LINK_KEYS): NIC bytes, TCP/IP overhead, wire bytes per training
sample, what the link allows each source and how full it was; the bandwidth sweep."""
from __future__ import annotations

import statistics
from collections.abc import Mapping

import pandas as pd

from ..figures import one, rounded
from ..load import Runs
from .common import MB, _mean, _missing, _num
from .linktrace import _capacity_series, _link_rows, _step_mean, capacity_over_time, link_settings, \
    link_trace_fidelity, training_window
from .sources import source_figures

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
    """(run, arm) -> the link figures declared in analysis/figures.py (LINK_KEYS; all None for an
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
            "nic_bytes_per_sample": rounded("nic_bytes_per_sample", wire / crossed) if len(have) and crossed else None,
            "tcpip_overhead": rounded("tcpip_overhead", wire / stream - 1) if len(have) and stream else None,
            "wire_bytes_per_training_sample_sent": rounded("wire_bytes_per_training_sample_sent", wire_sent / counted)
            if counted else None,
            "wire_bytes_per_training_sample_received": rounded("wire_bytes_per_training_sample_received",
                                                               wire_received / counted) if counted else None,
            "link_limit_samples_per_s_per_source": [
                None if limits.get(int(v)) is None else rounded("link_limit_samples_per_s_per_source", limits[int(v)])
                for v in s["source"]],
            "link_use": rounded("link_use", statistics.fmean(uses)) if uses else None,
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


def bandwidth_sweep(figures: Mapping[str, dict]) -> pd.DataFrame:
    """One row per arm with a link, from the arms' figures (``arm_figures``): run, label, module, up_bps, down_bps (the
    views link_up_bps and link_down_bps of analysis/figures.py), samples_per_s
    (mean over sources), link_limit (mean over sources), link_use; sorted by module and rate.
    The throughput_vs_bandwidth figure draws it when the runs differ in rate."""
    columns = ["run", "label", "module", "up_bps", "down_bps", "samples_per_s", "link_limit", "link_use"]
    rows = []
    for label, fig in figures.items():
        if fig.get("link") is None:
            continue
        rate = {d: one(f"link_{d}_bps", fig) for d in ("up", "down")}
        if rate["up"] is None and rate["down"] is None:
            continue
        rows.append({"run": fig["run"], "label": label, "module": fig["module"], "up_bps": rate["up"],
                     "down_bps": rate["down"], "samples_per_s": _mean(fig["samples_per_s_per_source"]),
                     "link_limit": _mean(fig.get("link_limit_samples_per_s_per_source") or []),
                     "link_use": fig.get("link_use")})
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["module", "up_bps", "down_bps"], kind="stable").reset_index(drop=True)
