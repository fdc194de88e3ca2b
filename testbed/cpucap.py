"""CPU caps for local data sources: a real limit per process.

- cgroup v2: a ``cpu.max`` of ``quota period`` in a cgroup of its own per source;
- cgroup v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in the ``cpu`` controller;
- otherwise (no rights to make cgroups): a feedback loop that suspends a process
  when it has used more than its share and resumes it when the share allows
  (a token bucket with a small burst credit).

A process joins its cgroup in the child between fork and exec, so it runs capped
from its first instruction (and ``ip netns exec`` cannot hide the cgroup later).
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import psutil

PERIOD_US = 100_000          # CFS period: 100 ms, the kernel's default
MIN_QUOTA_US = 1_000         # the kernel refuses quotas below 1 ms
CGROUP_ROOT = Path("/sys/fs/cgroup")
METHODS = ("auto", "cgroup", "psutil", "none")


class CapError(RuntimeError):
    pass


def quota_us(cores: float) -> int:
    return max(MIN_QUOTA_US, round(cores * PERIOD_US))


class Cap:
    """A cap of ``cores`` for each of a set of processes, by some method."""
    method = "none"

    def __init__(self, cores: float):
        self.cores = cores

    def preexec(self, index: int):
        """A function the child runs before exec (None: nothing to do)."""
        return None

    def started(self, index: int, pid: int) -> None:
        """The process for ``index`` runs with ``pid``."""

    def release(self) -> None:
        """Undo everything (processes must have exited)."""

    def describe(self) -> str:
        return "no CPU cap"


class CgroupCap(Cap):
    """One cgroup per process under a parent made for this run."""

    def __init__(self, cores: float, count: int, version: int, root: Path, tag: str):
        super().__init__(cores)
        self.version, self.method = version, f"cgroup-v{version}"
        self.parent = root / f"splittest-{tag}"
        self.groups: list[Path] = []
        try:
            if version == 2:
                _enable_cpu(root)
            self.parent.mkdir()
            if version == 2:
                _enable_cpu(self.parent)
            for i in range(count):
                group = self.parent / f"source-{i}"
                group.mkdir()
                if version == 2:
                    (group / "cpu.max").write_text(f"{quota_us(cores)} {PERIOD_US}\n")
                else:
                    (group / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
                    (group / "cpu.cfs_quota_us").write_text(f"{quota_us(cores)}\n")
                self.groups.append(group)
        except OSError as exc:
            self.release()
            raise CapError(f"cannot set up cgroup v{version} under {root}: {exc.strerror or exc}") from None

    def preexec(self, index: int):
        procs = str(self.groups[index] / "cgroup.procs")

        def join() -> None:  # runs in the child, before exec
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        return join

    def release(self) -> None:
        for group in reversed(self.groups):
            _rmdir(group)
        self.groups = []
        _rmdir(self.parent)

    def describe(self) -> str:
        return f"{self.method}: {quota_us(self.cores)} us per {PERIOD_US} us under {self.parent}"


def _enable_cpu(group: Path) -> None:
    control = group / "cgroup.subtree_control"
    if "cpu" not in control.read_text().split():
        control.write_text("+cpu\n")


def _rmdir(path: Path) -> None:
    # A cgroup directory is removed with rmdir even though it lists files.
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # still busy for a moment after its last process exited
            time.sleep(0.02)


class SuspendResumeCap(Cap):
    """Token bucket per process: credit grows by ``cores`` per second of wall time (up
    to a small burst), CPU time spent is taken from it; below zero the process is
    suspended until the credit is back."""
    method = "psutil"
    TICK_S = 0.01
    BURST_S = 0.02  # credit cap, in seconds of CPU: bounds how far above the cap a burst can go

    def __init__(self, cores: float):
        super().__init__(cores)
        self._procs: dict[int, psutil.Process] = {}
        self._credit: dict[int, float] = {}
        self._last_cpu: dict[int, float] = {}
        self._suspended: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu-cap", daemon=True)
        self._thread.start()

    def started(self, index: int, pid: int) -> None:
        with self._lock:
            try:
                proc = psutil.Process(pid)
                self._last_cpu[pid] = sum(proc.cpu_times()[:2])
            except psutil.Error:
                return
            self._procs[pid] = proc
            self._credit[pid] = 0.0

    def _loop(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.TICK_S):
            now = time.monotonic()
            elapsed, last = now - last, now
            with self._lock:
                for pid, proc in list(self._procs.items()):
                    try:
                        cpu = sum(proc.cpu_times()[:2])
                        used, self._last_cpu[pid] = cpu - self._last_cpu[pid], cpu
                        credit = min(self.BURST_S, self._credit[pid] + self.cores * elapsed - used)
                        self._credit[pid] = credit
                        if credit < 0 and pid not in self._suspended:
                            proc.suspend()
                            self._suspended.add(pid)
                        elif credit >= 0 and pid in self._suspended:
                            proc.resume()
                            self._suspended.discard(pid)
                    except psutil.Error:  # exited: forget it
                        self._procs.pop(pid, None)
                        self._suspended.discard(pid)

    def resume_all(self) -> None:
        with self._lock:
            for pid in list(self._suspended):
                try:
                    self._procs[pid].resume()
                except (psutil.Error, KeyError):
                    pass
            self._suspended.clear()
            self._procs.clear()

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
        self.resume_all()

    def describe(self) -> str:
        return f"psutil: suspend/resume feedback loop every {self.TICK_S * 1000:.0f} ms"


def make_cap(method: str, cores: float, count: int, *, root: Path = CGROUP_ROOT, tag: str | None = None,
             warn=print) -> Cap:
    """A cap by ``method`` (auto: cgroup v2, then v1, then psutil with a warning)."""
    if method not in METHODS:
        raise CapError(f"unknown cap method {method!r}; known: {', '.join(METHODS)}")
    if method == "none":
        return Cap(cores)
    if method == "psutil":
        return SuspendResumeCap(cores)
    tag = tag or uuid.uuid4().hex[:8]
    errors = []
    for version, base in ((2, root), (1, root / "cpu")):
        if not _has_controller(version, base):
            continue
        try:
            return CgroupCap(cores, count, version, base, tag)
        except CapError as exc:
            errors.append(str(exc))
    reason = "; ".join(errors) or f"no cgroup cpu controller under {root}"
    if method == "cgroup":
        raise CapError(reason)
    warn(f"warning: cannot cap CPU with cgroups ({reason}); falling back to suspending and resuming "
         f"processes (psutil), which is coarser")
    return SuspendResumeCap(cores)


def _has_controller(version: int, base: Path) -> bool:
    if version == 2:
        controllers = base / "cgroup.controllers"
        return controllers.is_file() and "cpu" in controllers.read_text().split()
    return (base / "cpu.cfs_quota_us").is_file()
