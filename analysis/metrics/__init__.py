"""Every figure of a run, computed from the DataFrames of :mod:`analysis.load`: ``summary.json``,
the table ``testbed run`` prints, ``report.md``, the plots, the sweep table and the notebooks all
take their numbers from here. What each figure is (its definition, unit, rounding, title and
where it is shown) is declared once, in :mod:`analysis.figures`.

One module per family of figures: :mod:`.sources` (the per-source figures: traffic, speed, CPU,
waits, start-up, memory, pre-training), :mod:`.speed` (over time: bytes, samples, rates, loss,
accuracy), :mod:`.server` (the server, the lost sources), :mod:`.linktrace` and :mod:`.link`
(the emulated link), :mod:`.latency`, :mod:`.adapt` (adaptive compression), :mod:`.bound` (what
bound the throughput); this one assembles an arm's figures (:func:`arm_figures`, the keys of an
arm in ``summary.json``), the ratios against the baseline arm and the table of the arms.
"""
from __future__ import annotations

import statistics
from collections.abc import Mapping

import pandas as pd

from ..figures import COLUMNS, rounded
from ..load import Runs
from .adapt import ADAPT_COLUMNS, ADAPT_KEYS, TARGET_TOLERANCE, adapt_figures, adapt_starts, adaptations
from .bound import (CAP, CAP_REACHED, HOST, LINK_FULL, NETWORK, ROUND_TRIP, SERVER, SERVER_BUSY, UNCAPPED,
                    WAIT_MOST, bound_by)
from .common import MB, _clean, _float, _mean, _missing, _nan
from .latency import INFER_PARTS, LATENCY_PARTS, ONE_WAY, latency_figures
from .link import LINK_KEYS, bandwidth_sweep, link_figures
from .linktrace import capacity_over_time, delivered_rate, link_labels, link_settings, link_trace_fidelity, \
    training_window
from .server import lost_sources, partial_note, server_figures
from .sources import coded_figures, cpu_share_computing, source_figures
from .speed import (accuracy_curves, binned_rates, budget_changes, cumulative_bytes, pooled_final_loss,
                    samples_over_time, samples_per_second, step_rates)

__all__ = [
    "ADAPT_COLUMNS", "ADAPT_KEYS", "CAP", "CAP_REACHED", "HOST", "INFER_PARTS", "LATENCY_PARTS", "LINK_FULL",
    "LINK_KEYS", "MB", "NETWORK", "ONE_WAY", "ROUND_TRIP", "SERVER", "SERVER_BUSY", "TARGET_TOLERANCE", "UNCAPPED",
    "WAIT_MOST", "accuracy_curves", "adapt_figures", "adapt_starts", "adaptations", "arm_figures", "arm_table",
    "bandwidth_sweep", "binned_rates", "bound_by", "budget_changes", "capacity_over_time", "coded_figures",
    "comparison", "cpu_share_computing", "cumulative_bytes", "delivered_rate", "latency_figures", "link_figures",
    "link_labels", "link_settings", "link_trace_fidelity", "lost_sources", "partial_note", "pooled_final_loss",
    "samples_over_time", "samples_per_second", "server_figures", "source_figures", "step_rates", "training_window",
]


def arm_figures(runs: Runs, caps: Mapping[str, float] | None = None) -> dict[str, dict]:
    """label -> that arm's figures, keyed as in ``summary.json`` (declared in
    :mod:`analysis.figures`), plus run, arm and label; sources is the number of traced
    sources. ``caps`` gives each label's CPU cap; by default the run's summary.json or
    manifest."""
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
        duration = rounded("duration_s", float(max(ended) - min(created))) if created and ended else None
        computing = [_clean(v) for v in s["cpu_share_computing"]]
        caps_of = _per_source(cap, [int(v) for v in s["source"]])
        over_cap = [rounded("cpu_share_over_cap_per_source", v / c) if v is not None and c else None
                    for v, c in zip(computing, caps_of)]
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
            "bytes_per_sample_sent": rounded("bytes_per_sample_sent", sent / samples) if samples else None,
            "bytes_per_sample_received": rounded("bytes_per_sample_received", received / samples)
            if samples else None,
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
            "memory_peak_mb_per_source": [_clean(v) for v in s["memory_peak_mb"]],
            "memory_limit_mb_per_source": [_clean(v) for v in s["memory_limit_mb"]],
            "pretrain_s_per_source": pretrain,
            "pretrain_steps_per_source": [int(v) for v in s["pretrain_steps"]],
            "pretrain_samples_per_source": [int(v) for v in s["pretrain_samples"]],
            "pretrain_share": rounded("pretrain_share", max(known_pretrain) / duration)
            if known_pretrain and duration else None,
            "duration_s": duration,
            "final_loss": losses.get(label),
            "test_accuracy": rounded("test_accuracy", statistics.fmean(accuracies)) if accuracies else None,
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


def comparison(base: Mapping, arm: Mapping) -> dict:
    """Ratios of an arm against the baseline arm (the figures of family "comparison"), from
    their figures."""
    base_rate = _mean(base["samples_per_s_per_source"])
    rate = _mean(arm["samples_per_s_per_source"])
    return {
        "traffic_ratio": _ratio("traffic_ratio", base["bytes_sent_total"] + base["bytes_received_total"],
                                arm["bytes_sent_total"] + arm["bytes_received_total"]),
        "traffic_ratio_sent": _ratio("traffic_ratio_sent", base["bytes_sent_total"], arm["bytes_sent_total"]),
        "traffic_ratio_received": _ratio("traffic_ratio_received", base["bytes_received_total"],
                                         arm["bytes_received_total"]),
        "throughput_ratio": _ratio("throughput_ratio", rate, base_rate) if rate and base_rate else None,
    }


def _ratio(name: str, numerator, denominator) -> float | None:
    return rounded(name, numerator / denominator) if denominator else None


def arm_table(runs: Runs, baseline: str = "none", caps: Mapping[str, float] | None = None,
              figures: Mapping[str, dict] | None = None) -> pd.DataFrame:
    """One row per arm (report.md's tables, the summary plot): label, run, then a column per
    declaration of :mod:`analysis.figures` under its name, in their order: a figure's value
    (a per-source figure that declares ``reduce``, that one number), a view's; the ratios
    against the baseline arm of the same run (else the first one loaded) where there is one.
    All from ``arm_figures`` (``figures``, when already computed)."""
    figures = arm_figures(runs, caps) if figures is None else figures
    rows = []
    for label, fig in figures.items():
        base = _baseline(figures, baseline, fig["run"])
        ratios = comparison(figures[base], fig) if base is not None else {}
        rows.append({"label": label, "run": fig["run"],
                     **{name: _nan(column.one(fig, ratios)) if getattr(column, "scope", None) == "comparison"
                        else column.one(fig, ratios) for name, column in COLUMNS.items()}})
    return pd.DataFrame(rows, columns=["label", "run", *COLUMNS])


def _baseline(figures: Mapping[str, dict], baseline: str, run: str) -> str | None:
    """The label of the baseline arm of the same run, else of the first one loaded."""
    arms = [label for label, fig in figures.items() if fig["module"] == baseline]
    same = [label for label in arms if figures[label]["run"] == run]
    return same[0] if same else (arms[0] if arms else None)


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
