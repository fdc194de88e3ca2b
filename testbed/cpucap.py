"""CPU caps for local data sources: a real limit per process, and optionally cores
of its own for the offload server.

- cgroup v2: a ``cpu.max`` of ``quota period`` in a cgroup of its own per source;
- cgroup v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in the ``cpu`` controller;
- otherwise (no rights to make cgroups): a feedback loop that suspends a process
  when it has used more than its share and resumes it when the share allows
  (a token bucket with a small burst credit).

Pinning (``--server-cpus N``) is pinning.py's, the cgroup filesystem cgroups.py's. A
process joins its cgroups in the child between fork and exec, so it runs capped and
pinned from its first instruction.
"""

import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Sequence

import psutil

from .cgroups import CGROUP_ROOT, enable, has_controller, has_cpuset, remove_tree, write
from . import errors
from .errors import CapError
from .pinning import (AffinityPinning, CoreSplit, CpusetPinning, Pinning, TreePinning,  # noqa: F401 (re-exported)
                      available_cpus, cpu_list, make_pinning, split_cores)
from .joining import join_cgroup, joined

PERIOD_US = 100_000          # CFS period: 100 ms, the kernel's default
MIN_QUOTA_US = 1_000         # the kernel refuses quotas below 1 ms
METHODS = ("auto", "cgroup", "psutil", "none")


def quota_us(cores: float) -> int:
    return max(MIN_QUOTA_US, round(cores * PERIOD_US))


def oversubscription(sources: int, cores: float | Sequence[float], host_cores: int,
                     server_cpus: int = 0) -> str | None:
    """One warning (errors.warn prefixes it) when the sources' caps (one for all, or one per source) plus what
    the server needs (1 core unpinned, its own ``server_cpus`` pinned) exceed the host's
    cores; else None."""
    if isinstance(cores, (list, tuple)) and len(set(cores)) == 1:
        cores = cores[0]
    if isinstance(cores, (list, tuple)):
        need_sources = sum(cores[i % len(cores)] for i in range(sources))
        cores_text = f"({'+'.join(f'{c:g}' for c in cores[:sources])} CPU)"
    else:
        need_sources = sources * cores
        cores_text = f"× {cores:g} CPU"
    if server_cpus:
        room = host_cores - server_cpus
        if need_sources <= room + 1e-9:
            return None
        return (f"{sources} sources {cores_text} need {need_sources:.3g} cores, the sources "
                f"have {room} (this host has {host_cores}, {server_cpus} pinned to the server): sources will get "
                f"less than their cap (the summary's bound_by says what bound the throughput)")
    need = need_sources + 1
    if need <= host_cores + 1e-9:
        return None
    return (f"{sources} sources {cores_text} + the server need ≥ {need:.3g} cores, this host "
            f"has {host_cores}: sources will get less than their cap (the summary's bound_by says what bound the throughput)")


class Cap:
    """A cap of ``cores`` for each of a set of processes (one number for all, or one per
    process index, cycled), by some method, and where the server and the sources run
    (``pinning``)."""
    method = "none"
    tag = ""  # the run's mark in the names of its cgroups (splittest-TAG), as make_cap chose it

    def __init__(self, cores: float | Sequence[float]):
        self.cores = tuple(cores) if isinstance(cores, (list, tuple)) else cores
        self.pinning: Pinning = Pinning()

    def cores_of(self, index: int) -> float:
        return self.cores[index % len(self.cores)] if isinstance(self.cores, tuple) else self.cores

    def preexec(self, index: int):
        """A function source ``index`` runs before exec (None: nothing to do)."""
        return joined(self._join(index), self.pinning.source_join(index))

    def server_preexec(self):
        """A function the server runs before exec (None: nothing to do)."""
        return self.pinning.server_join()

    def _join(self, index: int):
        return None

    def started(self, index: int, pid: int) -> None:
        """The process for ``index`` runs with ``pid``."""

    def before_stop(self) -> None:
        """What must happen before the processes are signalled to stop."""

    def release(self) -> None:
        """Undo everything (processes must have exited)."""
        try:
            self._release()
        finally:
            self.pinning.release()

    def _release(self) -> None:
        pass

    def describe(self) -> str:
        pinned = self.pinning.describe()
        return f"{pinned}; {self._describe()}" if pinned else self._describe()

    def _describe(self) -> str:
        return "no CPU cap"


class CgroupCap(Cap):
    """One cgroup per process under a parent made for this run. With ``split`` (v2
    only) the same groups carry the sources' cpuset, and a ``server`` group the
    server's."""

    def __init__(self, cores: float | Sequence[float], count: int, version: int, root: Path, tag: str,
                 split: CoreSplit | None = None):
        super().__init__(cores)
        if split is not None and version != 2:
            raise ValueError("a v1 CgroupCap leaves cpusets to CpusetPinning")
        self.version, self.method = version, f"cgroup-v{version}"
        self.parent = root / f"splittest-{tag}"
        self.groups: list[Path] = []
        controllers = ("cpu", "cpuset") if split is not None else ("cpu",)
        try:
            if version == 2:
                enable(root, *controllers)
            self.parent.mkdir()
            if version == 2:
                enable(self.parent, *controllers)
            for i in range(count):
                group = self.parent / f"source-{i}"
                group.mkdir()
                self.groups.append(group)
                if version == 2:
                    write(group / "cpu.max", f"{quota_us(self.cores_of(i))} {PERIOD_US}")
                    if split is not None:
                        write(group / "cpuset.cpus", cpu_list(split.sources))
                else:
                    write(group / "cpu.cfs_period_us", str(PERIOD_US))
                    write(group / "cpu.cfs_quota_us", str(quota_us(self.cores_of(i))))
            if split is not None:
                server = self.parent / "server"
                server.mkdir()
                self.groups.append(server)
                write(server / "cpuset.cpus", cpu_list(split.server))
                self.pinning = TreePinning(split, server)
        except OSError as exc:
            self.release()
            raise CapError(f"cannot set up cgroup v{version} under {root}: {exc.strerror or exc}") from None

    def _join(self, index: int):
        return join_cgroup(self.groups[index])

    def _release(self) -> None:
        remove_tree(self.groups, self.parent)
        self.groups = []

    def _describe(self) -> str:
        quotas = sorted({quota_us(self.cores_of(i)) for i in range(max(1, len(self.groups)))})
        return f"{self.method}: {'/'.join(map(str, quotas))} us per {PERIOD_US} us under {self.parent}"


class SuspendResumeCap(Cap):
    """Token bucket per process: credit grows by ``cores`` per second of wall time (up
    to a small burst), CPU time spent is taken from it; below zero the process is
    suspended until the credit is back."""
    method = "psutil"
    TICK_S = 0.01
    BURST_S = 0.02  # credit cap, in seconds of CPU: bounds how far above the cap a burst can go

    def __init__(self, cores: float | Sequence[float]):
        super().__init__(cores)
        self._procs: dict[int, psutil.Process] = {}
        self._rate: dict[int, float] = {}
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
            self._rate[pid] = self.cores_of(index)

    def _loop(self) -> None:
        try:  # Ctrl-C and SIGTERM are for the main thread, which may be holding them off
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        except (AttributeError, OSError, ValueError):
            pass
        last = time.monotonic()
        while not self._stop.wait(self.TICK_S):
            now = time.monotonic()
            elapsed, last = now - last, now
            with self._lock:
                for pid, proc in list(self._procs.items()):
                    try:
                        cpu = sum(proc.cpu_times()[:2])
                        used, self._last_cpu[pid] = cpu - self._last_cpu[pid], cpu
                        credit = min(self.BURST_S, self._credit[pid] + self._rate[pid] * elapsed - used)
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

    def before_stop(self) -> None:
        self.resume_all()  # a suspended process would not see SIGTERM

    def resume_all(self) -> None:
        with self._lock:
            for pid in list(self._suspended):
                try:
                    self._procs[pid].resume()
                except (psutil.Error, KeyError):
                    pass
            self._suspended.clear()
            self._procs.clear()

    def _release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
        self.resume_all()

    def _describe(self) -> str:
        return f"psutil: suspend/resume feedback loop every {self.TICK_S * 1000:.0f} ms"


def make_cap(method: str, cores: float | Sequence[float], count: int, *, root: Path | None = None, tag: str | None = None,
             warn=errors.warn, server_cpus: int = 0, cpus: Sequence[int] | None = None) -> Cap:
    """A cap by ``method`` (auto: cgroup v2, then v1, then psutil with a warning).

    ``server_cpus`` > 0 also pins: the last ``server_cpus`` of ``cpus`` (default: the
    cores this process may use) for the server, the rest for the sources; see
    ``make_pinning``. Whatever fails, nothing made is left behind."""
    if method not in METHODS:
        raise CapError(f"unknown cap method {method!r}; known: {', '.join(METHODS)}")
    root = CGROUP_ROOT if root is None else root
    split = split_cores(server_cpus, available_cpus() if cpus is None else cpus) if server_cpus else None
    tag = tag or f"{os.getpid()}-{uuid.uuid4().hex[:6]}"  # which testbed made it, if one is ever left
    cap = _make_cap(method, cores, count, root, tag, warn, split)
    cap.tag = tag
    if split is not None and cap.pinning.split is None:
        try:
            cap.pinning = make_pinning(split, root, tag, warn)
        except BaseException:
            cap.release()
            raise
    return cap


def _make_cap(method: str, cores: float | Sequence[float], count: int, root: Path, tag: str, warn, split: CoreSplit | None) -> Cap:
    if method == "none":
        return Cap(cores)
    if method == "psutil":
        return SuspendResumeCap(cores)
    failures = []
    for version, base in ((2, root), (1, root / "cpu")):
        if not has_controller(version, base):
            continue
        # v2: the cpuset must be in the same groups as cpu.max (one v2 group per process)
        pin = split if version == 2 and has_cpuset(2, base) else None
        try:
            return CgroupCap(cores, count, version, base, tag, pin)
        except CapError as exc:
            failures.append(str(exc))
        if pin is not None:  # the cap without the cpuset; make_pinning pins another way
            try:
                return CgroupCap(cores, count, version, base, tag)
            except CapError as exc:
                failures.append(str(exc))
    reason = "; ".join(failures) or f"no cgroup cpu controller under {root}"
    if method == "cgroup":
        raise CapError(reason)
    warn(f"cannot cap CPU with cgroups ({reason}); falling back to suspending and resuming "
         f"processes (psutil), which is coarser")
    return SuspendResumeCap(cores)
