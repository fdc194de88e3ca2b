"""Where a process goes before it runs its program: the cgroups it joins (its CPU cap,
its memory cap, its cpuset), the cores it is pinned to, the network namespace it enters.

A :class:`Join` is data, so that both ways of starting a process can do it: between fork
and exec (``Fleet.start``, calling it as a ``preexec_fn``) and in a child a warm parent
forks (``testbed.launcher``, which receives it as JSON). Either way the process is capped,
pinned and behind its link from its first instruction of the program. The cgroups come
first, then the namespace: a cgroup is joined through the host's cgroup filesystem.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from .cgroups import cpu_list
from .errors import CapError

CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Join:
    cgroups: tuple[str, ...] = ()  # cgroup folders, each joined by writing the pid to its cgroup.procs
    cpus: tuple[int, ...] = ()     # sched_setaffinity to these (empty: unchanged)
    netns: str = ""                # a network namespace's bind mount, /run/netns/NAME ("": unchanged)

    def __add__(self, other: "Join | None") -> "Join":
        if other is None:
            return self
        return Join(self.cgroups + other.cgroups, other.cpus or self.cpus, other.netns or self.netns)

    __radd__ = __add__  # sum(joins) and None + join

    def __bool__(self) -> bool:
        return bool(self.cgroups or self.cpus or self.netns)

    def __call__(self) -> None:
        """Do it, in the calling process. CapError (a cgroup, the cores) or OSError (the
        namespace), each naming what could not be joined and the kernel's reason."""
        pid = str(os.getpid()).encode()
        for group in self.cgroups:
            try:
                fd = os.open(os.path.join(group, "cgroup.procs"), os.O_WRONLY)
                try:
                    os.write(fd, pid)
                finally:
                    os.close(fd)
            except OSError as exc:
                raise CapError(f"cannot join cgroup {group}: {exc.strerror or exc}") from None
        if self.cpus:
            try:
                os.sched_setaffinity(0, self.cpus)
            except OSError as exc:
                raise CapError(f"cannot pin to CPU {cpu_list(self.cpus)}: {exc.strerror or exc}") from None
        if self.netns:
            fd = os.open(self.netns, os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"cannot enter network namespace {os.path.basename(self.netns)}: "
                                        f"{os.strerror(code)}")
            finally:
                os.close(fd)

    def as_dict(self) -> dict:
        return {"cgroups": list(self.cgroups), "cpus": list(self.cpus), "netns": self.netns}

    @classmethod
    def from_dict(cls, data: dict) -> "Join":
        return cls(tuple(map(str, data.get("cgroups", ()))), tuple(map(int, data.get("cpus", ()))),
                   str(data.get("netns", "")))


def join_cgroup(group) -> Join:
    """Joining ``group`` (a cgroup folder)."""
    return Join(cgroups=(str(group),))


def joined(*steps):
    """The joins given (None left out) as one Join, in order; None when there is nothing to
    do. A plain function among them (``die_with_parent``) makes the result a function
    that runs each step in order, for a ``preexec_fn``."""
    steps = [step for step in steps if step]
    if all(isinstance(step, Join) for step in steps):
        return sum(steps, Join()) or None

    def run_all() -> None:
        for step in steps:
            step()
    return run_all
