"""CPU caps measured on real busy processes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CGROUP_ROOT, cgroup_roots
from testbed.cpucap import (AffinityPinning, CapError, CgroupCap, CpusetPinning, SuspendResumeCap, cpu_list,
                            make_cap, oversubscription, quota_us, split_cores)

pytestmark = pytest.mark.quick  # every test here is fast: the quick tier (-m quick)

# the CPU of the busy loop alone over its wall time (the interpreter's start-up CPU, spent
# before ``start``, would otherwise count against 2 s and push a 0.4 cap to about 0.45)
BUSY = ("import os, time\n"
        "t0, start = os.times(), time.time()\n"
        "while time.time() - start < 2.0: pass\n"
        "t = os.times()\n"
        "print((t.user - t0.user + t.system - t0.system) / (time.time() - start))")


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


@pytest.mark.skipif(not cgroup_roots(), reason="this host lets no process make cgroups (neither v1 nor v2)")
def test_a_cgroup_cap_holds_a_busy_process_at_its_share():
    """On this host's cgroups, v1 or v2 (found as testbed/cpucap.py finds them)."""
    cap = make_cap("cgroup", 0.4, 2)
    assert cap.method == ("cgroup-v2" if cgroup_roots() == [CGROUP_ROOT] else "cgroup-v1")
    parent = cap.parent
    assert parent.parent in cgroup_roots() and parent.name.startswith(f"splittest-{os.getpid()}-")
    shares = run_capped(cap)
    assert all(0.3 < s <= 0.44 for s in shares), shares
    assert not parent.exists()


def test_suspend_resume_fallback_holds_a_busy_process_at_its_share():
    shares = run_capped(SuspendResumeCap(0.4))
    assert all(0.3 < s <= 0.44 for s in shares), shares


def fake_v2_tree(tmp_path, monkeypatch):
    """A directory shaped like a cgroup v2 hierarchy (a stand-in, not a real cgroup:
    cgroup v2 does not exist on the build machines); mkdir creates the control files
    as the kernel would."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    original_mkdir = Path.mkdir

    def mkdir_like_cgroupfs(self, *args, **kwargs):
        original_mkdir(self, *args, **kwargs)
        (self / "cgroup.subtree_control").write_text("")
    monkeypatch.setattr(Path, "mkdir", mkdir_like_cgroupfs)
    return root


def test_cgroup_v2_layout(tmp_path, monkeypatch):
    root = fake_v2_tree(tmp_path, monkeypatch)
    cap = make_cap("cgroup", 0.4, 2, root=root, tag="t")
    assert isinstance(cap, CgroupCap) and cap.method == "cgroup-v2"
    assert (root / "cgroup.subtree_control").read_text() == "+cpu\n"
    assert (root / "splittest-t" / "source-1" / "cpu.max").read_text() == "40000 100000\n"
    assert cap.server_preexec() is None and cap.pinning.as_dict() is None


def test_cgroup_v2_pins_in_the_groups_that_cap(tmp_path, monkeypatch):
    """v2: a process is in one group only, so a source's cpuset sits beside its cpu.max."""
    root = fake_v2_tree(tmp_path, monkeypatch)
    cap = make_cap("cgroup", 0.4, 2, root=root, tag="t", server_cpus=1, cpus=[0, 1, 2, 3])
    parent = root / "splittest-t"
    assert cap.method == "cgroup-v2" and cap.pinning.method == "cgroup-v2 cpuset"
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +cpuset\n"
    assert (parent / "cgroup.subtree_control").read_text() == "+cpu +cpuset\n"
    for i in range(2):
        assert (parent / f"source-{i}" / "cpu.max").read_text() == "40000 100000\n"
        assert (parent / f"source-{i}" / "cpuset.cpus").read_text() == "0-2\n"
    assert (parent / "server" / "cpuset.cpus").read_text() == "3\n"
    assert not (parent / "server" / "cpu.max").exists()  # the server is pinned, not capped
    assert cap.pinning.as_dict() == {"method": "cgroup-v2 cpuset", "server_cpus": [3], "source_cpus": [0, 1, 2],
                                     "where": str(parent)}
    assert cap.describe().startswith("server on CPU 3, sources on CPU 0-2 by cgroup-v2 cpuset")
    assert cap.describe().rsplit(" under ", 1)[1] == str(parent)


def test_core_split_and_its_refusals():
    assert split_cores(1, [0, 1]).server == (1,) and split_cores(1, [0, 1]).sources == (0,)
    assert split_cores(2, [4, 0, 1, 2, 3]) .server == (3, 4)
    assert cpu_list([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    with pytest.raises(CapError, match="--server-cpus 2 leaves no core for the sources: this host has 2 cores"):
        split_cores(2, [0, 1])
    with pytest.raises(CapError, match="positive"):
        split_cores(-1, [0, 1])


def test_oversubscription_arithmetic():
    line = oversubscription(8, 0.4, 2)
    assert line == ("8 sources × 0.4 CPU + the server need ≥ 4.2 cores, this host has 2: "
                    "sources will get less than their cap (the summary's bound_by says what bound the throughput)")
    assert oversubscription(2, 0.4, 2) is None            # 0.8 + 1 <= 2
    assert oversubscription(5, 0.2, 2) is None            # exactly 2: no warning
    assert oversubscription(2, 0.4, 2, server_cpus=1) is None  # 0.8 on the one core left
    pinned = oversubscription(3, 0.4, 2, server_cpus=1)   # 1.2 on the one core left
    assert pinned.count("\n") == 0 and "3 sources × 0.4 CPU need 1.2 cores, the sources have 1" in pinned


def test_affinity_pinning_where_no_cpuset_can_be_made(tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    warnings = []
    cpus = sorted(os.sched_getaffinity(0))
    cap = make_cap("none", 0.4, 1, root=tmp_path / "no-cgroups", server_cpus=1, warn=warnings.append)
    try:
        assert isinstance(cap.pinning, AffinityPinning) and len(warnings) == 1
        assert "pinning with sched_setaffinity instead" in warnings[0]
        procs = [subprocess.Popen([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                                  stdout=subprocess.PIPE, text=True, preexec_fn=join)
                 for join in (cap.server_preexec(), cap.preexec(0))]
        seen = [p.communicate(timeout=60)[0].strip() for p in procs]
    finally:
        cap.release()
    assert seen == [str(cpus[-1:]), str(cpus[:-1])]
    assert cap.describe() == f"server on CPU {cpus[-1]}, sources on CPU {cpu_list(cpus[:-1])} by sched_setaffinity; no CPU cap"


def own_cgroup(pid, controller):
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return None


@pytest.mark.skipif(not (os.access("/sys/fs/cgroup/cpu", os.W_OK) and os.access("/sys/fs/cgroup/cpuset", os.W_OK)
                         and len(os.sched_getaffinity(0)) >= 2),
                    reason="needs rights on the cgroup v1 cpu and cpuset controllers, and two cores")
def test_cgroup_v1_cpuset_pins_server_and_sources():
    cpus = sorted(os.sched_getaffinity(0))
    cap = make_cap("cgroup", 0.4, 2, server_cpus=1)
    parent = Path("/sys/fs/cgroup/cpuset") / cap.parent.name
    try:
        assert isinstance(cap.pinning, CpusetPinning) and cap.pinning.method == "cgroup-v1 cpuset"
        mems = Path("/sys/fs/cgroup/cpuset/cpuset.mems").read_text()
        assert (parent / "server" / "cpuset.cpus").read_text() == f"{cpus[-1]}\n"
        assert (parent / "sources" / "cpuset.mems").read_text() == mems
        script = "import os, sys; sys.stdout.write(repr(sorted(os.sched_getaffinity(0)))); sys.stdout.flush(); input()"
        procs = [subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, preexec_fn=join) for join in (cap.server_preexec(), cap.preexec(1))]
        try:
            seen = [p.stdout.read(len(repr(c))) for p, c in zip(procs, (cpus[-1:], cpus[:-1]))]
            places = [(own_cgroup(p.pid, "cpuset"), own_cgroup(p.pid, "cpu")) for p in procs]
        finally:
            for p in procs:
                p.communicate("\n", timeout=60)
    finally:
        cap.release()
    assert seen == [repr(cpus[-1:]), repr(cpus[:-1])]
    assert places == [(f"/{parent.name}/server", "/"), (f"/{parent.name}/sources", f"/{parent.name}/source-1")]
    assert not parent.exists() and not cap.parent.exists()


def test_auto_falls_back_to_psutil_with_a_warning(tmp_path):
    warnings = []
    cap = make_cap("auto", 0.4, 1, root=tmp_path / "no-cgroups", warn=warnings.append)
    try:
        assert cap.method == "psutil" and "falling back" in warnings[0]
    finally:
        cap.release()
    with pytest.raises(CapError, match="no cgroup cpu controller"):
        make_cap("cgroup", 0.4, 1, root=tmp_path / "no-cgroups")


def test_a_heterogeneous_fleet_gets_one_quota_per_source_cycled(tmp_path, monkeypatch):
    """--cpu 0.5,0.25: source i gets the i-th cap, cycled over the sources."""
    root = fake_v2_tree(tmp_path, monkeypatch)
    cap = make_cap("cgroup", (0.5, 0.25), 3, root=root, tag="t")
    quotas = [(root / "splittest-t" / f"source-{i}" / "cpu.max").read_text() for i in range(3)]
    assert quotas == ["50000 100000\n", "25000 100000\n", "50000 100000\n"]
    assert "25000/50000 us per 100000 us" in cap.describe()
    line = oversubscription(3, (1.0, 0.5), 2)  # 1 + 0.5 + 1 + the server's core
    assert line.startswith("3 sources (1+0.5 CPU) + the server need ≥ 3.5 cores")
    assert oversubscription(2, (0.5, 0.25), 2) is None
