"""One arm in one process: ``python -m workloads.inprocess``.

The offload server and ``--sources`` data sources of an arm, without sockets: each
source's requests go through a :class:`~workloads.transport.InProcessConnection`, which
encodes them with the protocol and hands the frame to the server's own handler
(:meth:`Server.respond`), then decodes the reply as the ZeroMQ connection does. Same
code, same encode and decode, same bytes (those of a plaintext, ``--insecure``, fleet),
same training; only the network and the processes are gone. It takes every option of
both programs (workloads/settings.py) and writes the same traces into ``--trace-dir``
(the arm folder): ``server.jsonl`` and ``source-N.jsonl``.

The sources are stepped in turn, deterministically: each runs in a thread of its own,
and only the one holding the turn runs. The turn goes round by source id, one request
each: a source that is about to send (its request encoded) hands the turn to the next
source still running and waits for it to come back; then the server answers it at once,
in the source's thread, and the source goes on until its next request. A source that
ends leaves the round.

Each party keeps its own torch random state, as in a process of its own: the server's is
put in place while it answers and put aside after, a source's is put aside when it hands
the turn on and back when the turn returns. So one source with one seed trains exactly as
a source and a server in two processes do (within floating-point noise: thread counts
may differ).

What does not carry over: the times of a step include the other sources' turns (they
share one CPU in turn, not each their own), the server's queue_s is nil, and CPU figures
(cpu_s, the end event's cpu_seconds) are the whole process's. No CURVE (``--keys`` is
ignored), no link, no ``--drop``.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
from pathlib import Path

import torch

from . import events, settings
from .errors import Exit
from .server import Request, Server, trace_listening
from .source import live
from .trace import TraceWriter, process_created
from .transport import InProcessConnection

ADDRESS = "inproc"
PROG = "python -m workloads.inprocess"


def declared() -> list[settings.Option]:
    """Every option of either program, once."""
    found: dict[str, settings.Option] = {}
    for role in settings.PROGRAMS:
        for option in settings.options(role):
            found.setdefault(option.dest, option)
    return list(found.values())


def parse(argv=None) -> argparse.Namespace:
    parser = settings.OneLineParser(prog=PROG, description="one arm (server and sources) in one process")
    for option in declared():
        settings.add_argument(parser, option, option.default, f"{option.help} (default {option.default!r})")
    parser.add_argument("--source-threads", type=_thread_list, default=(), metavar="N[,N...]",
                        help="each source's torch threads, a comma list cycled over the sources (default: "
                             "--threads, which is then the server's alone)")
    return parser.parse_args(argv)


def _thread_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, N[,N...], got {text!r}")
    return values


def to_argv(values: dict) -> list[str]:
    """The command line of this program for every option of either program ``values`` holds."""
    argv = []
    for option in declared():
        if option.dest in values and values[option.dest] is not None:
            argv += [option.flag, option.text(values[option.dest])]
    return argv


def role_args(args: argparse.Namespace, role: str, **overrides) -> argparse.Namespace:
    """What ``role``'s own parser would have given: the options it reads, from ``args``."""
    values = {o.dest: getattr(args, o.dest) for o in settings.options(role)}
    values.update(keys="", **overrides)
    return argparse.Namespace(**values)


class Turns:
    """Round-robin by source id, one request each; a party's torch random state is set
    aside while it waits. Each source waits on an event of its own, so handing the turn
    on wakes one thread, not all of them (a thousand sources in one process)."""

    def __init__(self, ids, threads: dict[int, int] | None = None):
        self.order = list(ids)
        self.threads = threads or {}  # source id -> its torch threads (0 or absent: as they are)
        self.current = None
        self._lock = threading.Lock()
        self._go = {i: threading.Event() for i in self.order}
        self._states: dict[int, torch.Tensor] = {}
        self._hand_to(self.order[0] if self.order else None)

    def _hand_to(self, i) -> None:
        self.current = i
        if i is not None:
            self._go[i].set()

    def wait(self, i: int) -> None:
        self._go[i].wait()
        self._go[i].clear()
        if i in self._states:
            torch.set_rng_state(self._states.pop(i))
        if self.threads.get(i):
            torch.set_num_threads(self.threads[i])  # per OS thread: set in the thread that computes

    def pass_on(self, i: int) -> None:
        """Source ``i``, which holds the turn, hands it to the next source still running."""
        self._states[i] = torch.get_rng_state()
        with self._lock:
            k = self.order.index(i)
            self._hand_to(self.order[(k + 1) % len(self.order)])

    def take_turn(self, i: int) -> None:
        """Before source ``i`` sends: the others take their turn, then it is ``i``'s again."""
        self.pass_on(i)
        self.wait(i)

    def leave(self, i: int) -> None:
        with self._lock:
            k = self.order.index(i)
            self.order.remove(i)
            if self.current == i:
                self._hand_to(self.order[k % len(self.order)] if self.order else None)


class Arm:
    """The server and the sources of one arm, in this process."""

    def __init__(self, args: argparse.Namespace, folder: Path, created: float):
        self.args, self.folder, self.created = args, folder, created
        self.trace = TraceWriter(str(folder / "server.jsonl"), run=args.run_id, role="server")
        self.server: Server | None = None
        self.server_rng: torch.Tensor | None = None
        every = args.source_threads or (args.threads,)
        self.threads = {i: every[i % len(every)] for i in range(args.sources)}  # each source's torch threads
        self.turns = Turns(range(args.sources), self.threads)
        self.ended: dict[int, tuple[str, str]] = {}  # source id -> (status, error)

    def start_server(self) -> None:
        args = role_args(self.args, "server")
        self.trace.event(events.START, pid=os.getpid(), module=args.module, transport=ADDRESS,
                         settings=settings.effective(args, "server"))
        self.server = server = Server(args, self.trace)
        self.server_rng = torch.get_rng_state()
        trace_listening(self.trace, server, args, port=None, bind=ADDRESS)

    def respond(self, identity: bytes, frames: list) -> list:
        """The server's reply frames to one request, answered in the calling source's thread
        (which holds the turn) with the server's own random state."""
        request = Request(identity, frames, time.perf_counter(), time.time())
        mine, threads = torch.get_rng_state(), torch.get_num_threads()
        torch.set_rng_state(self.server_rng)
        if self.args.threads:
            torch.set_num_threads(self.args.threads)  # the server's own, as in its process
        try:
            with torch.enable_grad():  # as in the server's own thread, whatever the source's mode
                out, traced = self.server.respond(request)
        finally:
            self.server_rng = torch.get_rng_state()
            torch.set_rng_state(mine)
            torch.set_num_threads(threads)
        self.trace.event(events.REQUEST, **traced)
        return out

    def run_source(self, i: int) -> None:
        """Source ``i`` from start to end, as ``python -m workloads.source`` runs it."""
        args = role_args(self.args, "source", source_id=i, server=ADDRESS, threads=self.threads[i])
        trace = TraceWriter(str(self.folder / f"source-{i}.jsonl"), run=args.run_id, role="source", source=i)
        self.turns.wait(i)
        status, error = Exit.BUG, "did not end"
        try:
            identity = f"source-{i}".encode()
            connection = InProcessConnection(lambda frames: self.respond(identity, frames),
                                             before_send=lambda: self.turns.take_turn(i), address=ADDRESS)
            status, error = live(args, trace, self.created, connection, transport=ADDRESS)
        finally:
            self.ended[i] = ("ok" if status == Exit.OK else "error", error)
            trace.close()
            self.turns.leave(i)

    def run(self) -> int:
        threads = [threading.Thread(target=self.run_source, args=(i,), name=f"source-{i}", daemon=True)
                   for i in range(self.args.sources)]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=0.5)  # a join with a timeout lets Ctrl-C (and SIGTERM) through
        failed = [(i, e) for i, (status, e) in sorted(self.ended.items()) if status != "ok"]
        served = {str(k): v for k, v in sorted(self.server.served.items())}
        peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        if failed:
            error = "; ".join(f"source {i}: {e or 'failed'}" for i, e in failed)
            self.trace.event(events.END, status="error", error=error, served=served, peak_rss_mb=peak)
            print(f"inprocess: {error}", file=sys.stderr)
            return Exit.ERROR
        self.trace.event(events.END, status="ok", served=served, peak_rss_mb=peak)
        return Exit.OK


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    import signal

    args = parse(argv)
    if not args.trace_dir:
        print(f"{PROG}: error: --trace-dir must name the arm folder the traces go to", file=sys.stderr)
        return Exit.ERROR
    if args.drop:
        print(f"{PROG}: error: --drop kills a source's process; in one process it would end them all",
              file=sys.stderr)
        return Exit.ERROR
    folder = Path(args.trace_dir)
    folder.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)
    arm = Arm(args, folder, process_created())
    try:
        try:
            arm.start_server()
        except ValueError as exc:
            print(f"server: {exc}", file=sys.stderr)
            arm.trace.event(events.END, status="error", error=str(exc))
            return Exit.ERROR
        return arm.run()
    except KeyboardInterrupt:
        arm.trace.event(events.END, status="interrupted")
        return Exit.INTERRUPTED
    finally:
        arm.trace.close()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # daemon threads of an interrupted arm may still be computing: do not wait for them
