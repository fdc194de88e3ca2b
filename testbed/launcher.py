"""The warm parent of an arm's sources: ``python -m testbed.launcher [--run FOLDER] [--data
DATASET DATA_DIR] MODULE...``.

It imports the programs named (``workloads.source``: torch, numpy, ZeroMQ, the compression
modules) once and builds nothing: no model, no data, no thread, no ZeroMQ context, no
OpenMP pool (a pool started before a fork hangs the child); with ``--data`` it reads the
dataset once (``workloads.data.preload``: each source's shard is then a view of pages they
all share). Then it forks one process per request, so that a source starts with everything imported, shares those pages with its
siblings, and pays under its CPU cap only for what is its own.

Each forked child, before the program runs: leads a session of its own, dies with the
launcher (which dies with the testbed), writes its output to its log, takes the
environment it was given (nothing inherited), and joins its cgroups, cores and network
namespace (a ``testbed.joining.Join``). Then it runs ``MODULE.main(argv)``, exactly what
``python -m MODULE argv`` would run, and exits with its status.

Requests, one JSON object per line on stdin: ``{"name", "module", "argv", "log", "env",
"join"}``. Reports, one JSON object per line on stdout: ``{"ready": true}`` once imported;
per request ``{"name", "pid"}``, or ``{"name", "error"}`` when the child could not join
(it has exited); per child that ended ``{"pid", "returncode"}`` (negative: the signal that
killed it, as subprocess gives it). The launcher exits when stdin closes and its children
have ended; its own output goes to stderr (its log).
"""
from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import selectors
import signal
import sys
import time
import traceback

from .joining import Join
from .processes import PREEXEC_MARK, die_with_parent

PR_SET_NAME = 15
JOINED = b"ok"  # what a child writes on its status pipe once it has joined


def preload(modules: list[str]) -> None:
    for name in modules:
        importlib.import_module(name)
    from workloads.models import warm_up
    warm_up()  # what the first optimizer step imports: about 2 CPU-s, under each source's cap otherwise
    gc.collect()
    gc.freeze()  # what is imported stays out of the children's collections: its pages stay shared


class Launcher:
    def __init__(self, requests: int, reports: int):
        self.requests, self.reports = requests, reports
        self.children: set[int] = set()
        self.buffer = b""

    def report(self, **fields) -> None:
        os.write(self.reports, (json.dumps(fields, separators=(",", ":")) + "\n").encode())

    def serve(self) -> None:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        selector = selectors.DefaultSelector()
        selector.register(self.requests, selectors.EVENT_READ, "requests")
        selector.register(wake_r, selectors.EVENT_READ, "wake")
        open_ = True
        while open_ or self.children:
            for key, _ in selector.select(timeout=1.0):
                if key.data == "wake":
                    while True:
                        try:
                            if not os.read(wake_r, 512):
                                break
                        except BlockingIOError:
                            break
                elif open_:
                    chunk = os.read(self.requests, 65536)
                    if not chunk:
                        open_ = False
                        selector.unregister(self.requests)
                    self.buffer += chunk
                    while b"\n" in self.buffer:
                        line, self.buffer = self.buffer.split(b"\n", 1)
                        if line.strip():
                            self.start(json.loads(line))
            self.reap()

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.report(pid=pid, returncode=os.waitstatus_to_exitcode(status))

    def start(self, request: dict) -> None:
        name = request["name"]
        status_r, status_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(status_r)
            run_child(request, status_w, (self.requests, self.reports))
        os.close(status_w)
        with os.fdopen(status_r, "rb") as status:
            said = status.read()
        if said == JOINED:
            self.children.add(pid)
            self.report(name=name, pid=pid)
            return
        os.waitpid(pid, 0)  # it has exited: reap it here, not as a child that ended
        self.report(name=name, error=said.decode(errors="replace").strip() or "the child exited before it joined")


def run_child(request: dict, status_w: int, private: tuple[int, ...]) -> None:
    """In the forked child: set up as ``Fleet.start`` would set up a process between fork
    and exec, then run the program. Never returns."""
    code = 1
    try:
        os.setsid()
        die_with_parent()
        name_process(request["name"])
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        for fd in (null, log, *private):
            os.close(fd)
        os.environ.clear()
        os.environ.update(request.get("env") or {})
        try:
            Join.from_dict(request.get("join") or {})()
        except BaseException as exc:  # noqa: BLE001 -- whatever it is, the launcher reports it
            text = f"{exc}"
            os.write(2, f"{PREEXEC_MARK}{text}\n".encode(errors="replace"))
            os.write(status_w, text.encode(errors="replace"))
            os._exit(1)
        os.write(status_w, JOINED)
        os.close(status_w)
        module = importlib.import_module(request["module"])
        sys.argv = [module.__file__, *request["argv"]]
        code = module.main(request["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    except BaseException:  # noqa: BLE001 -- as the interpreter would: the traceback, status 1
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(int(code or 0) & 0xFF)


def name_process(name: str) -> None:
    """The child's name in ps, top and /proc/PID/comm (15 bytes at most); its command line stays the launcher's."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except OSError:
        pass


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--run"]:  # the arm's folder: only so that ps names the run its processes belong to
        argv = argv[2:]
    data = None
    if argv[:1] == ["--data"]:  # DATASET DATA_DIR: read once here, its pages shared with every source
        data, argv = argv[1:3], argv[3:]
    modules = argv
    started = time.perf_counter()
    # private copies of the pipes; 0 and 1 become /dev/null and the log, as a child's would
    requests, reports = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    launcher = Launcher(requests, reports)
    try:
        preload(modules)
        if data is not None:
            from workloads.data import preload as preload_data
            read = preload_data(*data)
            if read:
                print(f"launcher: read {read} for every source", file=sys.stderr, flush=True)
    except Exception as exc:  # noqa: BLE001 -- a program that cannot be imported: said, and the run stops
        traceback.print_exc()
        launcher.report(error=f"cannot import {' '.join(modules)}: {type(exc).__name__}: {exc}")
        return 1
    print(f"launcher: {' '.join(modules)} imported in {time.perf_counter() - started:.2f} s", file=sys.stderr,
          flush=True)
    launcher.report(ready=True)
    launcher.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
