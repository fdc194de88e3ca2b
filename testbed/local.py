"""The local backend: one offload server and N data sources as processes on this
machine, each source under a real CPU cap, the server optionally on cores of its own
(``--server-cpus``). Everything started here is stopped here, on success, on failure
and on Ctrl-C, and a second Ctrl-C or a SIGTERM during that cleanup waits for it."""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from workloads import events, settings

from .backend import ArmResult
from .cpucap import Cap, CapError, SuspendResumeCap, available_cpus, make_cap, oversubscription
from .errors import BackendError
from .signals import signals_deferred
from .keys import make_run_keys
from .links.arm import CONTROLLER, ArmLinks, profile_delay_warning
from .links.network import NetworkError, probe_kernel, remove_stale
from .links.plan import LinkPlan, plan_links
from .progress import Progress
from .spec import RunSpec, SpecError, check_host, check_links_here, planned_links
from .traces import read_events

SERVER_READY_TIMEOUT_S = 180.0
SERVER_EXIT_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
POLL_S = 0.25
PR_SET_PDEATHSIG = 1
PREEXEC_MARK = "testbed: before exec: "  # how a child's preexec failure reaches its log
ENV_PREFIX = "SPLITTEST_"


class LocalBackend:
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
        warn = lambda m: print(m, file=sys.stderr)  # noqa: E731
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
        progress = Progress(directory, module, s.sources, s.batches, s.epochs, write=self.say) \
            if self.say is print else None
        self.say(f"arm {module}: starting the server and {s.sources} sources")
        return run_arm(s, module, directory, run_id, progress=progress, warn=warn, keys=self.keys,
                       links=self.links, kernel=self.kernel)


def server_cpus(spec) -> int:
    """``--server-cpus`` (0: the server is not pinned)."""
    return int(getattr(spec, "server_cpus", 0) or 0)


def largest_message(spec, module: str) -> int:
    """The largest message of an arm on the wire: the float32 gradient of a batch at the cut."""
    from workloads.data import INPUT_SHAPE
    from workloads.models import build_split_model
    from workloads.transport import largest_reply

    cut = build_split_model(spec.model, spec.split_for(module), 10).cut_shape if spec.split_for(module) else INPUT_SHAPE
    return largest_reply(spec.batch_size, cut)


def server_thread_count(spec) -> int:
    """The server's torch threads: its own cores when pinned, else the cores the sources'
    caps leave free (at least 1). More threads than free cores make each step wait for
    threads preempted by the sources: measured here with 2 sources at 0.4 CPU on 2 cores,
    the filter arm's server step took 0.79 s with 2 threads against 0.19 s for the same
    tail while the sources idled."""
    pinned = server_cpus(spec)
    if pinned:
        return pinned
    return max(1, int(len(available_cpus()) - sum(spec.cpus) + 1e-9))


def child_environment(extra: dict | None = None) -> dict:
    """This environment without any SPLITTEST_* variable: every option the programs
    get is on their command line, none comes silently from the user's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(extra or {})
    return env


def die_with_parent() -> None:
    """Ask the kernel to end this child if the testbed itself dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not glibc/Linux: the reply timeouts still end the sources
        pass


class Fleet:
    """The processes of one arm; ``stop`` ends whatever still runs."""

    def __init__(self, directory: Path):
        self.directory = directory
        (directory / "logs").mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.traces: dict[str, Path] = {}
        self._logs = []

    def log_path(self, name: str) -> Path:
        return self.directory / "logs" / f"{name}.log"

    def start(self, name: str, module: str, argv: list[str], *, join_cap=None, env=None,
              trace: Path | None = None) -> subprocess.Popen:
        """Start ``python -m module argv`` with a log of its own, in a session of its own,
        joined to its cgroups (``join_cap``) before exec, with an environment free of
        SPLITTEST_* variables. A failure is a BackendError that says what failed."""
        log = open(self.log_path(name), "wb")
        self._logs.append(log)

        def preexec() -> None:  # in the child, between fork and exec
            die_with_parent()
            if join_cap is not None:
                try:
                    join_cap()
                except BaseException as exc:
                    # subprocess only says "Exception occurred in preexec_fn": fd 2 is the log already
                    os.write(2, f"{PREEXEC_MARK}{exc}\n".encode(errors="replace"))
                    raise

        with signals_deferred():  # a process started is a process recorded, for stop()
            try:
                proc = subprocess.Popen([sys.executable, "-m", module, *argv], stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec,
                                        start_new_session=True, env=child_environment(env))
            except subprocess.SubprocessError as exc:  # the preexec failed; the child has been reaped
                raise BackendError(f"cannot start {name}: {self._preexec_failure(name) or exc}") from None
            except OSError as exc:
                raise BackendError(f"cannot start {name}: {exc.strerror or exc}") from None
            self.procs[name] = proc
            if trace is not None:
                self.traces[name] = trace
        return proc

    def _preexec_failure(self, name: str) -> str:
        try:
            lines = self.log_path(name).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        found = [line[len(PREEXEC_MARK):] for line in lines if line.startswith(PREEXEC_MARK)]
        return found[-1].strip() if found else ""

    def log_tail(self, name: str, lines: int = 5) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:])

    def exit_cause(self, name: str) -> str:
        """Why ``name`` ended: see ``exit_cause``."""
        proc = self.procs[name]
        return exit_cause(proc.returncode, self.traces.get(name), self.log_path(name))

    def stop(self, cap: Cap | None = None) -> None:
        if isinstance(cap, SuspendResumeCap):
            cap.resume_all()  # a suspended process would not see SIGTERM
        running = [p for p in self.procs.values() if p.poll() is None]
        for proc in running:
            _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait()
        for log in self._logs:
            log.close()


def exit_cause(returncode: int, trace: Path | None, log: Path) -> str:
    """The cause of a process's end, best first: the signal that killed it, the error
    of its trace's ``end`` event, the last line of a Python traceback in its log, and
    only then the log's last lines."""
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    if trace is not None:
        for event in reversed(read_events(trace, strict=False)):
            if event.get("event") == events.END and event.get("status") == "error" and event.get("error"):
                return str(event["error"])
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    raised = _traceback_line(lines)
    if raised:
        return raised
    tail = " | ".join(line.strip() for line in lines[-5:] if line.strip())
    return f"no error recorded; its log ends: {tail}" if tail else "no error recorded and no output"


def _traceback_line(lines: list[str]) -> str:
    """The exception line of the last Python traceback in ``lines`` ('' if none)."""
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    if not starts:
        return ""
    for line in lines[starts[-1] + 1:]:
        if line.strip() and not line[0].isspace():
            return line.strip()
    return ""


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the child leads its own session
    except ProcessLookupError:
        pass


def _describe_exit(who: str, fleet: Fleet, name: str, when: str = "") -> str:
    proc = fleet.procs[name]
    cause = fleet.exit_cause(name)
    if proc.returncode < 0:
        return f"{who} was {cause}{when}"
    return f"{who} exited with status {proc.returncode}{when}: {cause}"


def run_arm(spec: RunSpec, module: str, directory: Path, run_id: str, *, progress: Progress | None,
            warn=print, keys: str = "", links: LinkPlan | None = None, kernel: dict | None = None) -> ArmResult:
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
    cap = None
    built = False
    try:
        with signals_deferred():  # cgroups made are cgroups recorded, for release()
            try:
                cap = make_cap(spec.cap_method, spec.cpus, spec.sources, warn=warn, server_cpus=pinned)
            except CapError as exc:
                raise BackendError(str(exc)) from None
            if arm_links is not None:  # namespaces made are namespaces removed, whatever happens next
                built = True
                try:
                    arm_links.build()
                except NetworkError as exc:
                    raise BackendError(str(exc)) from None
        server_trace = directory / "server.jsonl"
        server_options = {**options, "trace": str(server_trace)}
        server_threads = server_thread_count(spec)
        server_options["threads"] = server_threads
        server_env = {"OMP_NUM_THREADS": str(server_threads)}
        server = fleet.start("server", "workloads.server", settings.to_argv(server_options, "server"),
                             join_cap=_then(cap.server_preexec(), arm_links and arm_links.server_join()),
                             env=server_env, trace=server_trace)
        _wait_for_server(fleet, server, server_trace)
        controller = None
        if arm_links is not None:  # the trace-driven rates and the counters, from the sources' start
            controller = fleet.start(CONTROLLER, "testbed.links.controller", arm_links.controller_argv())
        sources = []
        for i in range(spec.sources):
            trace = directory / f"source-{i}.jsonl"
            threads = max(1, int(spec.cpus[i] + 0.999))  # a capped source gains nothing from more threads
            argv = settings.to_argv({**options, "source_id": i, "threads": threads, "trace": str(trace),
                                     "own_interface": arm_links is not None}, "source")
            proc = fleet.start(f"source-{i}", "workloads.source", argv,
                               join_cap=_then(cap.preexec(i), arm_links and arm_links.source_join(i)),
                               env={"OMP_NUM_THREADS": str(threads)}, trace=trace)
            cap.started(i, proc.pid)
            sources.append(proc)
        lost = _wait_for_sources(fleet, server, sources, directory, progress, cap=cap, run=options["run_id"],
                                 notice_s=heartbeat_timeout(options) + NOTICE_MARGIN_S)
        if arm_links is not None:
            try:
                arm_links.stop_controller(controller, lambda: fleet.log_tail(CONTROLLER))
                arm_links.finish()
            except NetworkError as exc:
                raise BackendError(str(exc)) from None
        if lost:  # the server waits for byes that will never come: finish it
            _signal(server, signal.SIGTERM)
        try:
            server.wait(timeout=SERVER_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BackendError("the server did not exit after every source said bye"
                               + (" and it was told to finish" if lost else "")) from None
        if server.returncode != 0:
            raise BackendError(_describe_exit("the server", fleet, "server"))
        result = ArmResult(module, directory, cap.method, cap.describe(), cap.pinning.as_dict())
        return result
    finally:
        with signals_deferred():  # a second Ctrl-C or a SIGTERM waits for the cleanup
            try:
                fleet.stop(cap)
            finally:
                try:
                    if cap is not None:
                        cap.release()
                finally:
                    if built:
                        try:
                            arm_links.remove()
                        except NetworkError as exc:
                            warn(f"testbed: warning: {exc}")


def _then(first, second):
    """Both preexec steps, in order: the cgroup first, then the network namespace (a
    cgroup is joined by the host's cgroup filesystem, which the child still sees)."""
    steps = [step for step in (first, second) if step]
    if len(steps) < 2:
        return steps[0] if steps else None

    def both() -> None:
        for step in steps:
            step()
    return both


def _wait_for_server(fleet: Fleet, server: subprocess.Popen, trace: Path) -> None:
    deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BackendError(_describe_exit("the server", fleet, "server", " before listening"))
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
                      cap: Cap | None = None, run: str = "", notice_s: float = SOURCES_NOTICE_S) -> list[dict]:
    """Until every source has ended. A source that dies (a signal, a non-zero exit) is
    lost: it is traced in ``testbed.jsonl`` and the others go on. A server that dies, or
    a source that says the server is gone, fails the arm. The lost sources' events."""
    pending, lost = set(range(len(sources))), []
    while pending:
        if server.poll() not in (None, 0):  # 0: it left after the last bye
            _let_sources_notice([sources[i] for i in pending], notice_s)
            raise BackendError(_describe_exit("the server", fleet, "server", " while sources were running"))
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
                    raise BackendError(_describe_exit("the server", fleet, "server", " while sources were running"))
                raise BackendError(f"the server stopped answering: source {i} exited with status {code}: "
                                   f"{fleet.exit_cause(f'source-{i}')}")
            lost.append(_record_lost(fleet, i, directory, cap, run))
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


def _record_lost(fleet: Fleet, i: int, directory: Path, cap: Cap | None, run: str) -> dict:
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
        if code == -signal.SIGKILL and oom_killed(cap, i):
            cause = "killed by SIGKILL: out of memory (the cgroup's memory.events counts an oom_kill)"
    else:
        cause = f"exit status {code}: {cause}"
    trace = fleet.traces.get(name)
    injected = trace is not None and any(e.get("event") == events.DROP for e in read_events(trace, strict=False))
    event = {"t": round(time.time(), 6), "run": run, "role": events.ROLE_TESTBED, "source": i, "event": events.LOST,
             "cause": cause, "signal": signame, "exit_status": code if code >= 0 else None, "injected": injected}
    with open(directory / "testbed.jsonl", "a", encoding="utf-8") as out:
        out.write(json.dumps(event, separators=(",", ":")) + "\n")
    return event


def oom_killed(cap: Cap | None, i: int) -> bool:
    """Whether the kernel's OOM killer ended a process of source ``i``'s cgroup (cgroup
    v2 ``memory.events``, where the source's group has the memory controller)."""
    groups = getattr(cap, "groups", None) or []
    if i >= len(groups):
        return False
    try:
        text = (Path(groups[i]) / "memory.events").read_text()
    except OSError:
        return False
    counts = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
    return int(counts.get("oom_kill", "0")) > 0


def check_spec(spec: RunSpec) -> None:
    """What only this host can say: its cores and the port, and for emulated links its
    kernel and rights. A claim is the cluster's."""
    if spec.data_pvc:
        raise SpecError("--data-pvc is for the k8s backend; locally give the folder with --data-dir")
    check_host(spec)
    links = planned_links(spec)
    if links is not None:
        check_links_here(links)
