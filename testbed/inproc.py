"""The in-process backend (``testbed run --backend inproc``): each arm is one process,
``python -m workloads.inprocess``, that holds the server and every source and hands each
request's encoded frame straight to the server's handler: the same code, encode and
decode, bytes (those of a plaintext fleet) and training as the local backend, without
sockets, caps or emulated links. The sources take turns, one request each, so a run is
deterministic and an accuracy sweep runs many times faster. Its timings are those of one
process doing everything in turn: compare bytes, losses and accuracy, not throughput.

With ``--spawn fork`` (the default on Linux) each arm's process is forked from one warm
parent per run (``testbed.launcher``, its log ``<run>/logs/launcher.log``), which has
imported the program and what its first optimizer step imports once: the arms after the
first start at once instead of paying those seconds of CPU again. ``close()`` stops it
when the run ends."""
from __future__ import annotations

import time
from pathlib import Path

from .backend import ArmResult, Backend
from .cpucap import Cap
from .errors import BackendError
from .processes import POLL_S, Fleet, describe_exit, server_threads, torch_threads
from .progress import open_progress
from .signals import signals_deferred
from .spec import RunSpec, check_data_dir, refuse_given
from .warmparent import WarmParent, spawn_method

NO_CAP = Cap.method  # the cap method that caps nothing (the base Cap's)
NAME = "arm"  # the arm's one process, in the fleet and as logs/arm.log
PROGRAM = "workloads.inprocess"
LAUNCHER = "launcher"  # the run's warm parent of its arms, as <run>/logs/launcher.log
# what it has no use for: one process, no sockets, no links
NOT_INPROC = ("bandwidth", "link", "link_trace", "medium", "delay", "loss", "sweep_bandwidth", "drop", "data_pvc")


class InprocBackend(Backend):
    """Each arm as one process on this machine, its sources stepped in turn."""
    name = "inproc"

    def __init__(self, spec: RunSpec, say=print):
        self.spec, self.say = spec, say
        self._launchers: Fleet | None = None  # the run's warm parent (--spawn fork), kept across its arms

    def _warm_parent(self, run_dir: Path) -> WarmParent | None:
        if spawn_method(self.spec) != "fork":
            return None
        if self._launchers is None:
            self._launchers = Fleet(run_dir)
            self._launchers.warm_parent(LAUNCHER, [PROGRAM])
        return self._launchers.parents[LAUNCHER]

    def close(self) -> None:
        """The run is over: stop its warm parent."""
        if self._launchers is not None:
            launchers, self._launchers = self._launchers, None
            with signals_deferred():
                launchers.stop()

    def run_arm(self, module: str, directory: Path, run_id: str) -> ArmResult:
        from workloads.inprocess import to_argv

        s = self.spec
        directory.mkdir(parents=True, exist_ok=True)
        self.say(f"arm {module}: the server and {s.sources} sources in one process")
        progress = open_progress(directory, module, s, self.say)
        # the torch threads the local backend gives each program, so that the arithmetic is the same
        options = {**s.workload_options(module), "run_id": f"{run_id}/{module}", "trace_dir": str(directory),
                   "threads": server_threads(s)[0]}
        argv = to_argv(options) + ["--source-threads", ",".join(str(torch_threads(c)) for c in s.cpus)]
        fleet = Fleet(directory)
        try:
            proc = fleet.start(NAME, PROGRAM, argv, trace=directory / "server.jsonl",
                               parent=self._warm_parent(directory.parent))
            while proc.poll() is None:
                if progress is not None:
                    progress.update()
                time.sleep(POLL_S)
            if progress is not None:
                progress.update()
            if proc.returncode != 0:
                raise BackendError(describe_exit("the in-process arm", fleet, NAME))
        finally:
            with signals_deferred():  # a second Ctrl-C or a SIGTERM waits for the cleanup
                fleet.stop()
            if progress is not None:
                progress.close()
        return ArmResult(module, directory, NO_CAP, "no caps: one process, its sources stepped in turn")


def refuses(spec: RunSpec) -> None:
    refuse_given(spec, NOT_INPROC, "it runs each arm in one process, without sockets or links (use --backend local)")
    check_data_dir(spec)


def check_spec(spec: RunSpec, links) -> None:
    """Nothing more: one process on this machine, no host facts to check."""
