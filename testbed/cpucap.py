"""CPU caps for local data sources: a real limit per process, and optionally cores
of its own for the offload server.

- cgroup v2: a ``cpu.max`` of ``quota period`` in a cgroup of its own per source;
- cgroup v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` in the ``cpu`` controller;
- otherwise (no rights to make cgroups): a feedback loop that suspends a process
  when it has used more than its share and resumes it when the share allows
  (a token bucket with a small burst credit).

Pinning (``--server-cpus N``) gives the server N cores and the sources the rest:
with the ``cpuset`` controller (cgroup v2: ``cpuset.cpus`` in the very groups that
hold ``cpu.max``, since a process is in one v2 group only; cgroup v1: a ``cpuset``
tree of its own with ``server`` and ``sources`` groups), else with
``sched_setaffinity`` in the child (a warning says so).

A process joins its cgroups in the child between fork and exec, so it runs capped
and pinned from its first instruction (and ``ip netns exec`` cannot hide the cgroup
later).
"""
from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import psutil

from .errors import TestbedError

PERIOD_US = 100_000          # CFS period: 100 ms, the kernel's default
MIN_QUOTA_US = 1_000         # the kernel refuses quotas below 1 ms
CGROUP_ROOT = Path("/sys/fs/cgroup")
METHODS = ("auto", "cgroup", "psutil", "none")


class CapError(TestbedError, RuntimeError):
    """A CPU cap or pinning could not be set; the message says which and why."""


def quota_us(cores: float) -> int:
    return max(MIN_QUOTA_US, round(cores * PERIOD_US))


# -- how many cores, and which ------------------------------------------------------

def available_cpus() -> list[int]:
    """The cores this process may run on (its affinity: a container's share, not the host's)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def cpu_list(cpus: Sequence[int]) -> str:
    """The kernel's list format: [0, 1, 2, 5] -> '0-2,5'."""
    parts, run = [], []
    for cpu in sorted(cpus):
        if run and cpu == run[-1] + 1:
            run.append(cpu)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [cpu]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


@dataclass(frozen=True)
class CoreSplit:
    """The cores of the server and those of the sources (disjoint)."""
    server: tuple[int, ...]
    sources: tuple[int, ...]


def split_cores(server_cpus: int, available: Sequence[int]) -> CoreSplit:
    """The last ``server_cpus`` of ``available`` for the server, the others for the sources."""
    cpus = sorted(available)
    if server_cpus < 1:
        raise CapError(f"--server-cpus must be a positive number of cores, got {server_cpus}")
    if server_cpus >= len(cpus):
        raise CapError(f"--server-cpus {server_cpus} leaves no core for the sources: this host has "
                       f"{len(cpus)} core{'s' if len(cpus) != 1 else ''} (CPU {cpu_list(cpus)})")
    return CoreSplit(server=tuple(cpus[-server_cpus:]), sources=tuple(cpus[:-server_cpus]))


def oversubscription(sources: int, cores: float | Sequence[float], host_cores: int,
                     server_cpus: int = 0) -> str | None:
    """One warning line when the sources' caps (one for all, or one per source) plus what
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
        return (f"testbed: warning: {sources} sources {cores_text} need {need_sources:.3g} cores, the sources "
                f"have {room} (this host has {host_cores}, {server_cpus} pinned to the server): sources will get "
                f"less than their cap (the summary's bound_by says what bound the throughput)")
    need = need_sources + 1
    if need <= host_cores + 1e-9:
        return None
    return (f"testbed: warning: {sources} sources {cores_text} + the server need ≥ {need:.3g} cores, this host "
            f"has {host_cores}: sources will get less than their cap (the summary's bound_by says what bound the throughput)")


# -- joining a cgroup from the child ---------------------------------------------------

def join_cgroup(group: Path) -> Callable[[], None]:
    """A function that moves the calling process into ``group`` (run in the child,
    before exec); it raises CapError naming the group and the kernel's reason."""
    procs = os.fsencode(group / "cgroup.procs")

    def join() -> None:
        try:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise CapError(f"cannot join cgroup {group}: {exc.strerror or exc}") from None
    return join


def _set_affinity(cpus: Sequence[int]) -> Callable[[], None]:
    def pin() -> None:
        try:
            os.sched_setaffinity(0, cpus)
        except OSError as exc:
            raise CapError(f"cannot pin to CPU {cpu_list(cpus)}: {exc.strerror or exc}") from None
    return pin


def _chain(*steps):
    steps = [s for s in steps if s is not None]
    if not steps:
        return None
    if len(steps) == 1:
        return steps[0]

    def run_all() -> None:
        for step in steps:
            step()
    return run_all


# -- pinning ----------------------------------------------------------------------------

class Pinning:
    """Where the server and the sources may run. This base pins nothing."""
    method = "none"

    def __init__(self, split: CoreSplit | None = None):
        self.split = split

    def server_join(self):
        return None

    def source_join(self, index: int):
        return None

    def release(self) -> None:
        """Undo everything (processes must have exited)."""

    def where(self) -> str:
        return ""

    def describe(self) -> str:
        if self.split is None:
            return ""
        where = self.where()
        return (f"server on CPU {cpu_list(self.split.server)}, sources on CPU {cpu_list(self.split.sources)} "
                f"by {self.method}" + (f" {where}" if where else ""))

    def as_dict(self) -> dict | None:
        if self.split is None:
            return None
        return {"method": self.method, "server_cpus": list(self.split.server),
                "source_cpus": list(self.split.sources), "where": self.where() or None}


class AffinityPinning(Pinning):
    """``sched_setaffinity`` in the child: no rights needed, but a process could undo it."""
    method = "sched_setaffinity"

    def server_join(self):
        return _set_affinity(self.split.server)

    def source_join(self, index: int):
        return _set_affinity(self.split.sources)


class CpusetPinning(Pinning):
    """A cpuset tree of its own: ``splittest-TAG`` with ``server`` and ``sources``."""

    def __init__(self, split: CoreSplit, version: int, root: Path, tag: str):
        super().__init__(split)
        self.version, self.method = version, f"cgroup-v{version} cpuset"
        self.parent = root / f"splittest-{tag}"
        self.groups: list[Path] = []
        try:
            if version == 2:
                _enable(root, "cpuset")
            mems = (root / "cpuset.mems").read_text().strip() if version == 1 else ""
            self.parent.mkdir()
            if version == 2:
                _enable(self.parent, "cpuset")
            else:  # v1: a cpuset takes no process before both are set
                _write(self.parent / "cpuset.cpus", cpu_list(split.server + split.sources))
                _write(self.parent / "cpuset.mems", mems)
            for name, cpus in (("server", split.server), ("sources", split.sources)):
                group = self.parent / name
                group.mkdir()
                self.groups.append(group)
                _write(group / "cpuset.cpus", cpu_list(cpus))
                if version == 1:
                    _write(group / "cpuset.mems", mems)
        except OSError as exc:
            self.release()
            raise CapError(f"cannot set up a cgroup v{version} cpuset under {root}: {exc.strerror or exc}") from None

    def server_join(self):
        return join_cgroup(self.parent / "server")

    def source_join(self, index: int):
        return join_cgroup(self.parent / "sources")

    def release(self) -> None:
        _remove_tree(self.groups, self.parent)
        self.groups = []

    def where(self) -> str:
        return str(self.parent)


class _TreePinning(Pinning):
    """cgroup v2 pinning inside a CgroupCap's own tree (which removes the groups)."""
    method = "cgroup-v2 cpuset"

    def __init__(self, split: CoreSplit, server_group: Path):
        super().__init__(split)
        self.server_group = server_group

    def server_join(self):
        return join_cgroup(self.server_group)

    def where(self) -> str:
        return str(self.server_group.parent)


def make_pinning(split: CoreSplit, root: Path, tag: str, warn=print) -> Pinning:
    """Cpusets (cgroup v2, then v1), else ``sched_setaffinity`` with a warning."""
    errors = []
    for version, base in ((2, root), (1, root / "cpuset")):
        if not _has_cpuset(version, base):
            continue
        try:
            return CpusetPinning(split, version, base, tag)
        except CapError as exc:
            errors.append(str(exc))
    reason = "; ".join(errors) or f"no cgroup cpuset controller under {root}"
    warn(f"testbed: warning: cannot pin with cpusets ({reason}); pinning with sched_setaffinity instead")
    return AffinityPinning(split)


def _has_cpuset(version: int, base: Path) -> bool:
    return _has_controller(version, base, "cpuset", "cpuset.cpus")


# -- caps -----------------------------------------------------------------------------

class Cap:
    """A cap of ``cores`` for each of a set of processes (one number for all, or one per
    process index, cycled), by some method, and where the server and the sources run
    (``pinning``)."""
    method = "none"

    def __init__(self, cores: float | Sequence[float]):
        self.cores = tuple(cores) if isinstance(cores, (list, tuple)) else cores
        self.pinning: Pinning = Pinning()

    def cores_of(self, index: int) -> float:
        return self.cores[index % len(self.cores)] if isinstance(self.cores, tuple) else self.cores

    def preexec(self, index: int):
        """A function source ``index`` runs before exec (None: nothing to do)."""
        return _chain(self._join(index), self.pinning.source_join(index))

    def server_preexec(self):
        """A function the server runs before exec (None: nothing to do)."""
        return self.pinning.server_join()

    def _join(self, index: int):
        return None

    def started(self, index: int, pid: int) -> None:
        """The process for ``index`` runs with ``pid``."""

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
                _enable(root, *controllers)
            self.parent.mkdir()
            if version == 2:
                _enable(self.parent, *controllers)
            for i in range(count):
                group = self.parent / f"source-{i}"
                group.mkdir()
                self.groups.append(group)
                if version == 2:
                    _write(group / "cpu.max", f"{quota_us(self.cores_of(i))} {PERIOD_US}")
                    if split is not None:
                        _write(group / "cpuset.cpus", cpu_list(split.sources))
                else:
                    _write(group / "cpu.cfs_period_us", str(PERIOD_US))
                    _write(group / "cpu.cfs_quota_us", str(quota_us(self.cores_of(i))))
            if split is not None:
                server = self.parent / "server"
                server.mkdir()
                self.groups.append(server)
                _write(server / "cpuset.cpus", cpu_list(split.server))
                self.pinning = _TreePinning(split, server)
        except OSError as exc:
            self.release()
            raise CapError(f"cannot set up cgroup v{version} under {root}: {exc.strerror or exc}") from None

    def _join(self, index: int):
        return join_cgroup(self.groups[index])

    def _release(self) -> None:
        _remove_tree(self.groups, self.parent)
        self.groups = []

    def _describe(self) -> str:
        quotas = sorted({quota_us(self.cores_of(i)) for i in range(max(1, len(self.groups)))})
        return f"{self.method}: {'/'.join(map(str, quotas))} us per {PERIOD_US} us under {self.parent}"


def _enable(group: Path, *controllers: str) -> None:
    control = group / "cgroup.subtree_control"
    enabled = control.read_text().split()
    missing = [c for c in controllers if c not in enabled and f"+{c}" not in enabled]
    if missing:
        control.write_text(" ".join(f"+{c}" for c in missing) + "\n")


def _write(path: Path, value: str) -> None:
    path.write_text(f"{value}\n")


def _remove_tree(groups: list[Path], parent: Path) -> None:
    """A run's cgroups, children first, then their parent."""
    for group in reversed(groups):
        _rmdir(group)
    _rmdir(parent)


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
             warn=print, server_cpus: int = 0, cpus: Sequence[int] | None = None) -> Cap:
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
    errors = []
    for version, base in ((2, root), (1, root / "cpu")):
        if not _has_controller(version, base):
            continue
        # v2: the cpuset must be in the same groups as cpu.max (one v2 group per process)
        pin = split if version == 2 and _has_cpuset(2, base) else None
        try:
            return CgroupCap(cores, count, version, base, tag, pin)
        except CapError as exc:
            errors.append(str(exc))
        if pin is not None:  # the cap without the cpuset; make_pinning pins another way
            try:
                return CgroupCap(cores, count, version, base, tag)
            except CapError as exc:
                errors.append(str(exc))
    reason = "; ".join(errors) or f"no cgroup cpu controller under {root}"
    if method == "cgroup":
        raise CapError(reason)
    warn(f"testbed: warning: cannot cap CPU with cgroups ({reason}); falling back to suspending and resuming "
         f"processes (psutil), which is coarser")
    return SuspendResumeCap(cores)


def _has_controller(version: int, base: Path, controller: str = "cpu", v1_file: str = "cpu.cfs_quota_us") -> bool:
    """Whether ``base`` offers ``controller``: v2 lists it, v1 has its file."""
    if version == 2:
        controllers = base / "cgroup.controllers"
        return controllers.is_file() and controller in controllers.read_text().split()
    return (base / v1_file).is_file()
