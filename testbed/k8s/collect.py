"""Collecting an arm from the cluster: every pod's log is split into its trace events
(the JSON lines the programs print) and its other lines, and written in the local
backend's run-directory layout (server.jsonl, source-N.jsonl, logs/), so one schema
and one analysis serve both backends."""
from __future__ import annotations

import json
from pathlib import Path

from .cluster import Cluster, ClusterError

INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def split_pod_log(text: str) -> tuple[list[str], list[str]]:
    """Trace events (JSON objects with an "event") and the other lines of a pod log."""
    events, other = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("{"):
            try:
                parsed = json.loads(stripped)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and "event" in parsed:
                events.append(stripped)
                continue
        if stripped:
            other.append(line)
    return events, other


def collect(cluster: Cluster, release: str, directory: Path) -> dict:
    """Write every pod's trace into ``directory`` (server.jsonl, source-N.jsonl, logs/)
    and return what was found: {"module", "sources", "pods", "cpu_cap"}."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "logs").mkdir(exist_ok=True)
    pods = cluster.pods(release)
    if not pods:
        raise ClusterError(f"release {release} has no pods in namespace {cluster.namespace} "
                           f"(finished pods are kept for the chart's ttlSecondsAfterFinished)")
    module, sources, cap = None, 0, None
    for pod in pods:
        labels = pod.metadata.labels or {}
        component = labels.get("app.kubernetes.io/component")
        if component == "server":
            name = "server"
        elif component == "source":
            index = (pod.metadata.annotations or {}).get(INDEX_ANNOTATION)
            if index is None:
                raise ClusterError(f"source pod {pod.metadata.name} has no {INDEX_ANNOTATION} annotation")
            name = f"source-{int(index)}"
            sources += 1
            cap = cap or _cpu_limit(pod)
        else:
            continue  # the helm test probe
        events, other = split_pod_log(cluster.pod_log(pod.metadata.name))
        (directory / f"{name}.jsonl").write_text("".join(e + "\n" for e in events))
        (directory / "logs" / f"{name}.log").write_text("".join(o + "\n" for o in other))
        for line in events:
            event = json.loads(line)
            if event.get("event") == "start" and event.get("module"):
                module = event["module"]
    return {"module": module, "sources": sources, "pods": len(pods), "cpu_cap": cap}


def _cpu_limit(pod) -> float | None:
    """A pod's CPU limit in cores ("400m" -> 0.4)."""
    limits = (pod.spec.containers[0].resources.limits or {}) if pod.spec and pod.spec.containers else {}
    value = limits.get("cpu")
    if value is None:
        return None
    return int(value[:-1]) / 1000 if value.endswith("m") else float(value)
