"""The local backend's fidelity and failure paths: real processes, real cgroups.

Tests that start processes check that none of them, and none of the cgroups they
made, are left behind. The tests that only observe a run (where its programs run, their
environment, a cap per source, a killed source) share one real ``testbed run``
(``fleet_run``), watched from here while it runs. A few run ``run_arm`` in this process
to act while the children run (a progress stand-in is called while the sources run)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from conftest import REPO, TINY, cgroups_of, events_so_far, free_port, read_jsonl, wait_for, watched, \
    workload_programs
from testbed import local
from testbed.cpucap import join_cgroup
from testbed.errors import BackendError
from testbed.local import LocalBackend, run_arm
from testbed.processes import Fleet, exit_cause
from testbed.spec import RunSpec, SpecError

CGROUP = Path("/sys/fs/cgroup")
CORES = sorted(os.sched_getaffinity(0))
two_cores = pytest.mark.skipif(len(CORES) < 2, reason="needs two cores")
v1_rights = pytest.mark.skipif(not (os.access(CGROUP / "cpu", os.W_OK) and os.access(CGROUP / "cpuset", os.W_OK)),
                               reason="needs rights on the cgroup v1 cpu and cpuset controllers")


class _Pinned:
    """A spec with ``server_cpus`` where the spec does not declare it yet."""

    def __init__(self, spec, server_cpus):
        self._spec, self.server_cpus = spec, server_cpus

    def __getattr__(self, name):
        return getattr(self._spec, name)


def make_spec(port, **values):
    tiny = dict(sources=2, cpu=0.4, batches=3, epochs=1, model="vgg11-slim", batch_size=8, eval_samples=16,
                dataset="synthetic", module="none", port=port)
    tiny.update(values)
    try:
        return RunSpec(**tiny)
    except SpecError:
        server_cpus = tiny.pop("server_cpus")
        return _Pinned(RunSpec(**tiny), server_cpus)


class Watch:
    """Stands in for the progress display: run_arm calls ``update`` while sources run."""

    def __init__(self, look):
        self.look, self.calls = look, 0

    def update(self):
        self.calls += 1
        self.look(self.calls)


@pytest.fixture
def leaves_nothing():
    """Fails the test if it leaves a workload process or a splittest cgroup behind
    (others may be running testbeds beside this one: only ours count)."""
    yield
    assert workload_programs() == []
    assert cgroups_of(os.getpid()) == []


# -- one run, watched, for the tests that only observe a run ------------------------------

FLEET_CPU = (0.6, 0.4)  # one cap per source; their sum fits the sources' one core beside a pinned server
FLEET_BATCHES = 40  # source 0 trains every batch; source 1 is killed once it has traced three
SPLITTEST_ENV = {"SPLITTEST_MOMENTUM": "0.123", "SPLITTEST_EPOCHS": "7"}



@pytest.fixture(scope="module")
def fleet_run(tmp_path_factory):
    """One real ``testbed run`` of two sources, shared by the tests that only observe a run:
    ``--cpu 0.6,0.4`` (a cap per source), ``--server-cpus 1`` where there are two cores (the
    server on a core of its own), SPLITTEST_* variables in the testbed's environment (its
    children must not get them). Once both sources have traced their start, the testbed's
    and every program's environment and the programs' affinity are read; once source 1 has
    traced three batches it is killed with SIGKILL (a lost source, named by its signal; three
    batches: the summary still judges its CPU share). Then what is left behind (programs,
    cgroups) is looked at."""
    out = tmp_path_factory.mktemp("fleet") / "run"
    pinned = ["--server-cpus", "1"] if len(CORES) >= 2 else []
    testbed = subprocess.Popen(
        [sys.executable, "-m", "testbed.cli", "run", "--sources", "2", "--cpu", ",".join(map(str, FLEET_CPU)),
         *pinned, "--batches", str(FLEET_BATCHES), "--epochs", "1", *TINY, "--module", "none", "--out", str(out),
         "--port", str(free_port()), "--quiet", "--no-report"],
        cwd=REPO, env={**os.environ, **SPLITTEST_ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    arm = out / "none"

    def traced(source, event, count=1):
        return sum(e["event"] == event for e in events_so_far(arm / f"source-{source}.jsonl")) >= count

    def look_then_kill_source_1():
        wait_for(lambda: traced(0, "start") and traced(1, "start"), testbed)
        environment = psutil.Process(testbed.pid).environ()
        running = [(role, tuple(proc.cpu_affinity()), proc.environ()) for role, proc in workload_programs(testbed.pid)]
        wait_for(lambda: traced(1, "batch", 3), testbed)
        os.kill(next(e["pid"] for e in read_jsonl(arm / "source-1.jsonl") if e["event"] == "start"), signal.SIGKILL)
        return environment, running
    (environment, running), stderr = watched(testbed, look_then_kill_source_1)
    return SimpleNamespace(out=out, arm=arm, returncode=testbed.returncode, stderr=stderr,
                           testbed_environment=environment, running=running,
                           left=(workload_programs(testbed.pid), cgroups_of(testbed.pid)))


# -- --server-cpus ---------------------------------------------------------------------

@two_cores
def test_server_cpus_gives_the_server_cores_of_its_own(fleet_run):
    seen = {}
    for role, affinity, _ in fleet_run.running:  # every program started and still running
        seen.setdefault(role, set()).add(affinity)
    server, sources = CORES[-1:], CORES[:-1]
    # the sources' warm parent (--spawn fork, the default) runs on the sources' cores too
    assert seen == {"server": {tuple(server)}, "source": {tuple(sources)}, "launcher": {tuple(sources)}}
    manifest = json.loads((fleet_run.out / "manifest.json").read_text())
    pinning = manifest["arms"]["none"]["pinning"]
    assert pinning["server_cpus"] == server and pinning["source_cpus"] == sources
    assert manifest["arms"]["none"]["server_threads"] == {"threads": 1, "why": "its 1 pinned core (--server-cpus)"}
    assert manifest["cap"]["detail"].startswith(f"server on CPU {server[0]}, sources on CPU ")
    if os.access(CGROUP / "cpuset", os.W_OK) and not (CGROUP / "cgroup.controllers").exists():
        warnings = [line for line in fleet_run.stderr.splitlines() if line.startswith("testbed: warning: ")]
        assert pinning["method"] == "cgroup-v1 cpuset"
        assert warnings == []  # no pinning or cap warning (the run draws no report: --no-report)
    listening = [e for e in read_jsonl(fleet_run.arm / "server.jsonl") if e["event"] == "listening"]
    assert listening[0]["threads"] == 1  # torch threads: its one core, no more
    assert fleet_run.left == ([], [])  # no program, no cgroup (nor cpuset) left behind


@pytest.mark.quick
def test_server_cpus_must_leave_a_core_for_the_sources(tmp_path, port, leaves_nothing):
    with pytest.raises(BackendError, match=f"--server-cpus {len(CORES)} leaves no core for the sources"):
        run_arm(make_spec(port, server_cpus=len(CORES)), "none", tmp_path / "arm", "t", progress=None)
    assert list((tmp_path / "arm" / "logs").iterdir()) == []  # nothing was started


def test_oversubscription_is_one_warning_per_run_and_a_dead_server_names_its_error(tmp_path, capsys,
                                                                                    leaves_nothing):
    with socket.socket() as taken:  # the server cannot listen: its trace's end event says so
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        backend = LocalBackend(make_spec(port, sources=len(CORES) * 3), say=lambda *a, **k: None)
        for arm in ("none", "filter"):
            with pytest.raises(BackendError) as failed:
                backend.run_arm(arm, tmp_path / arm, "t")
            assert str(failed.value) == (f"the server exited with status 2 before listening: cannot listen on "
                                         f"port {port}: Address already in use")
    err = capsys.readouterr().err
    assert err.count("testbed: warning: ") == 1
    assert f"{len(CORES) * 3} sources × 0.4 CPU + the server need ≥ " in err


# -- failures are one-line errors, and leave nothing behind ------------------------------

def _read_only_cgroups():
    """The cgroup folder to make read-only for a run: v1's cpu controller, or v2's root."""
    return CGROUP / "cpu" if (CGROUP / "cpu" / "cpu.cfs_quota_us").exists() else CGROUP


def _unshare_works():
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            f"mount -o bind,remount,ro {_read_only_cgroups()}"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs root and mount namespaces (unshare)")
def test_cgroups_the_run_may_not_make_are_a_one_line_error(tmp_path, port, leaves_nothing):
    """`--cap-method cgroup` where the cgroup tree is read-only (a real refusal by the
    kernel, in a mount namespace of the run's own): an error, not a traceback."""
    out, folder = tmp_path / "run", _read_only_cgroups()
    testbed = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'mount -o bind,remount,ro {folder} && exec "$@"',
         "sh", sys.executable, "-m", "testbed.cli", "run", "--sources", "2", "--batches", "2", "--epochs", "1", *TINY,
         "--cap-method", "cgroup", "--out", str(out), "--port", str(port), "--quiet"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # unshare and sh exec: one pid
    stdout, stderr = testbed.communicate(timeout=300)
    result = subprocess.CompletedProcess(testbed.args, testbed.returncode, stdout, stderr)
    assert cgroups_of(testbed.pid) == []
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("testbed: error: cannot set up cgroup v")
    assert "Read-only file system" in result.stderr
    assert list((out / "none" / "logs").iterdir()) == []  # the cap comes first: nothing was started


@v1_rights
@pytest.mark.parametrize("spawn", ["exec", "fork"])
def test_a_cgroup_the_kernel_refuses_to_join_is_named(tmp_path, leaves_nothing, spawn):
    """A v1 cpuset takes no process before its cpus and mems are set: the child's join
    fails with ENOSPC, which subprocess alone reports as 'Exception occurred in preexec_fn'
    and a warm parent's child reports on its status pipe. Either way the error names it,
    and no source is left (a warm parent is, until the fleet stops)."""
    group = CGROUP / "cpuset" / f"splittest-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    group.mkdir()
    fleet = Fleet(tmp_path)
    try:
        parent = fleet.warm_parent("launcher", ["workloads.source"]) if spawn == "fork" else None
        with pytest.raises(BackendError) as failed:
            fleet.start("source-0", "workloads.source", [], join_cap=join_cgroup(group), parent=parent)
    finally:
        fleet.stop()
        group.rmdir()
    assert str(failed.value) == f"cannot start source-0: cannot join cgroup {group}: No space left on device"
    assert list(fleet.procs) == ([] if spawn == "exec" else ["launcher"])
    assert all(proc.poll() is not None for proc in fleet.procs.values())


@v1_rights
def test_a_failed_join_mid_run_stops_everything_and_removes_the_cgroups(tmp_path, port, monkeypatch,
                                                                         leaves_nothing):
    made = []

    def make_cap_then_lose_a_group(*args, **kwargs):
        cap = real_make_cap(*args, **kwargs)
        made.append(cap)
        (cap.groups[1]).rmdir()  # source-1's cgroup is gone before it joins
        return cap
    real_make_cap = local.make_cap
    monkeypatch.setattr(local, "make_cap", make_cap_then_lose_a_group)
    with pytest.raises(BackendError) as failed:
        run_arm(make_spec(port, cap_method="cgroup"), "none", tmp_path / "arm", "t", progress=None)
    group = made[0].parent / "source-1"
    assert str(failed.value) == f"cannot start source-1: cannot join cgroup {group}: No such file or directory"
    assert not made[0].parent.exists()


def test_a_second_ctrl_c_or_sigterm_during_the_cleanup_waits_for_it(tmp_path, port, monkeypatch, leaves_nothing):
    """A first Ctrl-C while the programs run starts the cleanup; a SIGTERM (which the CLI
    turns into KeyboardInterrupt) and a second Ctrl-C arrive while the processes are being
    stopped and while the cgroups are being removed: both finish, then the run is
    interrupted by the first of them to arrive."""
    signals, running = [], []
    real_stop = Fleet.stop

    def stop_interrupted(self, cap=None):
        running.extend(name for name, proc in self.procs.items() if proc.poll() is None)
        os.kill(os.getpid(), signal.SIGTERM)
        signals.append("SIGTERM")
        real_stop(self, cap)
        signals.append("stopped")

    def make_cap_interrupted_at_release(*args, **kwargs):
        cap = real_make_cap(*args, **kwargs)
        made.append(cap)
        real_release = cap.release

        def release():
            os.kill(os.getpid(), signal.SIGINT)
            signals.append("SIGINT")
            real_release()
            signals.append("released")
        cap.release = release
        return cap
    made, real_make_cap = [], local.make_cap
    monkeypatch.setattr(local, "make_cap", make_cap_interrupted_at_release)
    monkeypatch.setattr(Fleet, "stop", stop_interrupted)

    def first_ctrl_c(call):  # every program started: the user presses Ctrl-C
        if call == 1:
            signals.append("first SIGINT")
            os.kill(os.getpid(), signal.SIGINT)  # Python's own handler: KeyboardInterrupt, here

    def raise_interrupt(signum, frame):
        signals.append("SIGTERM delivered")
        raise KeyboardInterrupt("SIGTERM")
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        with pytest.raises(KeyboardInterrupt) as interrupted:
            run_arm(make_spec(port), "none", tmp_path / "arm", "t", progress=Watch(first_ctrl_c))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert running == ["launcher", "server", "source-0", "source-1"]  # the cleanup had processes to stop
    assert signals == ["first SIGINT", "SIGTERM", "stopped", "SIGINT", "released", "SIGTERM delivered"]
    assert interrupted.value.args == ("SIGTERM",)  # the held signal, delivered once the cleanup is done
    if made[0].method.startswith("cgroup"):
        assert not made[0].parent.exists()


# -- the cause of a process's end --------------------------------------------------------

def test_a_killed_source_is_named_by_its_signal(fleet_run):
    [lost] = [e for e in read_jsonl(fleet_run.arm / "testbed.jsonl") if e["event"] == "lost"]  # not the arm's end
    assert (lost["source"], lost["cause"], lost["signal"], lost["injected"]) == (1, "killed by SIGKILL", "SIGKILL", False)
    assert sum(e["event"] == "batch" for e in read_jsonl(fleet_run.arm / "source-0.jsonl")) == FLEET_BATCHES
    assert fleet_run.returncode == 3 and fleet_run.stderr.strip().splitlines()[-1] == (
        "testbed: error: arm none lost source 1 (killed by SIGKILL); summary written")  # --no-report
    assert fleet_run.left == ([], [])


def test_exit_cause_prefers_the_traced_error_then_the_traceback_then_the_log(tmp_path, port):
    fleet = Fleet(tmp_path)
    trace = tmp_path / "source-0.jsonl"
    argv = ["--server", f"tcp://127.0.0.1:{port}", "--timeout", "1", "--connect-timeout", "1", "--trace", str(trace),
            *TINY,
            "--batches", "1", "--epochs", "1"]
    try:
        proc = fleet.start("source-0", "workloads.source", argv, trace=trace)  # nobody listens
        proc.wait(timeout=120)
    finally:
        fleet.stop()
    end = [e for e in read_jsonl(trace) if e["event"] == "end"][-1]
    assert proc.returncode == 2 and end["status"] == "error"
    assert fleet.exit_cause("source-0") == end["error"]

    log = tmp_path / "crash.log"
    with open(log, "wb") as out:  # a real Python crash after an unrelated note
        code = subprocess.call([sys.executable, "-c", "import sys; print('note: using the synthetic dataset', "
                                "file=sys.stderr); raise RuntimeError('boom')"], stdout=out, stderr=out)
    assert exit_cause(code, None, log) == "RuntimeError: boom"
    assert exit_cause(-signal.SIGKILL, trace, log) == "killed by SIGKILL"
    quiet = tmp_path / "quiet.log"
    quiet.write_text("first\nlast words\n")
    assert exit_cause(3, tmp_path / "missing.jsonl", quiet) == "no error recorded; its log ends: first | last words"


# -- the children's environment -----------------------------------------------------------

def test_children_do_not_inherit_splittest_variables(fleet_run):
    testbed = fleet_run.testbed_environment
    assert {k: testbed.get(k) for k in SPLITTEST_ENV} == SPLITTEST_ENV  # the testbed itself had them
    assert sorted(role for role, _, _ in fleet_run.running) == ["launcher", "server", "source", "source"]
    for role, _, env in fleet_run.running:
        assert not [k for k in env if k.startswith("SPLITTEST_")], (role, env)
        assert env.get("PATH") == os.environ.get("PATH")  # the rest of the environment is kept
    start = [e for e in read_jsonl(fleet_run.arm / "source-0.jsonl") if e["event"] == "start"][0]
    if "settings" in start:
        assert start["settings"]["momentum"] == 0.9 and start["settings"]["epochs"] == 1
    assert fleet_run.left == ([], [])


# -- a heterogeneous fleet -------------------------------------------------------------------

def test_cpu_takes_one_cap_per_source_and_the_summary_judges_each_by_its_own(fleet_run):
    assert fleet_run.returncode == 3, fleet_run.stderr  # source 1 lost: the summary is written all the same
    manifest = json.loads((fleet_run.out / "manifest.json").read_text())
    assert manifest["spec"]["cpu"] == list(FLEET_CPU)
    arm = json.loads((fleet_run.out / "summary.json").read_text())["arms"]["none"]
    assert arm["cpu_cap"] == list(FLEET_CPU)
    judged = list(zip(arm["cpu_share_computing_per_source"], arm["cpu_share_over_cap_per_source"], FLEET_CPU))
    assert len(judged) == 2
    for computing, over, cap in judged:  # the lost source too: it traced three batches
        assert computing is not None and over == round(computing / cap, 4)
    if manifest["cap"]["method"].startswith("cgroup"):
        assert "40000/60000 us per 100000 us" in manifest["cap"]["detail"]
    assert fleet_run.left == ([], [])


@pytest.mark.quick
def test_a_cpu_list_is_cycled_and_refused_on_kubernetes():
    spec = RunSpec(sources=5, cpu="0.4,0.2")
    assert spec.cpus == [0.4, 0.2, 0.4, 0.2, 0.4] and spec.cpu_cap == [0.4, 0.2, 0.4, 0.2, 0.4]
    assert RunSpec(sources=2, cpu="0.3,0.3").cpu == 0.3  # one value after all
    from testbed.spec import validate
    with pytest.raises(SpecError, match="--cpu with one value per source is for the local backend"):
        validate(RunSpec(sources=2, cpu="0.4,0.2", backend="k8s"))
    with pytest.raises(SpecError, match="--cpu must be positive"):
        validate(RunSpec(sources=2, cpu="0.4,0"))


# -- --spawn fork (a warm parent) against exec ------------------------------------------------

def test_forked_and_execd_sources_train_on_the_same_shards_and_send_the_same_bytes(tmp_path, tiny_run):
    """The same one-source run, its source forked from a warm parent and exec'd, side by
    side: the source holds the same shard (its digest) and sends the same bytes batch by
    batch. JPEG at the input: its bytes follow every pixel of every batch, in order."""
    runs = {}
    for spawn in ("fork", "exec"):
        runs[spawn] = subprocess.Popen(
            [sys.executable, "-m", "testbed.cli", "run", "--sources", "1", "--cpu", "1", "--batches", "3",
             "--epochs", "1", *TINY, "--module", "jpeg", "--spawn", spawn, "--out", str(tmp_path / spawn),
             "--port", str(free_port()), "--quiet", "--no-report"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
    for spawn, proc in runs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (spawn, err)

    def seen(folder, source=0):
        trace = read_jsonl(folder / f"source-{source}.jsonl")
        [data] = [e for e in trace if e["event"] == "data"]
        sent = [(e["batch"], e["bytes_sent"], e["payload_sent"]) for e in trace if e["event"] == "batch"]
        return data["train_digest"], data["train_samples"], sent
    fork, execd = seen(tmp_path / "fork" / "jpeg"), seen(tmp_path / "exec" / "jpeg")
    assert fork == execd and len(fork[2]) == 3
    shared, _ = tiny_run  # two sources: the digest tells their shards apart
    assert seen(shared / "none", 0)[0] != seen(shared / "none", 1)[0]
    logs = {spawn: sorted(p.name for p in (tmp_path / spawn / "jpeg" / "logs").iterdir()) for spawn in runs}
    assert logs == {"fork": ["launcher.log", "server.log", "source-0.log"], "exec": ["server.log", "source-0.log"]}
    assert "imported in" in (tmp_path / "fork" / "jpeg" / "logs" / "launcher.log").read_text()
    manifests = {spawn: json.loads((tmp_path / spawn / "manifest.json").read_text())["spec"]["spawn"] for spawn in runs}
    assert manifests == {"fork": "fork", "exec": "exec"}


# -- --memory ----------------------------------------------------------------------------------

@pytest.mark.quick
def test_memory_limits_are_kubernetes_quantities_cycled_and_one_value_on_kubernetes(cli):
    from testbed.k8s.values import chart_values
    from testbed.memcap import parse_size
    from testbed.spec import validate
    assert [parse_size(t) for t in ("512Mi", "2Gi", "800M", "1.5G", "67108864")] == [
        512 * 2**20, 2 * 2**30, 800 * 10**6, 1_500_000_000, 64 * 2**20]
    for bad, why in (("512MB", "is not a size"), ("-1Gi", "is not a size"), ("1m", "is not a size"),
                     ("Mi", "is not a size"), ("8Mi", "below the smallest limit")):
        with pytest.raises(ValueError, match=f"^--memory: .*{why}"):
            parse_size(bad)
    assert RunSpec(sources=3, memory="1Gi,512Mi").memories == ["1Gi", "512Mi", "1Gi"]
    assert RunSpec(sources=2).memories == [None, None]
    result = cli("run", "--memory", "512MB", "--port", free_port())
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "testbed: error: --memory: '512MB' is not a size: give a number with one of the units k, M, G, T, Ki, Mi, Gi, "
        "Ti (512Mi, 2Gi) or bytes"]
    with pytest.raises(SpecError, match="--memory with one value per source is for the local backend"):
        validate(RunSpec(sources=2, memory="1Gi,512Mi", backend="k8s"))
    assert chart_values(RunSpec(backend="k8s", memory="1Gi"), "none", "r")["memory"] == "1Gi"
    assert "memory" not in chart_values(RunSpec(backend="k8s"), "none", "r")  # the chart's own, 2Gi


@pytest.mark.quick
def test_the_server_threads_are_given_pinned_or_every_core_and_the_run_says_why():
    from testbed.processes import server_threads
    assert server_threads(RunSpec(server_threads=3)) == (3, "--server-threads 3")
    assert server_threads(make_spec(free_port(), server_cpus=1)) == (1, "its 1 pinned core (--server-cpus)")
    threads, why = server_threads(RunSpec(sources=8, cpu=0.4))
    assert threads == len(CORES) and why.startswith(f"the {len(CORES)} core")
