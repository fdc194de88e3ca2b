import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from testbed.cgroups import CGROUP_ROOT, has_controller  # noqa: F401 (CGROUP_ROOT: for the tests)

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port():
    return free_port()


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def run_testbed(*args, timeout=600, **kwargs):
    """Run the real `testbed` CLI in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "testbed.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=kwargs.pop("cwd", REPO), **kwargs)


def _in_process(main, argv, capsys) -> subprocess.CompletedProcess:
    """``main(argv)`` of a program in this process, as its exit status, stdout and stderr
    (a CompletedProcess, like ``run_testbed``'s): no interpreter to start, no torch to import.
    The SIGTERM handler a program installs is put back afterwards."""
    argv = [str(a) for a in argv]
    previous = signal.getsignal(signal.SIGTERM)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's errors and --help
        code = exc.code
    finally:
        signal.signal(signal.SIGTERM, previous)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, out, err)


@pytest.fixture
def cli(capsys):
    """The ``testbed`` command in this process: ``cli("run", "--sources", 0)`` -> CompletedProcess.
    For what a command says and returns; a test about the process itself (signals, the
    process tree, the console script) starts it with ``run_testbed``."""
    from testbed.cli import main
    return lambda *args: _in_process(main, args, capsys)


@pytest.fixture
def program(capsys):
    """``python -m workloads.<role>`` in this process: ``program("server", "--port", p)``."""
    def call(role, *args):
        import importlib
        return _in_process(importlib.import_module(f"workloads.{role}").main, args, capsys)
    return call




def events_so_far(path) -> list[dict]:
    """The events of a trace being written: [] before it exists, and while a line is half
    written (the next look reads it whole)."""
    try:
        return read_jsonl(path)
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def wait_for(predicate, proc: subprocess.Popen, patience_s: float = 300) -> None:
    """Until ``predicate()``, while ``proc`` (the testbed) runs: polling the traces, the only
    sign of the event that matters. The patience is a guard against a hung run, not a measure."""
    import time

    deadline = time.monotonic() + patience_s
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.05)


def watched(testbed: subprocess.Popen, watch):
    """``watch()`` while ``testbed`` (a ``testbed run`` started by a test) runs, then its end:
    (what ``watch`` returned, the testbed's stderr). If watching fails, the testbed is
    interrupted first (its own cleanup: nothing of the run is left behind)."""
    try:
        seen = watch()
        _, stderr = testbed.communicate(timeout=600)
    except BaseException:
        testbed.send_signal(signal.SIGINT)
        testbed.communicate(timeout=60)
        raise
    return seen, stderr


def workload_programs(pid=None) -> list[tuple[str, psutil.Process]]:
    """The workload programs under process ``pid`` (default: this one): (role, process); a
    source's warm parent (testbed.launcher) is one, role ``launcher``."""
    found = []
    for child in psutil.Process(pid).children(recursive=True) if psutil.pid_exists(pid or os.getpid()) else []:
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if "workloads.server" in cmd:
            found.append(("server", child))
        elif "testbed.launcher" in cmd:  # a warm parent, or a source it forked (named source-N)
            found.append(("source" if child.name().startswith("source-") else "launcher", child))
        elif "workloads.source" in cmd:
            found.append(("source", child))
    return found


def cgroup_roots() -> list[Path]:
    """Where this host lets a run make its cgroups, found with the testbed's own rule
    (testbed/cgroups.py): cgroup v2's root when it offers the cpu controller, else v1's cpu
    and cpuset controllers; [] when this process may make none (the run caps with psutil)."""
    if has_controller(2, CGROUP_ROOT):
        return [CGROUP_ROOT] if os.access(CGROUP_ROOT, os.W_OK) else []
    if has_controller(1, CGROUP_ROOT / "cpu") and os.access(CGROUP_ROOT / "cpu", os.W_OK):
        return [CGROUP_ROOT / "cpu"] + ([CGROUP_ROOT / "cpuset"] if (CGROUP_ROOT / "cpuset").is_dir() else [])
    return []


def cgroups_of(pid) -> list[str]:
    """The splittest cgroups (cpu, cpuset, memory; v1 or v2) that testbed process ``pid`` made."""
    roots = (CGROUP_ROOT / "cpu", CGROUP_ROOT / "cpuset", CGROUP_ROOT / "memory", CGROUP_ROOT)
    return sorted(str(p) for root in roots if root.is_dir() for p in root.glob(f"splittest-{pid}-*"))


# Small settings that keep an end-to-end run to seconds on 2 cores.
TINY = ["--model", "vgg11-slim", "--batch-size", "8", "--eval-samples", "16", "--dataset", "synthetic"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One real two-arm run (none, filter) shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    result = run_testbed("run", "--sources", 2, "--cpu", 0.4, "--batches", 3, "--epochs", 2, *TINY,
                         "--out", out, "--port", free_port())
    assert result.returncode == 0, result.stderr
    return out, result


# One real sweep on a real local Ray, shared by the tests that read a sweep (test_sweep,
# test_reproduce, the sweep notebook): its arms span a knob, a schedule, adaptation and two
# seeds, and its last trial ("long") is killed mid-run, so it holds a failed row too.
TINY_SWEEP = """timeout_s = 300
backend = "inproc"
[base]
sources = 1
model = "vgg11-slim"
dataset = "synthetic"
batches = 2
epochs = 3
eval-samples = 32
no-report = true
[[arms]]
module = "none"
[[arms]]
module = "filter"
budget = [2, 8]
[[arms]]
module = "prune"
schedule = "32:1,8:2"
[[arms]]
label = "adaptive"
module = "filter"
adapt = "threshold"
target = 1000000.0
adapt-interval = 0.02
batches = 6
epochs = 1
seed = [0, 1]
"""
LONG_ARM = '[[arms]]\nlabel = "long"\nmodule = "filter"\nepochs = 100000\n'  # killed once it trains


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory):
    """``testbed sweep`` of TINY_SWEEP plus LONG_ARM, its ``long`` trial SIGKILLed once it has
    trained a batch: (sweep folder, spec file, the finished CompletedProcess, killed)."""
    folder = tmp_path_factory.mktemp("sweep")
    spec = folder / "spec.toml"
    spec.write_text(TINY_SWEEP + LONG_ARM)
    out = folder / "sweep"
    command = [sys.executable, "-m", "testbed.cli", "sweep", str(spec), "--out", str(out), "--cpus", "2"]
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    killed = _kill_when_training(sweep, (out / "trials" / "long").resolve())
    stdout, stderr = sweep.communicate(timeout=600)
    return out, spec, subprocess.CompletedProcess(command, sweep.returncode, stdout, stderr), killed


def _kill_when_training(sweep: subprocess.Popen, trial_dir: Path, deadline_s: float = 300) -> bool:
    """SIGKILL the process of the trial that writes into ``trial_dir`` once it has trained a
    batch (its trace says so); False if the sweep ended first. A trial forked from its warm
    parent is named "trial <id>" (15 characters at most); an exec'd one has its folder on
    its command line."""
    import time

    from testbed.sweep.trial import PROGRAM, process_name

    end = time.monotonic() + deadline_s
    while time.monotonic() < end and sweep.poll() is None:
        if any(e["event"] == "batch" for e in events_so_far(trial_dir / "filter" / "source-0.jsonl")):
            for proc in psutil.process_iter(["name", "cmdline"]):
                cmdline = proc.info["cmdline"] or []
                if proc.info["name"] == process_name(trial_dir) or (PROGRAM in cmdline and str(trial_dir) in cmdline):
                    proc.send_signal(signal.SIGKILL)
                    return True
        time.sleep(0.2)  # polling the trace: the trial gives no other sign that it trains
    return False
