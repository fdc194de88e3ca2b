"""The cgroup filesystem, v1 and v2: where it is, which controllers a hierarchy offers,
making and removing a run's groups, and joining one from a child between fork and exec
(so that ``ip netns exec`` cannot hide it later). Used by the caps (cpucap.py) and the
pinning (pinning.py)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from .joining import Join

CGROUP_ROOT = Path("/sys/fs/cgroup")


def join_cgroup(group: Path) -> Join:
    """Joining ``group`` (in the child, before its program runs; see testbed/joining.py)."""
    return Join(cgroups=(str(group),))


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
