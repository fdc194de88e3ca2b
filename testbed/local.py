"""The local backend: one offload server and N data sources as processes on this
machine, each source under a real CPU cap. Everything started here is stopped here,
on success, on failure and on Ctrl-C."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from workloads import settings

from .cpucap import Cap, SuspendResumeCap, make_cap
from .errors import BackendError
from .progress import Progress
from .spec import RunSpec
from .traces import read_events

SERVER_READY_TIMEOUT_S = 180.0
SERVER_EXIT_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0
POLL_S = 0.25
PR_SET_PDEATHSIG = 1


@dataclass
class ArmResult:
    module: str
    directory: Path
    cap_method: str
    cap_description: str


class LocalBackend:
    """Each arm as processes on this machine."""
    name = "local"

    def __init__(self, spec: RunSpec, say=print):
        self.spec, self.say = spec, say

    def run_arm(self, module: str, directory: Path, run_id: str) -> ArmResult:
        s = self.spec
        progress = Progress(directory, module, s.sources, s.batches, s.epochs, write=self.say) \
            if self.say is print else None
        self.say(f"arm {module}: starting the server and {s.sources} sources")
        return run_arm(s, module, directory, run_id, progress=progress, warn=lambda m: print(m, file=sys.stderr))


def _die_with_parent() -> None:
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
        self._logs = []

    def start(self, name: str, module: str, argv: list[str], *, join_cap=None, env=None) -> subprocess.Popen:
        log = open(self.directory / "logs" / f"{name}.log", "wb")
        self._logs.append(log)

        def preexec() -> None:
            _die_with_parent()
            if join_cap is not None:
                join_cap()

        proc = subprocess.Popen([sys.executable, "-m", module, *argv], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, preexec_fn=preexec,
                                start_new_session=True, env={**os.environ, **(env or {})})
        self.procs[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 5) -> str:
        path = self.directory / "logs" / f"{name}.log"
        try:
            text = path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:])

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


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the child leads its own session
    except ProcessLookupError:
        pass


def run_arm(spec: RunSpec, module: str, directory: Path, run_id: str, *, progress: Progress | None,
            warn=print) -> ArmResult:
    directory.mkdir(parents=True, exist_ok=True)
    options = spec.workload_options(module)
    options.update(run_id=f"{run_id}/{module}", port=spec.port, device=spec.device,
                   server=f"tcp://127.0.0.1:{spec.port}", expect_sources=spec.sources)
    fleet = Fleet(directory)
    cap = None
    try:
        server_trace = directory / "server.jsonl"
        server = fleet.start("server", "workloads.server",
                             settings.to_argv({**options, "trace": str(server_trace)}, "server"))
        _wait_for_server(fleet, server, server_trace)
        cap = make_cap(spec.cap_method, spec.cpu, spec.sources, warn=warn)
        threads = max(1, int(spec.cpu + 0.999))  # a capped source gains nothing from more threads
        sources = []
        for i in range(spec.sources):
            argv = settings.to_argv({**options, "source_id": i, "threads": threads,
                                     "trace": str(directory / f"source-{i}.jsonl")}, "source")
            proc = fleet.start(f"source-{i}", "workloads.source", argv, join_cap=cap.preexec(i),
                               env={"OMP_NUM_THREADS": str(threads)})
            cap.started(i, proc.pid)
            sources.append(proc)
        _wait_for_sources(fleet, server, sources, directory, progress)
        try:
            server.wait(timeout=SERVER_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BackendError("the server did not exit after every source said bye") from None
        if server.returncode != 0:
            raise BackendError(f"the server exited with status {server.returncode}: {fleet.log_tail('server')}")
        return ArmResult(module, directory, cap.method, cap.describe())
    finally:
        fleet.stop(cap)
        if cap is not None:
            cap.release()


def _wait_for_server(fleet: Fleet, server: subprocess.Popen, trace: Path) -> None:
    deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BackendError(f"the server exited with status {server.returncode} before listening: "
                               f"{fleet.log_tail('server')}")
        if any(e.get("event") == "listening" for e in read_events(trace, strict=False)):
            return
        time.sleep(POLL_S)
    raise BackendError(f"the server was not listening after {SERVER_READY_TIMEOUT_S:.0f} s")


def _wait_for_sources(fleet: Fleet, server, sources, directory: Path, progress: Progress | None) -> None:
    pending = set(range(len(sources)))
    while pending:
        for i in sorted(pending):
            code = sources[i].poll()
            if code is None:
                continue
            if code != 0:
                raise BackendError(f"source {i} exited with status {code}: {fleet.log_tail(f'source-{i}')}")
            pending.discard(i)
        if pending and server.poll() not in (None, 0):  # 0: it left after the last bye
            raise BackendError(f"the server exited with status {server.returncode} while sources were running: "
                               f"{fleet.log_tail('server')}")
        if progress is not None:
            progress.update()
        if pending:
            time.sleep(POLL_S)
    if progress is not None:
        progress.update()
