"""From an arm's traces to the numbers of ``summary.json`` and the table at the end.

Bytes are the exact stream bytes the sources traced for training steps (eval and
control traffic are reported apart). Throughput per source is samples over the time
spent in training steps, leaving out the first (warm-up) batch.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from .traces import TraceError, read_events


def summarise_arm(directory: Path, module: str, sources: int, cpu_cap: float, cap_method: str) -> dict:
    per_source = [_source_figures(directory / f"source-{i}.jsonl") for i in range(sources)]
    samples = sum(s["samples"] for s in per_source)
    served = [e for e in read_events(directory / "server.jsonl") if e.get("event") == "end"]
    starts = [s["created"] for s in per_source]
    ends = [s["ended"] for s in per_source]
    return {
        "module": module,
        "sources": sources,
        "cpu_cap": cpu_cap,
        "cap_method": cap_method,
        "bytes_sent_total": sum(s["bytes_sent"] for s in per_source),
        "bytes_received_total": sum(s["bytes_received"] for s in per_source),
        "samples_total": samples,
        "bytes_per_sample_sent": round(sum(s["bytes_sent"] for s in per_source) / samples, 3),
        "bytes_per_sample_received": round(sum(s["bytes_received"] for s in per_source) / samples, 3),
        "split": per_source[0]["split"],
        "payload_sent_total": sum(s["payload_sent"] for s in per_source),
        "payload_received_total": sum(s["payload_received"] for s in per_source),
        "eval_bytes_sent_total": sum(s["eval_sent"] for s in per_source),
        "eval_bytes_received_total": sum(s["eval_received"] for s in per_source),
        "control_bytes_total": sum(s["control"] for s in per_source),
        "samples_per_s_per_source": [s["samples_per_s"] for s in per_source],
        "cpu_share_per_source": [s["cpu_share"] for s in per_source],
        "startup_s_per_source": [s["startup_s"] for s in per_source],
        "peak_rss_mb_per_source": [s["peak_rss_mb"] for s in per_source],
        "duration_s": round(max(ends) - min(starts), 3),
        "final_loss": _mean(s["final_loss"] for s in per_source),
        "test_accuracy": _mean(s["test_accuracy"] for s in per_source),
        "budgets": sorted({b for s in per_source for b in s["budgets"]}),
        "requests_served": served[-1].get("served") if served else None,
        "data": per_source[0]["data"],
    }


def _source_figures(path: Path) -> dict:
    events = read_events(path)
    by_kind: dict[str, list[dict]] = {}
    for event in events:
        by_kind.setdefault(event.get("event"), []).append(event)
    start, end = _one(by_kind, "start", path), _one(by_kind, "end", path)
    if end.get("status") != "ok":
        raise TraceError(f"{path}: the source ended with status {end.get('status')}: {end.get('error', '')}")
    batches = by_kind.get("batch", [])
    if not batches:
        raise TraceError(f"{path}: no batch was traced")
    measured = [b for b in batches if not b.get("warmup")]
    busy = sum(b["duration_s"] for b in measured)
    evals = by_kind.get("eval", [])
    last_epoch = batches[-1]["epoch"]
    last_losses = [b["loss"] for b in batches if b["epoch"] == last_epoch and b.get("loss") is not None]
    control = sum(e.get("bytes_sent", 0) + e.get("bytes_received", 0) for e in
                  by_kind.get("connected", []) + by_kind.get("bye", []))
    data = by_kind.get("data", [{}])[0]
    return {
        "created": start["process_created"],
        "ended": end["t"],
        "samples": sum(b["samples"] for b in batches),
        "split": start.get("split"),
        "bytes_sent": sum(b["bytes_sent"] for b in batches),
        "bytes_received": sum(b["bytes_received"] for b in batches),
        "payload_sent": sum(b["payload_sent"] for b in batches),
        "payload_received": sum(b["payload_received"] for b in batches),
        "eval_sent": sum(e["bytes_sent"] for e in evals),
        "eval_received": sum(e["bytes_received"] for e in evals),
        "control": control,
        "samples_per_s": round(sum(b["samples"] for b in measured) / busy, 3) if busy > 0 else None,
        "cpu_share": end.get("cpu_share"),
        "startup_s": round(batches[0]["t"] - start["process_created"], 3),
        "peak_rss_mb": end.get("peak_rss_mb"),
        "final_loss": statistics.fmean(last_losses) if last_losses else None,
        "test_accuracy": evals[-1]["accuracy"] if evals else None,
        "budgets": [b["budget"] for b in batches],
        "data": {"origin": data.get("origin"), "synthetic": data.get("synthetic")},
    }


def _one(by_kind: dict, kind: str, path: Path) -> dict:
    if kind not in by_kind:
        raise TraceError(f"{path}: no '{kind}' event (did the source die?)")
    return by_kind[kind][-1]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.fmean(values), 6) if values else None


def compare(arms: dict[str, dict], baseline: str = "none") -> dict | None:
    """Traffic and throughput of every module arm against the baseline arm."""
    if baseline not in arms or len(arms) < 2:
        return None
    base = arms[baseline]
    by_module = {}
    for name, arm in arms.items():
        if name == baseline:
            continue
        traffic = arm["bytes_sent_total"] + arm["bytes_received_total"]
        base_rate, rate = _mean(base["samples_per_s_per_source"]), _mean(arm["samples_per_s_per_source"])
        by_module[name] = {
            "traffic_ratio": round((base["bytes_sent_total"] + base["bytes_received_total"]) / traffic, 3),
            "traffic_ratio_sent": round(base["bytes_sent_total"] / arm["bytes_sent_total"], 3),
            "traffic_ratio_received": round(base["bytes_received_total"] / arm["bytes_received_total"], 3),
            "throughput_ratio": round(rate / base_rate, 3) if rate and base_rate else None,
        }
    first = next(iter(by_module))
    return {"baseline": baseline, "module": first, **by_module[first], "by_module": by_module}


ROWS = (
    ("split", lambda a: a["split"], "{}"),
    ("bytes sent (MB)", lambda a: a["bytes_sent_total"] / 1e6, "{:.3f}"),
    ("bytes received (MB)", lambda a: a["bytes_received_total"] / 1e6, "{:.3f}"),
    ("bytes per sample, sent", lambda a: a["bytes_per_sample_sent"], "{:.1f}"),
    ("bytes per sample, received", lambda a: a["bytes_per_sample_received"], "{:.1f}"),
    ("wire / payload", lambda a: (a["bytes_sent_total"] + a["bytes_received_total"])
     / max(1, a["payload_sent_total"] + a["payload_received_total"]), "{:.4f}"),
    ("eval bytes (MB)", lambda a: (a["eval_bytes_sent_total"] + a["eval_bytes_received_total"]) / 1e6, "{:.3f}"),
    ("samples/s per source", lambda a: _mean(a["samples_per_s_per_source"]), "{:.2f}"),
    ("CPU share per source (max)", lambda a: max(v for v in a["cpu_share_per_source"] if v is not None), "{:.3f}"),
    ("start-up to 1st batch (s)", lambda a: _mean(a["startup_s_per_source"]), "{:.1f}"),
    ("peak memory per source (MB)", lambda a: max(a["peak_rss_mb_per_source"]), "{:.0f}"),
    ("duration (s)", lambda a: a["duration_s"], "{:.1f}"),
    ("final loss", lambda a: a["final_loss"], "{:.4f}"),
    ("test accuracy", lambda a: a["test_accuracy"], "{:.3f}"),
)


def format_table(summary: dict) -> str:
    arms = summary["arms"]
    names = list(arms)
    width = max(len(r[0]) for r in ROWS) + 2
    lines = [" " * width + "".join(f"{n:>14}" for n in names)]
    for label, get, fmt in ROWS:
        cells = []
        for name in names:
            try:
                value = get(arms[name])
                cells.append(f"{fmt.format(value):>14}" if value is not None else f"{'-':>14}")
            except (TypeError, ValueError, KeyError):
                cells.append(f"{'-':>14}")
        lines.append(f"{label:<{width}}" + "".join(cells))
    comparison = summary.get("comparison")
    if comparison:
        for name, c in comparison["by_module"].items():
            lines.append(f"{name} vs {comparison['baseline']}: traffic ratio {c['traffic_ratio']:.1f}x "
                         f"(sent {c['traffic_ratio_sent']:.1f}x, received {c['traffic_ratio_received']:.1f}x), "
                         f"throughput ratio {c['throughput_ratio'] if c['throughput_ratio'] is not None else '-'}")
    return "\n".join(lines)
