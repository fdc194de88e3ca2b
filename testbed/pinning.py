"""Where the server and the sources run (``--server-cpus N``): the server N cores of its
own, the sources the rest, with the ``cpuset`` controller (cgroup v2: ``cpuset.cpus`` in
the very groups that hold ``cpu.max``, since a process is in one v2 group only; cgroup v1:
a ``cpuset`` tree of its own with ``server`` and ``sources`` groups), else with
``sched_setaffinity`` in the child (a warning says so)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .cgroups import cpu_list, enable, has_cpuset, remove_tree, write  # noqa: F401 (cpu_list re-exported)
from . import errors
from .errors import CapError
from .joining import Join, join_cgroup


def available_cpus() -> list[int]:
    """The cores this process may run on (its affinity: a container's share, not the host's)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


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


def _set_affinity(cpus: Sequence[int]) -> Join:
    return Join(cpus=tuple(cpus))


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
                enable(root, "cpuset")
            mems = (root / "cpuset.mems").read_text().strip() if version == 1 else ""
            self.parent.mkdir()
            if version == 2:
                enable(self.parent, "cpuset")
            else:  # v1: a cpuset takes no process before both are set
                write(self.parent / "cpuset.cpus", cpu_list(split.server + split.sources))
                write(self.parent / "cpuset.mems", mems)
            for name, cpus in (("server", split.server), ("sources", split.sources)):
                group = self.parent / name
                group.mkdir()
                self.groups.append(group)
                write(group / "cpuset.cpus", cpu_list(cpus))
                if version == 1:
                    write(group / "cpuset.mems", mems)
        except OSError as exc:
            self.release()
            raise CapError(f"cannot set up a cgroup v{version} cpuset under {root}: {exc.strerror or exc}") from None

    def server_join(self):
        return join_cgroup(self.parent / "server")

    def source_join(self, index: int):
        return join_cgroup(self.parent / "sources")

    def release(self) -> None:
        remove_tree(self.groups, self.parent)
        self.groups = []

    def where(self) -> str:
        return str(self.parent)


class TreePinning(Pinning):
    """cgroup v2 pinning inside a CgroupCap's own tree (which removes the groups)."""
    method = "cgroup-v2 cpuset"

    def __init__(self, split: CoreSplit, server_group: Path):
        super().__init__(split)
        self.server_group = server_group

    def server_join(self):
        return join_cgroup(self.server_group)

    def where(self) -> str:
        return str(self.server_group.parent)


def make_pinning(split: CoreSplit, root: Path, tag: str, warn=errors.warn) -> Pinning:
    """Cpusets (cgroup v2, then v1), else ``sched_setaffinity`` with a warning."""
    failures = []
    for version, base in ((2, root), (1, root / "cpuset")):
        if not has_cpuset(version, base):
            continue
        try:
            return CpusetPinning(split, version, base, tag)
        except CapError as exc:
            failures.append(str(exc))
    reason = "; ".join(failures) or f"no cgroup cpuset controller under {root}"
    warn(f"cannot pin with cpusets ({reason}); pinning with sched_setaffinity instead")
    return AffinityPinning(split)
