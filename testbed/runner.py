"""A run: its arms one after the other on one backend, then the manifest, the summary
(``summary.json`` and the table) and the report. The backend is the only part that
knows where the processes run (testbed/backend.py)."""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import uuid
from pathlib import Path

from workloads.data import dataset_kind

from . import __version__, backends
from .backend import Backend
from .errors import BackendError, BadInput, Exit, LostSources, interrupted, warn
from .errors import report as report_error
from .spec import RunSpec, data_in_use


def new_run_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def run(spec: RunSpec, say=print, backend: Backend | None = None) -> int:
    """Every arm of ``spec`` on ``backend`` (default: the spec's backend, opened from the
    registry); the exit status, or a TestbedError (BackendError, LostSources, BadInput)."""
    from analysis.summary import SummaryError, compare, summarise_arm

    from .traces import TraceError

    backend = backend or backends.get(spec.backend).open(spec, say)
    run_id = new_run_id()
    out = Path(spec.out or Path("runs") / run_id)
    make_folder(out)
    data = data_in_use(spec)
    if data.startswith("synthetic") and dataset_kind(spec.dataset).real:  # a real dataset's stand-in
        say(f"note: {data}; training on the deterministic synthetic CIFAR-shaped dataset")
    manifest = _manifest(spec, run_id, data, backend.name)
    _write_json(out / "manifest.json", manifest)
    cpu = ",".join(f"{c:g}" for c in spec.cpu) if isinstance(spec.cpu, tuple) else f"{spec.cpu:g}"
    say(f"run {run_id}: {spec.sources} sources at {cpu} CPU, arms {', '.join(spec.modules)} -> {out}")
    arms, status, lost = {}, "failed", []
    try:
        for module in spec.modules:
            result = backend.run_arm(module, out / module, run_id)
            manifest["cap"] = {"method": result.cap_method, "detail": result.cap_description}
            manifest.setdefault("arms", {})[module] = {"cap": manifest["cap"], "pinning": result.pinning,
                                                       "server_threads": result.server_threads}
            where = getattr(backend, "placement", {}).get(module)
            if where:  # a cluster run: the nodes its pods ran on
                manifest["arms"][module]["cluster"] = where
                manifest["host"] = _cluster_host(manifest["arms"])
                _write_json(out / "manifest.json", manifest)
            cap = None if result.cap_method == "none" else spec.cpu_cap  # --cap-method none: nothing to judge against
            arms[module] = summarise_arm(out / module, module, spec.sources, cap, result.cap_method)
            lost += [(module, e) for e in arms[module].get("lost_sources") or []]
        status = "lost-sources" if lost else "ok"
    except KeyboardInterrupt:
        status = "interrupted"
        return interrupted("every process was stopped")
    except (TraceError, SummaryError) as exc:
        raise BackendError(str(exc)) from None
    finally:
        try:
            backend.close()
        finally:
            manifest["status"] = status
            manifest["finished"] = dt.datetime.now().isoformat(timespec="seconds")
            _write_json(out / "manifest.json", manifest)
    code = _finish(out, {"run": run_id, "arms": arms, "comparison": compare(arms)}, say, draw=not spec.no_report)
    if lost:
        raise LostSources(f"{lost_message(lost, spec)}; summary " + ("written" if spec.no_report else "and report written"))
    return code


def lost_message(lost: list[tuple[str, dict]], spec=None) -> str:
    """One line naming every lost source of every arm and its cause:
    ``arm filter lost source 3 (killed by SIGKILL, injected by --drop 3@8)``."""
    from workloads.settings import drops

    planned = drops(getattr(spec, "drop", "") or "") if spec is not None else {}
    parts = []
    for module, event in lost:
        source = event["source"]
        why = event.get("cause") or "cause unknown"
        if event.get("injected"):
            why += f", injected by --drop {source}@{planned[source]:g}" if source in planned else ", injected by --drop"
        parts.append(f"arm {module} lost source {source} ({why})")
    return "; ".join(parts)


def _finish(out: Path, summary: dict, say, draw: bool = True) -> int:
    from analysis.summary import format_table

    _write_json(out / "summary.json", summary)
    say(format_table(summary))
    say(f"summary: {out / 'summary.json'}")
    if not draw:
        say(f"report: not drawn (--no-report); testbed report {out} draws it")
        return Exit.OK
    return report([out], "", say)


def collect_release(release: str, *, namespace: str = "", context: str | None = None, out: str = "",
                    say=print) -> int:
    """`testbed collect RELEASE`: a run directory from a release installed by hand."""
    from analysis.summary import SummaryError, compare, summarise_arm

    from .k8s import Cluster, KubernetesBackend, collect
    from .k8s.collect import placement
    from .traces import TraceError

    out = Path(out or Path("runs") / release)
    try:
        cluster = Cluster(namespace=namespace, context=context)
        staging = out / "_collecting"
        found = collect(cluster, release, staging)
        module = found["module"] or "unknown"
        staging.rename(out / module)
        where = placement(cluster, cluster.pods(release))
        manifest = {"run": release, "backend": KubernetesBackend.name, "release": release,
                    "namespace": cluster.namespace,
                    "arms": {module: {"cluster": where}}, "host": _cluster_host({module: {"cluster": where}}),
                    "collected": dt.datetime.now().isoformat(timespec="seconds"),
                    "spec": {"sources": found["sources"], "cpu": found["cpu_cap"], "modules": [module]},
                    "cap": {"method": "kubernetes", "detail": "resources.limits.cpu per source pod"}}
        _write_json(out / "manifest.json", manifest)
        arms = {module: summarise_arm(out / module, module, found["sources"], found["cpu_cap"], "kubernetes")}
    except (TraceError, SummaryError, OSError) as exc:
        raise BackendError(str(exc)) from None
    say(f"collected {found['pods']} pods of release {release} -> {out}")
    code = _finish(out, {"run": release, "arms": arms, "comparison": compare(arms)}, say)
    lost = [(module, e) for e in arms[module].get("lost_sources") or []]
    if lost:
        raise LostSources(f"{lost_message(lost)}; summary and report written")
    return code


def report(run_dirs, out: str, say=print) -> int:
    from analysis import RunDirError, write_report

    target = Path(out) if out else (Path(run_dirs[0]) / "report" if len(run_dirs) == 1
                                    else Path("runs") / ("report-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")))
    try:
        result = write_report(run_dirs, target)
    except RunDirError as exc:  # reported here: a run, a sweep or a reproduction that reports goes on
        return report_error(BadInput(str(exc)))
    for problem in result.problems:
        warn(problem)
    say(f"report: {result.markdown} ({len(result.figures) // 2} figures)")
    return Exit.OK


def _manifest(spec: RunSpec, run_id: str, data: str, backend: str) -> dict:
    import numpy
    import torch
    import zmq

    host = {"cores": os.cpu_count(), "platform": platform.platform(), "machine": platform.machine(),
            "cuda": torch.cuda.is_available()}
    return {
        "run": run_id,
        "started": dt.datetime.now().isoformat(timespec="seconds"),
        "command": sys.argv,
        "spec": spec.as_dict(),
        "data": data,
        "versions": {"splittest": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(), "numpy": numpy.__version__},
        **({"testbed_host": host, "host": {"nodes": "recorded as each arm ends (its pods' nodes)"}}
           if getattr(backends.BACKENDS.get(backend), "cluster_host", False) else {"host": host}),
        "backend": backend,
    }


def _cluster_host(arms: dict) -> dict:
    """The manifest's ``host`` of a cluster run: every node the arms' pods ran on (its
    allocatable CPU, CPU and GPU model), the pods on each, and the server's GPU model."""
    nodes, gpus = {}, []
    for arm in arms.values():
        where = arm.get("cluster") or {}
        for name, facts in (where.get("nodes") or {}).items():
            nodes.setdefault(name, {**facts, "pods": []})
        for pod, at in (where.get("pods") or {}).items():
            if at.get("node") in nodes:
                nodes[at["node"]]["pods"].append(pod)
        if where.get("server_gpu") and where["server_gpu"] not in gpus:
            gpus.append(where["server_gpu"])
    return {"nodes": nodes, "server_gpu": gpus[0] if len(gpus) == 1 else (gpus or None)}


def make_folder(folder: Path, what: str = "run directory", *, exist_ok: bool = False) -> None:
    """``folder`` made, or bad input naming it (a run directory must be new)."""
    try:
        folder.mkdir(parents=True, exist_ok=exist_ok)
    except OSError as exc:
        raise BadInput(f"cannot create {what} {folder}: {exc.strerror}") from None


def _write_json(path: Path, value) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


