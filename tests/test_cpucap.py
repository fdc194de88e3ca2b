"""CPU caps measured on real busy processes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.cpucap import CapError, CgroupCap, SuspendResumeCap, make_cap, quota_us

BUSY = ("import os, time\n"
        "start = time.time()\n"
        "while time.time() - start < 2.0: pass\n"
        "t = os.times()\n"
        "print((t.user + t.system) / (time.time() - start))")


def run_capped(cap, count=2):
    procs = []
    for i in range(count):
        proc = subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True,
                                preexec_fn=cap.preexec(i))
        cap.started(i, proc.pid)
        procs.append(proc)
    try:
        return [float(p.communicate(timeout=60)[0]) for p in procs]
    finally:
        cap.release()


def test_quota_is_the_cap_times_the_period():
    assert quota_us(0.4) == 40_000 and quota_us(0.0001) == 1_000


@pytest.mark.skipif(not os.access("/sys/fs/cgroup/cpu", os.W_OK), reason="needs rights on the cgroup v1 cpu controller")
def test_cgroup_v1_cap_holds_a_busy_process_at_its_share():
    cap = make_cap("cgroup", 0.4, 2)
    assert cap.method == "cgroup-v1"
    parent = cap.parent
    shares = run_capped(cap)
    assert all(0.3 < s <= 0.44 for s in shares), shares
    assert not parent.exists()


def test_suspend_resume_fallback_holds_a_busy_process_at_its_share():
    shares = run_capped(SuspendResumeCap(0.4))
    assert all(0.3 < s <= 0.44 for s in shares), shares


def test_cgroup_v2_layout(tmp_path):
    """cgroup v2 does not exist on the build machines: this checks the files the cap
    writes in a directory shaped like a v2 hierarchy (a stand-in, not a real cgroup)."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    original_mkdir = Path.mkdir

    def mkdir_like_cgroupfs(self, *args, **kwargs):  # the kernel creates the control files
        original_mkdir(self, *args, **kwargs)
        (self / "cgroup.subtree_control").write_text("")
    Path.mkdir = mkdir_like_cgroupfs
    try:
        cap = make_cap("cgroup", 0.4, 2, root=root, tag="t")
    finally:
        Path.mkdir = original_mkdir
    assert isinstance(cap, CgroupCap) and cap.method == "cgroup-v2"
    assert (root / "cgroup.subtree_control").read_text() == "+cpu\n"
    assert (root / "splittest-t" / "source-1" / "cpu.max").read_text() == "40000 100000\n"


def test_auto_falls_back_to_psutil_with_a_warning(tmp_path):
    warnings = []
    cap = make_cap("auto", 0.4, 1, root=tmp_path / "no-cgroups", warn=warnings.append)
    try:
        assert cap.method == "psutil" and "falling back" in warnings[0]
    finally:
        cap.release()
    with pytest.raises(CapError, match="no cgroup cpu controller"):
        make_cap("cgroup", 0.4, 1, root=tmp_path / "no-cgroups")
