"""The testbed's side of ``testbed.launcher``: a warm parent that forks an arm's sources
(``--spawn fork``), and each forked source as an object that answers like the
``subprocess.Popen`` of an exec'd one (``pid``, ``poll``, ``wait``, ``returncode``), so
that a ``Fleet`` stops, waits for and explains both alike."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from .errors import BackendError
from .joining import Join

READY_TIMEOUT_S = 300.0  # the launcher's imports, uncapped (about 3 s here; more on a loaded host)
START_TIMEOUT_S = 60.0   # one fork and its joins
LAUNCHER_GONE = 125      # a forked process's status when its launcher ended before it and nobody saw how it ended
WAIT_POLL_S = 0.02
SPAWN_METHODS = ("fork", "exec")


def default_spawn() -> str:
    """fork where the platform has it (Linux), else exec."""
    return "fork" if sys.platform.startswith("linux") and hasattr(os, "fork") else "exec"


def spawn_method(spec) -> str:
    """``--spawn``, where this platform can: exec where it cannot fork."""
    return spec.spawn if spec.spawn == "exec" else default_spawn()


class WarmParent:
    """A running ``testbed.launcher`` (its Popen is ``proc``); ``fork`` starts a program in a
    child of it. A thread reads its reports."""

    def __init__(self, proc: subprocess.Popen, describe_end):
        self.proc = proc
        self.describe_end = describe_end  # () -> str: how the launcher ended, from its log
        self.returncodes: dict[int, int] = {}
        self.replies: list[dict] = []
        self.ready = False
        self.error = ""
        self.closed = False  # its report pipe reached its end: it has exited
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="launcher-reports", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                report = json.loads(line)
            except ValueError:
                continue
            with self._changed:
                if "returncode" in report:
                    self.returncodes[int(report["pid"])] = int(report["returncode"])
                elif report.get("ready"):
                    self.ready = True
                elif "name" in report:
                    self.replies.append(report)
                elif "error" in report:
                    self.error = str(report["error"])
                self._changed.notify_all()
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def _await(self, test, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                found = test()
                if found:
                    return found
                if self.closed:
                    self.proc.wait()
                    raise BackendError(f"{what}: the launcher {self.error or self.describe_end()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BackendError(f"{what}: no answer from the launcher within {timeout_s:.0f} s")
                self._changed.wait(left)

    def fork(self, name: str, module: str, argv: list[str], *, log: Path, env: dict, join: Join | None
             ) -> "ForkedProcess":
        """``python -m module argv`` as a forked child of the launcher, joined first; a
        failure is a BackendError that says what failed."""
        self.wait_ready(name)
        request = {"name": name, "module": module, "argv": list(argv), "log": str(log), "env": env,
                   "join": join.as_dict() if join else {}}
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            pass  # it has gone: _await says how
        reply = self._await(lambda: self._take(name), START_TIMEOUT_S, f"cannot start {name}")
        if "error" in reply:
            raise BackendError(f"cannot start {name}: {reply['error']}")
        return ForkedProcess(int(reply["pid"]), self, [module, *argv])

    def wait_ready(self, name: str) -> None:
        """Until the launcher has imported its programs (a BackendError naming ``name`` if it
        cannot): a wait of seconds, which the caller keeps outside its deferred signals."""
        self._await(lambda: self.ready, READY_TIMEOUT_S, f"cannot start {name}")

    def _take(self, name: str) -> dict | None:
        for i, reply in enumerate(self.replies):
            if reply.get("name") == name:
                return self.replies.pop(i)
        return None

    def returncode_of(self, pid: int) -> int | None:
        with self._changed:
            if pid in self.returncodes:
                return self.returncodes[pid]
            if not self.closed:
                return None
        # the launcher ended first: its child got SIGTERM (PDEATHSIG) and init reaps it
        try:
            os.kill(pid, 0)
            return None
        except ProcessLookupError:
            return LAUNCHER_GONE
        except PermissionError:
            return None

    def wait_for_change(self, timeout_s: float) -> None:
        with self._changed:
            self._changed.wait(timeout_s)

    def close(self) -> None:
        """No more requests: it exits once its children have."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass


class ForkedProcess:
    """A process forked by a WarmParent, with Popen's ``pid``, ``args``, ``returncode``,
    ``poll()`` and ``wait(timeout)``."""

    def __init__(self, pid: int, parent: WarmParent, args: list[str]):
        self.pid, self.parent, self.args = pid, parent, args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.parent.returncode_of(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.parent.wait_for_change(WAIT_POLL_S if left is None else min(WAIT_POLL_S * 10, left))
        return self.returncode
