"""Collecting an arm from the cluster: every pod's log is split into its trace events
(the JSON lines the programs print) and its other lines, and written in the local
backend's run-directory layout (server.jsonl, source-N.jsonl, logs/), so one schema
and one analysis serve both backends. A source pod that failed is a lost source: its
cause (the container's exit code and reason: OOMKilled, Error, ...) goes into the arm's
``testbed.jsonl`` as the local backend writes it; a source that ended because the server
was gone fails the arm instead."""
from __future__ import annotations

import json
import signal
from pathlib import Path

from analysis.jsonl import parse
from workloads import events as declared
from workloads.events import DROP, END, LOST, ROLE_TESTBED, START

from .cluster import Cluster, ClusterError

INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
SOURCE_ANNOTATION = "splittest/source-id"  # a source with a Job of its own (sources on different links)
BANDWIDTH_ANNOTATIONS = {"egress": "kubernetes.io/egress-bandwidth", "ingress": "kubernetes.io/ingress-bandwidth"}


def split_pod_log(text: str) -> tuple[list[str], list[str]]:
    """Trace events (JSON objects with an "event") and the other lines of a pod log."""
    events, other = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("{"):
            parsed = parse(stripped)
            if parsed is not None and "event" in parsed:
                events.append(stripped)
                continue
        if stripped:
            other.append(line)
    return events, other


def collect(cluster: Cluster, release: str, directory: Path, streamed=None) -> dict:
    """Write every pod's trace into ``directory`` (server.jsonl, source-N.jsonl, logs/)
    and return what was found: {"module", "sources", "pods", "cpu_cap", "lost"}.
    ``streamed`` (a ``LogStreamer``): the logs it streamed are used (whole, whatever the
    kubelet rotated), and the pods it saw count even when they are gone now; a pod it
    never followed is read from the log API (``testbed collect`` of a hand install)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "logs").mkdir(exist_ok=True)
    seen = dict(streamed.pods) if streamed is not None else {}
    try:
        listed = cluster.pods(release)
    except ClusterError:
        if not seen:
            raise
        listed = []  # the cluster is out of reach: what was streamed is what there is
    pods = list({**seen, **{p.metadata.name: p for p in listed}}.values())
    if not pods:
        raise ClusterError(f"release {release} has no pods in namespace {cluster.namespace} "
                           f"(finished pods are kept for the chart's ttlSecondsAfterFinished)")
    module, sources, cap, lost = None, 0, None, []
    for pod in pods:
        whose = trace_of(pod)
        if whose is None:
            continue  # the helm test probe
        component, index = whose
        if component == declared.ROLE_SERVER:
            name = "server"
        else:
            if index is None:
                raise ClusterError(f"source pod {pod.metadata.name} has neither a {INDEX_ANNOTATION} nor a "
                                   f"{SOURCE_ANNOTATION} annotation")
            name = f"source-{index}"
            sources += 1
            cap = cap or _cpu_limit(pod)
        text = streamed.text(pod.metadata.name) if streamed is not None else None
        if not text:  # never followed, or nothing came through the stream: the log API's copy
            try:
                text = cluster.pod_log(pod.metadata.name)
            except ClusterError:
                if text is None:
                    raise
        events, other = split_pod_log(text)
        (directory / f"{name}.jsonl").write_text("".join(e + "\n" for e in events))
        (directory / "logs" / f"{name}.log").write_text("".join(o + "\n" for o in other))
        parsed = [parse(line) for line in events]
        for event in parsed:
            if event.get("event") == START and event.get("module"):
                module = event["module"]
        if component == declared.ROLE_SOURCE and (pod.status.phase if pod.status else None) == "Failed":
            lost.append(lost_event(pod, index, parsed))
    if lost:
        with open(directory / "testbed.jsonl", "a", encoding="utf-8") as out:
            for event in sorted(lost, key=lambda e: e["t"]):
                out.write(json.dumps(event, separators=(",", ":")) + "\n")
    return {"module": module, "sources": sources, "pods": len(pods), "cpu_cap": cap, "lost": lost}


def trace_of(pod) -> tuple[str, int | None] | None:
    """Whose trace a pod's log holds, the one rule collection and the live view read it by: the
    server's, ("server", None); a source's, ("source", N) from its Job's completion index or
    its own source-id annotation; (role, None) for a source pod without either (its events'
    envelope says which); None for any other pod (the helm test probe)."""
    meta = getattr(pod, "metadata", None)
    component = ((getattr(meta, "labels", None) or {}).get("app.kubernetes.io/component"))
    if component == declared.ROLE_SERVER:
        return declared.ROLE_SERVER, None
    if component != declared.ROLE_SOURCE:
        return None
    annotations = getattr(meta, "annotations", None) or {}
    index = annotations.get(SOURCE_ANNOTATION, annotations.get(INDEX_ANNOTATION))
    try:
        return declared.ROLE_SOURCE, int(index)
    except (TypeError, ValueError):
        return declared.ROLE_SOURCE, None


def lost_event(pod, source: int, events: list[dict]) -> dict:
    """The ``lost`` event of a failed source pod, its cause from the pod's status (as the
    local backend words it: "killed by SIGKILL", "exit status 2: <the error>", with the
    container's reason when Kubernetes gives one: OOMKilled, Error, ...)."""
    end = [e for e in events if e.get("event") == END]
    if end and end[-1].get("status") == "server-gone":
        raise ClusterError(f"the server is gone: source pod {pod.metadata.name} (source {source}) ended with: "
                           f"{end[-1].get('error')}")
    terminated = None
    for container in (pod.status.container_statuses or []) if pod.status else []:
        if container.state and container.state.terminated:
            terminated = container.state.terminated
            break
    code = terminated.exit_code if terminated else None
    reason = (terminated.reason if terminated else None) or (pod.status.reason if pod.status else None)
    signame = None
    number = terminated.signal if terminated and terminated.signal else (code - 128 if code and code > 128 else None)
    if number:
        try:
            signame = signal.Signals(number).name
        except ValueError:
            signame = f"signal {number}"
    if reason == "OOMKilled":
        cause = f"out of memory (OOMKilled, exit code {code})"
        signame = signame or "SIGKILL"
    elif signame:
        cause = f"killed by {signame} (exit code {code}{f', {reason}' if reason else ''})"
    elif code is not None:
        error = end[-1].get("error") if end and end[-1].get("error") else (terminated.message or reason or "no error recorded")
        cause = f"exit status {code}: {error}"
    else:
        cause = f"the pod failed: {reason or 'no reason given'}{f' ({pod.status.message})' if pod.status.message else ''}"
    finished = terminated.finished_at if terminated and terminated.finished_at else None
    when = finished.timestamp() if finished else max((e.get("t", 0) for e in events), default=0)
    run = next((e.get("run") for e in events if e.get("run")), None)
    return {"t": round(when, 6), "run": run, "role": ROLE_TESTBED, "source": source, "event": LOST, "cause": cause,
            "signal": signame, "exit_status": None if signame else code, "reason": reason,
            "injected": any(e.get("event") == DROP for e in events)}


def _cpu_limit(pod) -> float | None:
    """A pod's CPU limit in cores ("400m" -> 0.4)."""
    limits = (pod.spec.containers[0].resources.limits or {}) if pod.spec and pod.spec.containers else {}
    value = limits.get("cpu")
    if value is None:
        return None
    return int(value[:-1]) / 1000 if value.endswith("m") else float(value)


def placement(cluster: Cluster, pods) -> dict:
    """Where an arm ran, for the manifest: each pod's node (and a source pod's bandwidth
    annotations, ``link``: {"egress": "5M", "ingress": "20M"}), and each node's allocatable
    CPU, CPU model (Node Feature Discovery's ``feature.node.kubernetes.io/cpu-model.*``
    labels when present, else the kubelet's ``status.nodeInfo``) and GPU model (the
    NVIDIA GPU feature discovery's ``nvidia.com/gpu.product``). A node that cannot be read
    is named with the reason, never fatal."""
    where, nodes = {}, {}
    for pod in sorted(pods, key=lambda p: p.metadata.name):
        labels = pod.metadata.labels or {}
        node = pod.spec.node_name if pod.spec else None
        where[pod.metadata.name] = {"component": labels.get("app.kubernetes.io/component"), "node": node}
        annotations = pod.metadata.annotations or {}
        link = {way: annotations[key] for way, key in BANDWIDTH_ANNOTATIONS.items() if key in annotations}
        if link:  # the rates the pod asked its CNI for (enforced only where the CNI chain shapes)
            where[pod.metadata.name]["link"] = link
        if node and node not in nodes:
            try:
                nodes[node] = node_facts(cluster.node(node))
            except ClusterError as exc:
                nodes[node] = {"error": str(exc)}
    server = [w["node"] for w in where.values() if w["component"] == "server" and w["node"]]
    return {"pods": where, "nodes": nodes,
            "server_gpu": (nodes.get(server[0]) or {}).get("gpu_product") if server else None}


def node_facts(node) -> dict:
    labels = node.metadata.labels or {}
    status = node.status
    info = status.node_info if status else None
    prefix = "feature.node.kubernetes.io/cpu-model."
    cpu_model = {k[len(prefix):]: v for k, v in sorted(labels.items()) if k.startswith(prefix)}
    return {"allocatable_cpu": ((status.allocatable or {}) if status else {}).get("cpu"),
            "capacity_cpu": ((status.capacity or {}) if status else {}).get("cpu"),
            "cpu_model": cpu_model or None,
            "architecture": info.architecture if info else labels.get("kubernetes.io/arch"),
            "kernel": info.kernel_version if info else None, "os_image": info.os_image if info else None,
            "container_runtime": info.container_runtime_version if info else None,
            "kubelet": info.kubelet_version if info else None,
            "instance_type": labels.get("node.kubernetes.io/instance-type"),
            "gpu_product": labels.get("nvidia.com/gpu.product"), "gpu_count": labels.get("nvidia.com/gpu.count")}
