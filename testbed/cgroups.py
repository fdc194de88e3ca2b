"""The cgroup filesystem, v1 and v2: where it is, which controllers a hierarchy offers,
making and removing a run's groups, and the kernel's list format for cores. Used by the
caps (cpucap.py, memcap.py) and the pinning (pinning.py); a process joins a group before
its program runs (joining.py), so that ``ip netns exec`` cannot hide it later."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

CGROUP_ROOT = Path("/sys/fs/cgroup")


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


def enable(group: Path, *controllers: str) -> None:
    control = group / "cgroup.subtree_control"
    enabled = control.read_text().split()
    missing = [c for c in controllers if c not in enabled and f"+{c}" not in enabled]
    if missing:
        control.write_text(" ".join(f"+{c}" for c in missing) + "\n")


def write(path: Path, value: str) -> None:
    path.write_text(f"{value}\n")


def remove_tree(groups: list[Path], parent: Path) -> None:
    """A run's cgroups, children first, then their parent."""
    for group in reversed(groups):
        rmdir(group)
    rmdir(parent)


def rmdir(path: Path) -> None:
    # A cgroup directory is removed with rmdir even though it lists files.
    for _ in range(50):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:  # still busy for a moment after its last process exited
            time.sleep(0.02)


def has_controller(version: int, base: Path, controller: str = "cpu", v1_file: str = "cpu.cfs_quota_us") -> bool:
    """Whether ``base`` offers ``controller``: v2 lists it, v1 has its file."""
    if version == 2:
        controllers = base / "cgroup.controllers"
        return controllers.is_file() and controller in controllers.read_text().split()
    return (base / v1_file).is_file()


def has_cpuset(version: int, base: Path) -> bool:
    return has_controller(version, base, "cpuset", "cpuset.cpus")
