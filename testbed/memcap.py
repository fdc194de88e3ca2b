"""Memory per source: a limit (``--memory``; a comma list gives one per source, cycled)
and each source's peak, both from a memory cgroup of its own.

- cgroup v2: ``memory.max`` (and ``memory.swap.max`` 0) in the very group that holds the
  source's ``cpu.max`` (a process is in one v2 group), its peak from ``memory.peak``, an
  OOM kill from ``memory.events``;
- cgroup v1: a ``memory`` tree of its own, ``splittest-TAG/source-N``, with
  ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes``, so that swap is no way
  around it), its peak from ``memory.max_usage_in_bytes``, an OOM kill from
  ``memory.oom_control``.

Without ``--memory`` the groups are made all the same where this host allows, with no
limit, so that every run records each source's own peak: what the kernel charged to it.
A source forked from a warm parent (``--spawn fork``) is charged for the pages it writes
or copies, not for those it shares with its parent; an exec'd one for everything it
loaded. Sizes are Kubernetes quantities, so that the same text is a pod's limit.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from .cgroups import CGROUP_ROOT, enable, has_controller, remove_tree, write
from .errors import CapError
from .joining import Join

UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(" + "|".join(u for u in UNITS if u) + r")?$")
MIN_BYTES = 16 * 2**20  # below this not even an idle forked child fits


def parse_size(text: str, option: str = "--memory") -> int:
    """A Kubernetes quantity (512Mi, 2Gi, 800M, 1.5G, bytes) in bytes; ValueError naming
    the option otherwise."""
    found = SIZE.match(str(text).strip())
    if not found:
        raise ValueError(f"{option}: {text!r} is not a size: give a number with one of the units "
                         f"{', '.join(u for u in UNITS if u)} (512Mi, 2Gi) or bytes")
    size = int(float(found.group(1)) * UNITS[found.group(2) or ""])
    if size < MIN_BYTES:
        raise ValueError(f"{option}: {text} is below the smallest limit a source can run in, {MIN_BYTES // 2**20}Mi")
    return size


class MemoryCap:
    """No memory groups: no limit, no peak."""
    method = "no memory cgroup"
    measures = False  # whether it has a group per source to read peaks from

    def __init__(self, limits: Sequence[str | None]):
        self.limits = list(limits)  # per source: the --memory text, or None (no limit)

    def join(self, index: int) -> Join | None:
        return None

    def peak_bytes(self, index: int) -> int | None:
        return None

    def oom_killed(self, index: int) -> bool:
        return False

    def limit_text(self, index: int) -> str | None:
        return self.limits[index] if index < len(self.limits) else None

    def limit_bytes(self, index: int) -> int | None:
        limit = self.limit_text(index)
        return parse_size(limit) if limit else None

    def release(self) -> None:
        pass


class MemoryGroups(MemoryCap):
    """One memory group per source: v1 in a tree of its own under ``root``; v2 in the
    groups given (the CPU cap's), else in a tree of its own."""

    def __init__(self, limits: Sequence[str | None], version: int, root: Path, tag: str,
                 groups: Sequence[Path] | None = None):
        super().__init__(limits)
        self.version, self.method = version, f"cgroup-v{version} memory"
        self.measures = True
        self.own = groups is None
        self.parent = root / f"splittest-{tag}" if self.own else Path(groups[0]).parent
        self.groups: list[Path] = []
        try:
            if version == 2:
                enable(root, "memory")
            if self.own:
                self.parent.mkdir()
            if version == 2:
                enable(self.parent, "memory")
            for i, limit in enumerate(self.limits):
                group = self.parent / f"source-{i}" if self.own else Path(groups[i])
                if self.own:
                    group.mkdir()
                self.groups.append(group)
                if limit is not None:
                    self._limit(group, self.limit_bytes(i))
        except OSError as exc:
            self.release()
            raise CapError(f"cannot set up cgroup v{version} memory groups under {root}: {exc.strerror or exc}") from None

    def _limit(self, group: Path, size: int) -> None:
        if self.version == 2:
            write(group / "memory.max", str(size))
            if (group / "memory.swap.max").exists():
                write(group / "memory.swap.max", "0")
            return
        write(group / "memory.limit_in_bytes", str(size))
        if (group / "memory.memsw.limit_in_bytes").exists():  # at least the memory limit: written after it
            write(group / "memory.memsw.limit_in_bytes", str(size))

    def join(self, index: int) -> Join | None:
        return Join(cgroups=(str(self.groups[index]),)) if self.own else None  # v2 in the CPU groups: joined there

    def peak_bytes(self, index: int) -> int | None:
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        try:
            return int((self.groups[index] / name).read_text().split()[0])
        except (OSError, IndexError, ValueError):  # v2 before Linux 5.19 has no memory.peak
            return None

    def oom_killed(self, index: int) -> bool:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            text = (self.groups[index] / name).read_text()
        except (OSError, IndexError):
            return False
        counts = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        return int(counts.get("oom_kill", "0")) > 0

    def release(self) -> None:
        if self.own:
            remove_tree(self.groups, self.parent)
        self.groups = []


def make_memory_cap(limits: Sequence[str | None], tag: str, cpu_groups: Sequence[Path] | None = None, *,
                    cpu_version: int = 0, root: Path = CGROUP_ROOT) -> MemoryCap:
    """Memory groups where this host has a writable memory controller (v2: in the CPU cap's
    groups when it has them, ``cpu_version`` 2). Limits asked for where none can be
    enforced: CapError. No limits and no controller: a MemoryCap that measures nothing."""
    wanted = any(limit is not None for limit in limits)
    failures = []
    for version, base in ((2, root), (1, root / "memory")):
        if not has_controller(version, base, "memory", "memory.limit_in_bytes"):
            continue
        groups = cpu_groups if version == 2 and cpu_version == 2 else None
        try:
            return MemoryGroups(limits, version, base, tag, groups)
        except CapError as exc:
            failures.append(str(exc))
    if wanted:
        raise CapError("--memory needs a cgroup memory controller this process may write to: "
                       + ("; ".join(failures) or f"none under {root}"))
    return MemoryCap(limits)
