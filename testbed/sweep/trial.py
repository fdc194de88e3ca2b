"""One trial of a sweep: ``testbed run`` of one arm, in a process of its own, so that a
trial that dies (or is killed) is a failed row and not a failed sweep.

``execute(settings, trial_dir, timeout_s)`` runs ``python -m testbed.sweep.trial DIR
SETTINGS_JSON`` and returns what the sweep's table needs: the status, the error line, the
wall time and the arm's summary. The child process gets SIGTERM when its parent dies
(Linux), and the testbed cleans up on SIGTERM as on Ctrl-C.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import Exit, exit_status
from ..processes import child_environment, die_with_parent

LOG = "sweep-trial.log"  # the trial's terminal output, in its run directory
STATUS_BY_CODE = {Exit.OK: "ok", Exit.LOST_SOURCES: "lost-sources"}
STOP_PATIENCE_S = 120.0  # a stopped trial's own cleanup: a fleet's, or a cluster's collection and helm uninstall


def execute(settings: dict, trial_dir: str, timeout_s: float | None = None) -> dict:
    """Run one trial into ``trial_dir`` (replacing what a failed attempt left there)."""
    folder = Path(trial_dir)
    if folder.exists():
        shutil.rmtree(folder)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "testbed.sweep.trial", str(folder), json.dumps(settings)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=die_with_parent, env=child_environment())
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        output = _stop(proc)
    except BaseException:  # the sweep was cancelled (Ctrl-C reaches a Ray task as KeyboardInterrupt)
        output = _stop(proc)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / LOG).write_text(output)
        raise
    seconds = time.monotonic() - started
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOG).write_text(output)
    status = "failed" if timed_out else STATUS_BY_CODE.get(proc.returncode, "failed")
    error = None
    if timed_out:
        error = f"timed out after {timeout_s:g} s (the spec's timeout_s)"
    elif status == "failed":
        error = _error_line(output, proc.returncode)
    return {"status": status, "error": error, "seconds": round(seconds, 2), "returncode": proc.returncode,
            "summary": arm_summary(folder, settings["module"])}


def _stop(proc: subprocess.Popen) -> str:
    """SIGTERM (the testbed cleans up as on Ctrl-C), then SIGKILL after STOP_PATIENCE_S; the
    output so far."""
    proc.terminate()
    try:
        output, _ = proc.communicate(timeout=STOP_PATIENCE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    return output or ""


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
