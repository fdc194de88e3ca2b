"""The local backend: one offload server and N data sources as processes on this
machine, each source under a real CPU cap, the server optionally on cores of its own
(``--server-cpus``). Everything started here is stopped here, on success, on failure
and on Ctrl-C, and a second Ctrl-C or a SIGTERM during that cleanup waits for it."""
from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from pathlib import Path

from workloads import events, settings

from .backend import ArmResult, Backend
from .cpucap import CapError, available_cpus, make_cap, oversubscription
from .errors import BackendError, warn
from .signals import signals_deferred
from .joining import Join, joined
from .keys import make_run_keys
from .memcap import MemoryCap, make_memory_cap
from .links.arm import CONTROLLER, ArmLinks, profile_delay_warning
from .links.network import NetworkError, probe_kernel, remove_stale
from .links.plan import LinkPlan, plan_links
from .processes import (POLL_S, STOP_GRACE_S, Fleet, describe_exit, server_cpus, server_threads,
                        signal_group, torch_threads)
from .progress import Progress, open_progress
from .spec import RunSpec, SpecError, check_host, check_links_here
from .traces import read_events
from .warmparent import spawn_method

SOURCE_PROGRAM = "workloads.source"
SERVER_READY_TIMEOUT_S = 180.0
SERVER_EXIT_TIMEOUT_S = 30.0


class LocalBackend(Backend):
    """Each arm as processes on this machine."""
    name = "local"

    def __init__(self, spec: RunSpec, say=print):
        self.spec, self.say = spec, say
        self._checked = False
        self.keys = ""  # the run's CURVE key folder, made with the first arm ("" with --insecure)
        self.links = plan_links(spec.values, spec.sources)  # None: loopback, no emulated link
        self.kernel: dict = {}

    def run_arm(self, module: str, directory: Path, run_id: str) -> ArmResult:
        s = self.spec
        if not self._checked:  # once per run, before anything starts
            self._checked = True
            if not s.insecure:
                self.keys = str(make_run_keys(directory.parent))
            cores = len(available_cpus())
            warning = oversubscription(s.sources, s.cpus, cores, server_cpus(s))
            if warning and server_cpus(s) < cores:  # else run_arm refuses the run, which says enough
                warn(warning)
            if self.links is not None:
                remove_stale(say=warn)
                self.kernel = probe_kernel()
                warning = profile_delay_warning(self.links, self.kernel)
                if warning:
                    warn(warning)
        threads, why = server_threads(s)
        self.say(f"arm {module}: starting the server ({threads} torch thread{'s' if threads != 1 else ''}: {why}) "
                 f"and {s.sources} sources ({'forked from a warm parent' if spawn_method(s) == 'fork' else 'exec'})")
        progress = open_progress(directory, module, s, self.say)
        try:
            return run_arm(s, module, directory, run_id, progress=progress, warn=warn, keys=self.keys,
                           links=self.links, kernel=self.kernel)
        finally:
            if progress is not None:
                progress.close()


def largest_message(spec, module: str) -> int:
    """The largest message of an arm on the wire: the float32 gradient of a batch at the cut."""
    from workloads.data import INPUT_SHAPE
    from workloads.models import build_split_model
    from workloads.transport import largest_reply

    cut = build_split_model(spec.model, spec.split_for(module), 10).cut_shape if spec.split_for(module) else INPUT_SHAPE
    return largest_reply(spec.batch_size, cut)


def run_arm(spec: RunSpec, module: str, directory: Path, run_id: str, *, progress: Progress | None,
            warn=warn, keys: str = "", links: LinkPlan | None = None, kernel: dict | None = None) -> ArmResult:
    """One arm: the server, then the sources; ``keys``: the run's CURVE key folder ("": plaintext);
    ``links``: every source behind its own emulated link (testbed/links/), else loopback."""
    directory.mkdir(parents=True, exist_ok=True)
    pinned = server_cpus(spec)
    options = spec.workload_options(module)
    arm_links = ArmLinks(links, kernel or {}, directory) if links is not None else None
    # the server listens on loopback only (or its own address on the emulated network); with keys,
    # only the run's sources get an answer
    address = arm_links.server_address if arm_links else "127.0.0.1"
    options.update(run_id=f"{run_id}/{module}", server=f"tcp://{address}:{spec.port}", expect_sources=spec.sources,
                   bind=address, keys=keys)
    if links is not None:
        options["heartbeat_timeout"] = links.heartbeat_timeout_s(largest_message(spec, module),
                                                                 floor_s=settings.option("heartbeat-timeout").default)
    fleet = Fleet(directory)
    cap = memory = None
    built = False
    try:
        with signals_deferred():  # cgroups made are cgroups recorded, for release()
            try:
                cap = make_cap(spec.cap_method, spec.cpus, spec.sources, warn=warn, server_cpus=pinned)
                memory = make_memory_cap(spec.memories, cap.tag, getattr(cap, "groups", None),
                                         cpu_version=getattr(cap, "version", 0))
            except CapError as exc:
                raise BackendError(str(exc)) from None
            if arm_links is not None:  # namespaces made are namespaces removed, whatever happens next
                built = True
                try:
                    arm_links.build()
                except NetworkError as exc:
                    raise BackendError(str(exc)) from None
        parent = None
        if spawn_method(spec) == "fork":  # its imports run while the server starts
            split = cap.pinning.split  # pinned: on the sources' cores, not the server's
            parent = fleet.warm_parent("launcher", [SOURCE_PROGRAM], Join(cpus=split.sources) if split else None,
                                       data=(spec.dataset, spec.data_dir) if spec.data_dir else None)
        server_trace = directory / "server.jsonl"
        server_options = {**options, "trace": str(server_trace)}
        threads, why = server_threads(spec)
        server_options["threads"] = threads
        server_env = {"OMP_NUM_THREADS": str(threads)}
        # the cgroup first, then the namespace: a cgroup is joined through the host's cgroup filesystem
        server = fleet.start("server", "workloads.server", settings.to_argv(server_options, "server"),
                             join_cap=joined(cap.server_preexec(), arm_links and arm_links.server_join()),
                             env=server_env, trace=server_trace)
        _wait_for_server(fleet, server, server_trace)
        controller = None
        if arm_links is not None:  # the trace-driven rates and the counters, from the sources' start
            controller = fleet.start(CONTROLLER, "testbed.links.controller", arm_links.controller_argv())
        sources = []
        for i in range(spec.sources):
            trace = directory / f"source-{i}.jsonl"
            threads = torch_threads(spec.cpus[i])
            argv = settings.to_argv({**options, "source_id": i, "threads": threads, "trace": str(trace),
                                     "own_interface": arm_links is not None}, "source")
            proc = fleet.start(f"source-{i}", SOURCE_PROGRAM, argv,
                               join_cap=joined(cap.preexec(i), memory.join(i),
                                               arm_links and arm_links.source_join(i)),
                               env={"OMP_NUM_THREADS": str(threads)}, trace=trace, parent=parent)
            cap.started(i, proc.pid)
            sources.append(proc)
        if parent is not None:
            parent.close()  # no more sources: it exits once they have
        lost = _wait_for_sources(fleet, server, sources, directory, progress, memory=memory, run=options["run_id"],
                                 notice_s=heartbeat_timeout(options) + NOTICE_MARGIN_S)
        _record_memory(memory, spec.sources, directory, options["run_id"])
        if arm_links is not None:
            try:
                arm_links.stop_controller(controller, lambda: fleet.log_tail(CONTROLLER))
                arm_links.finish()
            except NetworkError as exc:
                raise BackendError(str(exc)) from None
        if lost:  # the server waits for byes that will never come: finish it
            signal_group(server, signal.SIGTERM)
        try:
            server.wait(timeout=SERVER_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BackendError("the server did not exit after every source said bye"
                               + (" and it was told to finish" if lost else "")) from None
        if server.returncode != 0:
            raise BackendError(describe_exit("the server", fleet, "server"))
        result = ArmResult(module, directory, cap.method, cap.describe(), cap.pinning.as_dict(),
                           {"threads": threads, "why": why})
        return result
    finally:
        with signals_deferred():  # a second Ctrl-C or a SIGTERM waits for the cleanup
            every_step(lambda: fleet.stop(cap),
                       memory and memory.release,  # v2: its limits live in the CPU cap's groups, removed next
                       cap and cap.release,
                       built and (lambda: _remove_links(arm_links, warn)))


def every_step(*steps) -> None:
    """Each step given (None and False left out), in order, even when one before it failed;
    then the first failure is raised."""
    failure = None
    for step in steps:
        if not step:
            continue
        try:
            step()
        except BaseException as exc:  # noqa: BLE001 -- raised once every step has run
            failure = failure or exc
    if failure is not None:
        raise failure


def _remove_links(arm_links, warn) -> None:
    try:
        arm_links.remove()
    except NetworkError as exc:
        warn(str(exc))


def _wait_for_server(fleet: Fleet, server: subprocess.Popen, trace: Path) -> None:
    deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BackendError(describe_exit("the server", fleet, "server", " before listening"))
        if any(e.get("event") == events.LISTENING for e in read_events(trace, strict=False)):
            return
        time.sleep(POLL_S)
    raise BackendError(f"the server was not listening after {SERVER_READY_TIMEOUT_S:.0f} s")


SERVER_GONE_STATUS = 3  # workloads.source's exit status when it lost the server
NOTICE_MARGIN_S = 3.0  # a source notices a dead server within its heartbeat timeout plus its probe


def heartbeat_timeout(options: dict) -> float:
    """The programs' --heartbeat-timeout in this arm (its declared default unless a link raised it)."""
    return options.get("heartbeat_timeout") or settings.option("heartbeat-timeout").default


SOURCES_NOTICE_S = settings.option("heartbeat-timeout").default + NOTICE_MARGIN_S


def _wait_for_sources(fleet: Fleet, server, sources, directory: Path, progress: Progress | None, *,
                      memory: MemoryCap | None = None, run: str = "", notice_s: float = SOURCES_NOTICE_S) -> list[dict]:
    """Until every source has ended. A source that dies (a signal, a non-zero exit) is
    lost: it is traced in ``testbed.jsonl`` and the others go on. A server that dies, or
    a source that says the server is gone, fails the arm. The lost sources' events."""
    pending, lost = set(range(len(sources))), []
    while pending:
        if server.poll() not in (None, 0):  # 0: it left after the last bye
            _let_sources_notice([sources[i] for i in pending], notice_s)
            raise BackendError(describe_exit("the server", fleet, "server", " while sources were running"))
        for i in sorted(pending):
            code = sources[i].poll()
            if code is None:
                continue
            pending.discard(i)
            if code == 0:
                continue
            if code == SERVER_GONE_STATUS:  # the server died (name it), or it runs but does not answer
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.wait(timeout=STOP_GRACE_S)
                if server.returncode not in (None, 0):
                    raise BackendError(describe_exit("the server", fleet, "server", " while sources were running"))
                raise BackendError(f"the server stopped answering: source {i} exited with status {code}: "
                                   f"{fleet.exit_cause(f'source-{i}')}")
            lost.append(_record_lost(fleet, i, directory, memory, run))
        if progress is not None:
            progress.update()
        if pending:
            time.sleep(POLL_S)
    if progress is not None:
        progress.update()
    if lost and len(lost) == len(sources):
        raise BackendError("every source was lost: " + "; ".join(f"source {e['source']} {e['cause']}" for e in lost))
    return lost


def _let_sources_notice(running, grace_s: float = SOURCES_NOTICE_S) -> None:
    """The server died: its sources notice within seconds (heartbeats, the closed
    connection) and end with a ``server-gone`` event; give them that long before they
    are stopped, so that every trace says how it ended."""
    deadline = time.monotonic() + grace_s
    for proc in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))


def _record_lost(fleet: Fleet, i: int, directory: Path, memory: MemoryCap | None, run: str) -> dict:
    """Source ``i`` died: its ``lost`` event, appended to the arm's testbed.jsonl."""
    name = f"source-{i}"
    code = fleet.procs[name].returncode
    cause = fleet.exit_cause(name)
    signame = None
    if code < 0:
        try:
            signame = signal.Signals(-code).name
        except ValueError:
            signame = f"signal {-code}"
        if code == -signal.SIGKILL and memory is not None and memory.oom_killed(i):
            limit = memory.limit_text(i)
            cause = f"killed by SIGKILL: out of memory ({f'limit {limit}' if limit else 'no limit of its own'})"
    else:
        cause = f"exit status {code}: {cause}"
    trace = fleet.traces.get(name)
    injected = trace is not None and any(e.get("event") == events.DROP for e in read_events(trace, strict=False))
    event = {"t": round(time.time(), 6), "run": run, "role": events.ROLE_TESTBED, "source": i, "event": events.LOST,
             "cause": cause, "signal": signame, "exit_status": code if code >= 0 else None, "injected": injected}
    _append(directory, event)
    return event


def _record_memory(memory: MemoryCap, sources: int, directory: Path, run: str) -> None:
    """Each source's ``memory`` event, where it had a memory group (testbed/memcap.py)."""
    if not memory.measures:
        return
    for i in range(sources):
        limit = memory.limit_text(i)
        _append(directory, {"t": round(time.time(), 6), "run": run, "role": events.ROLE_TESTBED, "source": i,
                            "event": events.MEMORY, "peak_bytes": memory.peak_bytes(i),
                            "limit_bytes": memory.limit_bytes(i), "limit": limit,
                            "oom_killed": memory.oom_killed(i), "method": memory.method})


def _append(directory: Path, event: dict) -> None:
    with open(directory / "testbed.jsonl", "a", encoding="utf-8") as out:
        out.write(json.dumps(event, separators=(",", ":")) + "\n")


def refuses(spec: RunSpec) -> None:
    """Nothing: what the local backend cannot take, only this host can say (check_spec)."""


def check_spec(spec: RunSpec, links) -> None:
    """What only this host can say: its cores, the data folder, the port, and for emulated
    links its kernel and rights. A claim is the cluster's."""
    if spec.data_pvc:
        raise SpecError("--data-pvc is for the k8s backend; locally give the folder with --data-dir")
    check_host(spec)
    if links is not None:
        check_links_here(links)
