"""The process toolkit every backend on this machine uses: start a program as a child of
its own (its log, its session, an environment free of SPLITTEST_* variables, joined to
its cgroups and namespace before exec, ended with the testbed), stop a fleet of them, and
say in one line why one ended. The local backend, the in-process backend and sweep trials
start their processes through it."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from workloads import events
from workloads.option import ENV_PREFIX

from .errors import BackendError
from .joining import Join, joined
from .pinning import available_cpus
from .signals import signals_deferred
from .traces import read_events
from .warmparent import ForkedProcess, WarmParent

STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long
POLL_S = 0.25
PR_SET_PDEATHSIG = 1
PREEXEC_MARK = "testbed: before exec: "  # how a child's preexec failure reaches its log


def torch_threads(cores: float) -> int:
    """The torch threads of a program capped at ``cores``: the cap rounded up (a capped
    program gains nothing from more)."""
    return max(1, int(cores + 0.999))


def server_cpus(spec) -> int:
    """``--server-cpus`` (0: the server is not pinned)."""
    return int(getattr(spec, "server_cpus", 0) or 0)


def server_threads(spec) -> tuple[int, str]:
    """The server's torch threads and why, in words: ``--server-threads``; else its own
    cores when pinned (``--server-cpus``); else every core this process may use. The
    sources wait for their replies while the server computes (a server-bound run: 96% of
    each step in the default run), so those cores are the server's while it works:
    measured here (2 cores), one epoch of the default run of 8 sources at 0.4 CPU gave
    13.4 (none) and 14.8 (filter) samples/s per source with 2 threads against 10.9 and 10.5
    with 1, the server busy 99-100% either way (benchmarks/server_capacity.py measures the
    server alone)."""
    given = int(getattr(spec, "server_threads", 0) or 0)
    if given:
        return given, f"--server-threads {given}"
    pinned = server_cpus(spec)
    if pinned:
        return pinned, f"its {pinned} pinned core{'s' if pinned != 1 else ''} (--server-cpus)"
    cores = len(available_cpus())
    return cores, f"the {cores} core{'s' if cores != 1 else ''} of this host, which its sources leave while they " \
                  f"wait for replies (--server-threads sets it)"


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
        self.parents: dict[str, WarmParent] = {}
        self._logs = []

    def log_path(self, name: str) -> Path:
        return self.directory / "logs" / f"{name}.log"

    def warm_parent(self, name: str, modules: list[str], join: Join | None = None,
                    data: tuple[str, str] | None = None) -> WarmParent:
        """A ``testbed.launcher`` that has imported ``modules`` (and read ``data``, (dataset,
        data dir), once for all), to fork processes from (``start(..., parent=...)``), joined
        to ``join`` before exec; it is stopped with the fleet, after its children."""
        log = open(self.log_path(name), "wb")
        self._logs.append(log)
        with signals_deferred():
            try:
                proc = subprocess.Popen([sys.executable, "-m", "testbed.launcher", "--run", str(self.directory),
                                         *(["--data", *data] if data else []), *modules], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=log, preexec_fn=joined(die_with_parent, join),
                                        start_new_session=True, env=child_environment())
            except OSError as exc:
                raise BackendError(f"cannot start {name}: {exc.strerror or exc}") from None
            self.procs[name] = proc
            self.parents[name] = WarmParent(proc, lambda: describe_exit("", self, name).strip())
        return self.parents[name]

    def start(self, name: str, module: str, argv: list[str], *, join_cap: Join | None = None, env=None,
              trace: Path | None = None, parent: WarmParent | None = None) -> subprocess.Popen | ForkedProcess:
        """Start ``python -m module argv`` with a log of its own, in a session of its own,
        joined to its cgroups and namespace (``join_cap``) before its program runs, with an
        environment free of SPLITTEST_* variables: exec'd, or forked from ``parent`` (a
        warm_parent). A failure is a BackendError that says what failed."""
        if parent is not None:
            parent.wait_ready(name)  # Ctrl-C stays prompt while it imports
            with signals_deferred():
                proc = parent.fork(name, module, argv, log=self.log_path(name), env=child_environment(env),
                                   join=join_cap)
                self.procs[name] = proc
                if trace is not None:
                    self.traces[name] = trace
            return proc
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

    def stop(self, cap=None) -> None:
        """SIGTERM to every process still running, SIGKILL after STOP_GRACE_S; ``cap``: the
        testbed.cpucap.Cap they run under."""
        if cap is not None:
            cap.before_stop()  # e.g. resume what it suspended: a suspended process would not see SIGTERM
        children = [p for name, p in self.procs.items() if name not in self.parents]
        for group in (children, [parent.proc for parent in self.parents.values()]):  # a parent after its children
            running = [p for p in group if p.poll() is None]
            for proc in running:
                signal_group(proc, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_S
            for proc in running:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    signal_group(proc, signal.SIGKILL)
                    proc.wait()
        for parent in self.parents.values():
            parent.close()
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


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the child leads its own session
    except ProcessLookupError:
        pass


def describe_exit(who: str, fleet: Fleet, name: str, when: str = "") -> str:
    """``who`` ended: how, in one line ("the server exited with status 2: <its error>")."""
    proc = fleet.procs[name]
    cause = fleet.exit_cause(name)
    if proc.returncode < 0:
        return f"{who} was {cause}{when}"
    return f"{who} exited with status {proc.returncode}{when}: {cause}"
