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

from . import __version__
from .backend import Backend
from .spec import RunSpec, data_in_use

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_LOST_SOURCES = 3  # every arm finished and its summary and report are written, but sources were lost
EXIT_INTERRUPTED = 130


def new_run_id() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def run(spec: RunSpec, say=print, backend: Backend | None = None) -> int:
    """Every arm of ``spec`` on ``backend`` (default: local processes); the exit status."""
    from analysis.summary import SummaryError, compare, summarise_arm

    from .errors import BackendError
    from .local import LocalBackend
    from .traces import TraceError

    run_id = new_run_id()
    out = Path(spec.out or Path("runs") / run_id)
    try:
        out.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        print(f"testbed: error: cannot create run directory {out}: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    backend = backend or LocalBackend(spec, say)
    data = data_in_use(spec)
    if data.startswith("synthetic") and spec.dataset == "cifar10":
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
            manifest.setdefault("arms", {})[module] = {"cap": manifest["cap"], "pinning": result.pinning}
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
        print("testbed: interrupted; every process was stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (BackendError, TraceError, SummaryError) as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        manifest["status"] = status
        manifest["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        _write_json(out / "manifest.json", manifest)
    code = _finish(out, {"run": run_id, "arms": arms, "comparison": compare(arms)}, say)
    if lost:
        print(f"testbed: error: {lost_message(lost, spec)}; summary and report written", file=sys.stderr)
        return EXIT_LOST_SOURCES
    return code


def run_on_this_machine(spec: RunSpec, say=print) -> int:
    """A validated spec on the local or inproc backend (``testbed run``, and each trial of a sweep)."""
    if spec.backend == "inproc":
        from .inproc import InprocBackend
        return run(spec, say, InprocBackend(spec, say))
    if spec.sweep_bandwidth:
        return sweep_bandwidth(spec, say)
    return run(spec, say)


def sweep_bandwidth(spec: RunSpec, say=print, backend_for=None) -> int:
    """``--sweep-bandwidth``: every arm once per rate, each rate an ordinary run folder
    (``<out>/<rate>``), then one report over them all (``<out>/report``: throughput
    against bandwidth among its figures). The exit status: failed if a run failed, else
    lost-sources if one lost sources, else 0; Ctrl-C stops the sweep."""
    parent = Path(spec.out or Path("runs") / f"sweep-{new_run_id()}")
    try:
        parent.mkdir(parents=True, exist_ok=False)
    except OSError as exc:
        print(f"testbed: error: cannot create run directory {parent}: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    codes, folders = [], []
    for rate in [r.strip() for r in spec.sweep_bandwidth.split(",")]:
        one = RunSpec(**{**spec.values, "bandwidth": rate, "sweep_bandwidth": "",
                         "out": str(parent / rate.replace("/", "-"))})
        say(f"sweep: --bandwidth {rate}")
        code = run(one, say, backend_for(one) if backend_for else None)
        if code == EXIT_INTERRUPTED:
            return code
        codes.append(code)
        if (Path(one.out) / "summary.json").exists():
            folders.append(one.out)
    if folders:
        report(folders, str(parent / "report"), say)
    return EXIT_FAILED if EXIT_FAILED in codes else EXIT_LOST_SOURCES if EXIT_LOST_SOURCES in codes else \
        max(codes, default=EXIT_OK)


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


def _finish(out: Path, summary: dict, say) -> int:
    from analysis.summary import format_table

    _write_json(out / "summary.json", summary)
    say(format_table(summary))
    say(f"summary: {out / 'summary.json'}")
    return report([out], "", say)


def collect_release(release: str, *, namespace: str = "", context: str | None = None, out: str = "",
                    say=print) -> int:
    """`testbed collect RELEASE`: a run directory from a release installed by hand."""
    from analysis.summary import SummaryError, compare, summarise_arm

    from .k8s import Cluster, ClusterError, collect
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
        manifest = {"run": release, "backend": "k8s", "release": release, "namespace": cluster.namespace,
                    "arms": {module: {"cluster": where}}, "host": _cluster_host({module: {"cluster": where}}),
                    "collected": dt.datetime.now().isoformat(timespec="seconds"),
                    "spec": {"sources": found["sources"], "cpu": found["cpu_cap"], "modules": [module]},
                    "cap": {"method": "kubernetes", "detail": "resources.limits.cpu per source pod"}}
        _write_json(out / "manifest.json", manifest)
        arms = {module: summarise_arm(out / module, module, found["sources"], found["cpu_cap"], "kubernetes")}
    except (ClusterError, TraceError, SummaryError, OSError) as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    say(f"collected {found['pods']} pods of release {release} -> {out}")
    code = _finish(out, {"run": release, "arms": arms, "comparison": compare(arms)}, say)
    lost = [(module, e) for e in arms[module].get("lost_sources") or []]
    if lost:
        print(f"testbed: error: {lost_message(lost)}; summary and report written", file=sys.stderr)
        return EXIT_LOST_SOURCES
    return code


def report(run_dirs, out: str, say=print) -> int:
    from analysis import RunDirError, write_report

    target = Path(out) if out else (Path(run_dirs[0]) / "report" if len(run_dirs) == 1
                                    else Path("runs") / ("report-" + dt.datetime.now().strftime("%Y%m%d-%H%M%S")))
    try:
        result = write_report(run_dirs, target)
    except RunDirError as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for problem in result.problems:
        print(f"testbed: warning: {problem}", file=sys.stderr)
    say(f"report: {result.markdown} ({len(result.figures) // 2} figures)")
    return 0


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
           if backend == "k8s" else {"host": host}),
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


def _write_json(path: Path, value) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


