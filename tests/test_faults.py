"""Faults: a lost source does not end a run, a dead or hung server is noticed by every
source within seconds. Real processes and real signals; no timing thresholds (a source
is killed once its trace shows it training)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import REPO, TINY, cgroups_of, events_so_far, free_port, read_jsonl, wait_for, watched, \
    workload_programs
from testbed.spec import RunSpec, SpecError, validate
from workloads import settings
from workloads.protocol import Message
from workloads.transport import Connection, ServerGone


# The caps take no part in what these tests check; at 0.6 CPU a source starts (imports torch,
# builds its model and data) in two thirds of the time it takes at the default 0.4.
CPU = "0.6"


def _testbed(out, port, *extra):
    return subprocess.Popen([sys.executable, "-m", "testbed.cli", "run", "--sources", "3", "--cpu", CPU,
                             "--epochs", "1", "--module", "none", *TINY, "--out", str(out), "--port", str(port),
                             "--quiet", *map(str, extra)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)



def _pid(trace):
    return next(e["pid"] for e in read_jsonl(trace) if e["event"] == "start")


# -- --drop: declared once, checked against --sources ------------------------------------

@pytest.mark.quick
def test_drop_is_parsed_and_checked():
    assert settings.drops("3@8, 0@2.5") == {3: 8.0, 0: 2.5} and settings.drops("") == {}
    drop = settings.option("drop")
    assert drop.chart == "faults.drop" and drop.roles == ("source",)
    for bad in ("3", "x@1", "1@-2", "1@2,1@3"):
        with pytest.raises(ValueError, match="--drop"):
            drop.parse(bad)
    with pytest.raises(SpecError, match=r"--drop names source 3, but sources are 0\.\.2"):
        validate(RunSpec(sources=3, drop="3@8", port=free_port(), backend="k8s"))
    validate(RunSpec(sources=3, drop="2@8", port=free_port(), backend="k8s"))


# -- lost sources ------------------------------------------------------------------------

BATCHES = 40  # source 0 still trains when source 1, killed at its first batch, is lost


@pytest.fixture(scope="module")
def lossy_run(tmp_path_factory):
    """One run of three sources that loses two, each its own way: source 2 is dropped by
    ``--drop 2@0`` (injected), source 1 is killed with SIGKILL by this fixture once its
    trace shows it training (not injected); source 0 trains every batch. The tests below
    each read their part of it."""
    out = tmp_path_factory.mktemp("faults") / "run"
    testbed = _testbed(out, free_port(), "--batches", BATCHES, "--drop", "2@0")
    arm = out / "none"

    def kill_source_1():
        wait_for(lambda: any(e["event"] == "batch" for e in events_so_far(arm / "source-1.jsonl")), testbed)
        os.kill(_pid(arm / "source-1.jsonl"), signal.SIGKILL)
    _, stderr = watched(testbed, kill_source_1)
    return SimpleNamespace(out=out, arm=arm, returncode=testbed.returncode, stderr=stderr,
                           left=(workload_programs(testbed.pid), cgroups_of(testbed.pid)))


def _lost_line(run):
    """The last line of the run's stderr, its parts: one per lost source (two)."""
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("testbed: error: ") and last.endswith("; summary and report written"), run.stderr
    parts = last[len("testbed: error: "):-len("; summary and report written")].split("; ")
    assert len(parts) == 2, last
    return parts


def test_a_source_killed_mid_run_is_lost_and_the_others_finish(lossy_run):
    out, arm = lossy_run.out, lossy_run.arm
    assert lossy_run.returncode == 3, lossy_run.stderr
    assert "arm none lost source 1 (killed by SIGKILL)" in _lost_line(lossy_run)
    lost = [e for e in read_jsonl(arm / "testbed.jsonl") if e["source"] == 1 and e["event"] == "lost"]
    assert [(e["event"], e["source"], e["cause"], e["signal"], e["exit_status"], e["injected"], e["role"])
            for e in lost] == [("lost", 1, "killed by SIGKILL", "SIGKILL", None, False, "testbed")]
    events = read_jsonl(arm / "source-0.jsonl")  # the other trained every batch and ended well
    assert sum(e["event"] == "batch" for e in events) == BATCHES and events[-1]["status"] == "ok"
    server_end = read_jsonl(arm / "server.jsonl")[-1]
    assert server_end["event"] == "end" and server_end["status"] == "ok"  # told to finish, it did
    summary = json.loads((out / "summary.json").read_text())["arms"]["none"]
    assert summary["status_per_source"] == ["ok", "lost", "lost"] and summary["partial"] is True
    [entry] = [e for e in summary["lost_sources"] if e["source"] == 1]
    assert entry["cause"] == "killed by SIGKILL" and entry["injected"] is False
    assert 1 <= entry["batches_done"] < BATCHES
    assert json.loads((out / "manifest.json").read_text())["status"] == "lost-sources"
    report = (out / "report" / "report.md").read_text()
    assert "source 1 (killed by SIGKILL)" in report
    assert lossy_run.left == ([], [])  # no process, no cgroup left behind


def test_a_drop_is_a_real_abrupt_death_and_named_as_injected(lossy_run):
    out, arm = lossy_run.out, lossy_run.arm
    assert lossy_run.returncode == 3, lossy_run.stderr
    assert "arm none lost source 2 (killed by SIGKILL, injected by --drop 2@0)" in _lost_line(lossy_run)
    events = read_jsonl(arm / "source-2.jsonl")
    assert events[-1]["event"] == "drop" and events[-1]["after_s"] == 0  # no bye, no end
    [lost] = [e for e in read_jsonl(arm / "testbed.jsonl") if e["source"] == 2 and e["event"] == "lost"]
    assert (lost["cause"], lost["signal"], lost["injected"]) == ("killed by SIGKILL", "SIGKILL", True)
    summary = json.loads((out / "summary.json").read_text())["arms"]["none"]
    [entry] = [e for e in summary["lost_sources"] if e["source"] == 2]
    assert entry["injected"] is True and entry["batches_done"] == 0
    assert lossy_run.left == ([], [])


# -- a dead server -----------------------------------------------------------------------

def memory_groups_here() -> bool:
    """Whether this process may make memory cgroups (v1's memory controller, or v2's)."""
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2.exists():
        return "memory" in v2.read_text().split() and os.access(v2.parent, os.W_OK)
    return os.access("/sys/fs/cgroup/memory", os.W_OK)


@pytest.mark.skipif(not memory_groups_here(), reason="needs rights on a cgroup memory controller")
def test_a_source_past_its_memory_limit_is_lost_out_of_memory_and_the_other_finishes(tmp_path):
    """--memory 2Gi,16Mi: the kernel's OOM killer ends source 1 (a forked source of the full
    VGG11 charges 33-40 MiB of its own here at batch size 8); the testbed names the cause and
    source 0 trains every batch. Each source's memory event says what the kernel charged to
    it against its limit."""
    out = tmp_path / "run"
    testbed = subprocess.Popen([sys.executable, "-m", "testbed.cli", "run", "--sources", "2", "--cpu", CPU,
                                "--epochs", "1", "--batches", "4", "--module", "none", "--batch-size", "8",
                                "--eval-samples", "16", "--dataset", "synthetic", "--memory", "2Gi,16Mi",
                                "--out", str(out), "--port", str(free_port()), "--no-report"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, stderr = testbed.communicate(timeout=300)
    assert testbed.returncode == 3, stderr
    assert stderr.strip().splitlines()[-1] == (
        "testbed: error: arm none lost source 1 (killed by SIGKILL: out of memory (limit 16Mi)); summary written")
    events = read_jsonl(out / "none" / "testbed.jsonl")
    [lost] = [e for e in events if e["event"] == "lost"]
    assert (lost["source"], lost["signal"], lost["injected"]) == (1, "SIGKILL", False)
    memory = {e["source"]: e for e in events if e["event"] == "memory"}
    assert (memory[0]["limit"], memory[0]["limit_bytes"], memory[0]["oom_killed"]) == ("2Gi", 2 * 2**30, False)
    assert (memory[1]["limit"], memory[1]["limit_bytes"], memory[1]["oom_killed"]) == ("16Mi", 16 * 2**20, True)
    assert 16 * 2**20 < memory[0]["peak_bytes"] < 2 * 2**30 and memory[1]["peak_bytes"] <= 16 * 2**20
    assert sum(e["event"] == "batch" for e in read_jsonl(out / "none" / "source-0.jsonl")) == 4
    summary = json.loads((out / "summary.json").read_text())["arms"]["none"]
    assert summary["memory_limit_mb_per_source"] == [2048.0, 16.0]
    assert summary["memory_peak_mb_per_source"][1] <= 16.0 < summary["memory_peak_mb_per_source"][0]
    assert cgroups_of(testbed.pid) == [] and workload_programs() == []


def test_a_killed_server_ends_every_source_and_the_run_in_one_line(tmp_path):
    out = tmp_path / "run"
    testbed = _testbed(out, free_port(), "--batches", 400)  # the default reply timeout: 300 s
    arm = out / "none"
    wait_for(lambda: all(any(e["event"] == "batch" for e in events_so_far(arm / f"source-{i}.jsonl"))
                          for i in range(3)), testbed)
    os.kill(_pid(arm / "server.jsonl"), signal.SIGKILL)
    stdout, stderr = testbed.communicate(timeout=600)
    assert testbed.returncode == 1
    assert stderr.strip().splitlines()[-1] == "testbed: error: the server was killed by SIGKILL while sources were running"
    for i in range(3):  # each noticed on its own, long before its reply timeout, and said so
        end = read_jsonl(arm / f"source-{i}.jsonl")[-1]
        assert end["event"] == "end" and end["status"] == "server-gone", end
        assert end["error"].startswith("the server is gone: it closed the connection")
        assert (arm / "logs" / f"source-{i}.log").read_text().strip().splitlines()[-1].startswith(
            f"source {i}: the server is gone")
    assert not (out / "summary.json").exists()
    assert workload_programs(testbed.pid) == [] and cgroups_of(testbed.pid) == []


SILENT_SERVER = """
import sys, zmq
sock = zmq.Context.instance().socket(zmq.ROUTER)
sock.bind(sys.argv[1])
sock.recv_multipart()
print("got it", flush=True)
sys.stdin.read()
"""


HEARTBEAT_TIMEOUT_S = 2.0  # --heartbeat-timeout (default 5 s): twice the heartbeat interval (1 s)


@pytest.mark.parametrize("how", ["hung", "killed"])
def test_the_source_sees_a_hung_or_killed_server_as_gone(how):
    """A server that takes the request, then stops (SIGSTOP: no heartbeat) or dies
    (SIGKILL: the connection closes): ServerGone, not a wait for the 300 s timeout (a
    --heartbeat-timeout of 2 s: the hung server is noticed by that timeout, whatever it is)."""
    address = f"tcp://127.0.0.1:{free_port()}"
    server = subprocess.Popen([sys.executable, "-c", SILENT_SERVER, address], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    connection = Connection(address, 300.0, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S)
    try:
        connection._sock.send_multipart([b"ping"])  # any frame: the server only needs to get one
        assert server.stdout.readline() == "got it\n"
        server.send_signal(signal.SIGSTOP if how == "hung" else signal.SIGKILL)
        with pytest.raises(ServerGone) as gone:
            connection.request(Message("ping", {}))
    finally:
        connection.close()
        server.kill()
        server.send_signal(signal.SIGCONT) if server.poll() is None else None
        server.wait()
    expected = f"no heartbeat for {HEARTBEAT_TIMEOUT_S:g} s" if how == "hung" else "it closed the connection"
    assert str(gone.value).startswith(f"the server is gone: {expected}")
