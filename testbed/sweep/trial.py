"""One trial of a sweep: ``testbed run`` of one arm, in a process of its own, so that a
trial that dies (or is killed) is a failed row and not a failed sweep.

``execute(settings, trial_dir, timeout_s)`` runs ``python -m testbed.sweep.trial DIR
SETTINGS_JSON`` and returns what the sweep's table needs: the status, the error line, the
wall time and the arm's summary. The child process gets SIGTERM when its parent dies
(Linux), and the testbed cleans up on SIGTERM as on Ctrl-C.

Where the platform forks (Linux), the trial is forked from a warm parent instead of
exec'd: one ``testbed.launcher`` per process that runs trials (a Ray worker, or the
testbed for trials run here), started with its first trial, has imported what a trial
imports (``TRIAL_IMPORTS``: torch, what its first optimizer step imports, the testbed,
pandas and matplotlib for its summary and report), so that each later trial starts in a
fraction of a second instead of paying those seconds of CPU again. A forked trial is the
same program with the same arguments (``main(argv)``); its output goes to its log as an
exec'd one's does.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import BackendError, Exit, exit_status
from ..processes import Fleet, child_environment, die_with_parent
from ..warmparent import WarmParent, default_spawn

LOG = "sweep-trial.log"  # the trial's terminal output, in its run directory
STATUS_BY_CODE = {Exit.OK: "ok", Exit.LOST_SOURCES: "lost-sources"}
STOP_PATIENCE_S = 120.0  # a stopped trial's own cleanup: a fleet's, or a cluster's collection and helm uninstall
PROGRAM = "testbed.sweep.trial"
# what a trial imports, imported once by the warm parent (the launcher adds what the first optimizer step imports)
TRIAL_IMPORTS = (PROGRAM, "testbed.runner", "testbed.local", "testbed.inproc", "workloads.inprocess",
                 "analysis.summary", "analysis.report")

_parent: WarmParent | None = None  # this process's warm parent of trials, started with its first trial
_exec_only = False  # its warm parent failed once: this process execs its trials from then on
# (execute is called by one thread at a time: a Ray task runs on its worker's main thread, run_here in turn)


def execute(settings: dict, trial_dir: str, timeout_s: float | None = None) -> dict:
    """Run one trial into ``trial_dir`` (replacing what a failed attempt left there)."""
    folder = Path(trial_dir)
    if folder.exists():
        shutil.rmtree(folder)
    log = folder.with_name(f".{folder.name}.log")  # the trial's output, moved into its folder once it ends
    started = time.monotonic()
    proc = _start(folder, settings, log)
    timed_out = False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _stop(proc)
    except BaseException:  # the sweep was cancelled (Ctrl-C reaches a Ray task as KeyboardInterrupt)
        try:
            _stop(proc)
        finally:
            _keep_log(log, folder)
        raise
    seconds = time.monotonic() - started
    output = _keep_log(log, folder)
    status = "failed" if timed_out else STATUS_BY_CODE.get(proc.returncode, "failed")
    error = None
    if timed_out:
        error = f"timed out after {timeout_s:g} s (the spec's timeout_s)"
    elif status == "failed":
        error = _error_line(output, proc.returncode)
    return {"status": status, "error": error, "seconds": round(seconds, 2), "returncode": proc.returncode,
            "summary": arm_summary(folder, settings["module"])}


def _start(folder: Path, settings: dict, log: Path):
    """The trial's process, its output into ``log``: forked from this process's warm parent
    where the platform forks, else exec'd."""
    argv = [str(folder), json.dumps(settings)]
    log.parent.mkdir(parents=True, exist_ok=True)
    parent = _warm_parent(log.parent.parent)
    if parent is not None:
        try:
            return parent.fork(process_name(folder), PROGRAM, argv, log=log, env=child_environment(), join=None)
        except BackendError as exc:  # it could not import, it hung, or it has gone: exec from now on
            _give_up_forking(parent, str(exc))
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", PROGRAM, *argv], stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=die_with_parent, env=child_environment())


def process_name(folder: Path) -> str:
    """A forked trial's name in ps and /proc/PID/comm (the kernel keeps 15 bytes)."""
    return f"trial {Path(folder).name}"[:15]


def _warm_parent(sweep: Path) -> WarmParent | None:
    """This process's warm parent of trials (started now if it has none, or its last one
    ended; its log in the sweep's ``logs/``); None where trials are exec'd."""
    global _parent
    if default_spawn() != "fork" or _exec_only:
        return None
    if _parent is None or _parent.closed:
        _parent = Fleet(sweep).warm_parent(f"launcher-{os.uname().nodename}-{os.getpid()}", list(TRIAL_IMPORTS))
    return _parent


def _give_up_forking(parent: WarmParent, why: str) -> None:
    """The warm parent failed: stop it (a trial it may still fork dies with it), say so once,
    and exec every later trial of this process."""
    global _parent, _exec_only
    if parent.proc.poll() is None:
        parent.proc.kill()
        parent.proc.wait()
    _parent, _exec_only = None, True
    print(f"testbed: warning: {why}; this process's trials are exec'd from now on", file=sys.stderr, flush=True)


def _keep_log(log: Path, folder: Path) -> str:
    """The trial's output, moved into its folder (made if the trial made none); the text."""
    output = log.read_text(errors="replace") if log.exists() else ""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOG).write_text(output)
    log.unlink(missing_ok=True)
    return output


def _stop(proc) -> None:
    """SIGTERM (the testbed cleans up as on Ctrl-C), then SIGKILL after STOP_PATIENCE_S."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:  # ended (a forked trial's pid is free at once: never signal it again)
            return
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=STOP_PATIENCE_S)
            return
        except subprocess.TimeoutExpired:
            continue


def _error_line(output: str, code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("testbed: error:")]
    if errors:
        return errors[-1].removeprefix("testbed: error:").strip()
    return (lines[-1] if lines else "no output") + f" (exit status {code})"


def arm_summary(folder: Path, module: str) -> dict | None:
    """The arm's entry of the trial's summary.json (None where there is none)."""
    try:
        return json.loads((folder / "summary.json").read_text())["arms"][module]
    except (OSError, ValueError, KeyError):
        return None


def main(argv=None) -> int:
    """The trial's own process: one ``testbed run`` of the settings into the folder."""
    from ..runner import run
    from ..spec import RunSpec, validate

    folder, settings = argv if argv is not None else sys.argv[1:]
    signal.signal(signal.SIGTERM, _interrupt)

    def trial() -> int:
        spec = RunSpec(**{**json.loads(settings), "out": folder})
        validate(spec)
        return run(spec, say=print)
    return exit_status(trial)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
