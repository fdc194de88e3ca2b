"""The live counters of an arm, the one model every display of its progress shows
(testbed/progress.py chooses the display: testbed/liveview.py on a terminal, lines
otherwise), and the feeds that update it from trace events, whoever reads them:

- :class:`TraceFeed` (the local and in-process backends): the arm folder's trace files
  as they grow: ``source-N.jsonl``, ``server.jsonl``, ``testbed.jsonl`` (the sources
  the testbed saw die: ``lost``).
- ``testbed.k8s.stream.StreamFeed`` (``--backend k8s``): the pod logs the backend streams
  into ``<arm>/_stream/<pod>.log``, each pod's trace found by collection's one rule
  (``testbed.k8s.collect.trace_of``), a failed source pod reported lost with the cause
  collection gives it.

:class:`ArmView` holds per source the batches done (of ``batches x epochs``),
samples/s, MB sent and received, the latest loss and test accuracy and its state (a
lost source marked, with its cause); for the server its state, requests and busy
fraction. The figures follow the summary's declarations (analysis/figures.py), so the
view's last frame agrees with the table printed after the arm:

- samples/s of a source: its measured (non-warm-up) batches' samples / their
  ``duration_s`` (``samples_per_s_per_source``); the arm's: their mean;
- MB sent / received: the stream bytes of its training steps (``batch`` events), 1 MB =
  10^6 bytes (``bytes_sent_total``, ``bytes_received_total`` per source);
- the server's busy fraction: the ``duration_s`` of its ``request`` events / its
  training window so far, from the start of the first training step it answered (op
  ``grad``: its ``t - duration_s``) to the end of the latest one (``server_busy_fraction``):
  the share of the wall time it spent on requests (decoding, the tail's forward and
  backward, encoding) rather than waiting for them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Callable, Iterator

from workloads import events

from .traces import Tail

MB = 1e6


@dataclass
class SourceView:
    """One source's counters, from its trace events."""
    index: int
    batches: int = 0              # training steps done (warm-up included)
    samples: int = 0
    measured_samples: int = 0     # the non-warm-up steps' samples
    measured_s: float = 0.0       # and their duration_s
    bytes_sent: int = 0           # the training steps' stream bytes
    bytes_received: int = 0
    epoch: int | None = None      # the epoch of the latest step (from 0)
    loss: float | None = None
    accuracy: float | None = None  # the latest evaluation's
    cpu_share: float | None = None
    state: str = "waiting"        # waiting, starting, connected, pre-training, training, evaluating, bye,
    #                               done, error, server gone, interrupted, lost
    cause: str | None = None      # why it ended badly (lost: the testbed's words)

    @property
    def samples_per_s(self) -> float | None:
        return self.measured_samples / self.measured_s if self.measured_s > 0 else None

    @property
    def mb_sent(self) -> float:
        return self.bytes_sent / MB

    @property
    def mb_received(self) -> float:
        return self.bytes_received / MB

    @property
    def failed(self) -> bool:
        return self.state in FAILED

    @property
    def finished(self) -> bool:
        return self.state in FINISHED


FAILED = ("lost", "error", "server gone", "interrupted")
FINISHED = ("done",) + FAILED


@dataclass
class ServerView:
    """The server's counters, from its trace events."""
    state: str = "starting"        # starting, listening, serving, done, error, interrupted
    hellos: int = 0
    byes: int = 0
    errors: int = 0                # requests refused
    requests: int = 0
    began: float | None = None     # the start of the first training step it answered
    ended: float | None = None     # the end of the latest one
    busy_s: float = 0.0            # every request's duration_s from ``began`` on
    busy_at_end: float = 0.0       # busy_s at ``ended``

    @property
    def busy(self) -> float | None:
        """The busy fraction of the training window so far (the module's docstring)."""
        if self.began is None or self.ended is None or self.ended <= self.began:
            return None
        return self.busy_at_end / (self.ended - self.began)

    def request(self, event: dict) -> None:
        self.requests += 1
        t, duration = _num(event.get("t")), _num(event.get("duration_s")) or 0.0
        if t is None:
            return
        if event.get("op") == "grad" and self.began is None:
            self.began = t - duration
        if self.began is not None and t > self.began:
            self.busy_s += duration
            if event.get("op") == "grad":
                self.ended, self.busy_at_end = t, self.busy_s


@dataclass
class Note:
    """A line an event makes: ``alert`` ones (a source lost, failed) show on every display."""
    text: str
    alert: bool = False


class ArmView:
    """The live counters of one arm: ``apply`` each trace event; the notes it returns
    are the lines the lines display prints."""

    def __init__(self, module: str, sources: int, batches: int, epochs: int):
        self.module, self.batches, self.epochs = module, batches, epochs
        self.total = batches * epochs  # training steps per source
        self.sources = [SourceView(i) for i in range(sources)]
        self.server = ServerView()

    def source(self, index) -> SourceView | None:
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(self.sources):
            return self.sources[index]
        return None

    def apply(self, role: str, index: int | None, event: dict) -> list[Note]:
        kind = event.get("event")
        if role == events.ROLE_SERVER:
            self._server(kind, event)
            return []
        if role == events.ROLE_TESTBED:
            s = self.source(event.get("source") if index is None else index)
            if kind == events.LOST and s is not None:
                s.state, s.cause = "lost", event.get("cause") or "cause unknown"
                return [Note(f"  [{self.module}] source {s.index} lost: {s.cause}", alert=True)]
            return []
        s = self.source(index)
        if s is None or s.state == "lost":  # a lost source's trace may still flush its last lines
            return []
        if kind == events.BATCH:  # after an epoch's last batch, its evaluation
            last = isinstance(event.get("batch"), int) and event["batch"] + 1 >= self.batches
            s.state = "evaluating" if last else "training"
            s.batches += 1
            samples = int(event.get("samples") or 0)
            s.samples += samples
            if not event.get("warmup"):
                s.measured_samples += samples
                s.measured_s += _num(event.get("duration_s")) or 0.0
            s.bytes_sent += int(event.get("bytes_sent") or 0)
            s.bytes_received += int(event.get("bytes_received") or 0)
            s.epoch, s.loss = event.get("epoch"), _num(event.get("loss"))
        elif kind == events.EVAL:
            s.accuracy = _num(event.get("accuracy"))
            epoch = event.get("epoch")
            return [Note(f"  [{self.module}] source {s.index} epoch {_plus1(epoch)}/{self.epochs}: "
                         f"budget {event.get('budget')}, loss {_fmt(s.loss)}, test accuracy {_pct(s.accuracy)}")]
        elif kind in (events.CALIBRATE, events.INFER):
            s.state = "evaluating"
        elif kind in (events.START, events.DATA):
            s.state = "starting"
        elif kind == events.CONNECTED:
            s.state = "connected"
        elif kind == events.PRETRAIN:
            s.state = "pre-training"
        elif kind == events.BYE:
            s.state = "bye"
        elif kind == events.END:
            s.cpu_share = _num(event.get("cpu_share"))
            status = event.get("status")
            if status == "ok":
                s.state = "done"
                return [Note(f"  [{self.module}] source {s.index} done, CPU share {event.get('cpu_share')}")]
            s.state = {"server-gone": "server gone"}.get(status, status if status in FAILED else "error")
            s.cause = event.get("error") or status
            return [Note(f"  [{self.module}] source {s.index} ended: {s.state}: {s.cause}", alert=True)]
        return []

    def _server(self, kind, event: dict) -> None:
        server = self.server
        if kind == events.REQUEST:
            server.request(event)
        elif kind == events.LISTENING:
            server.state = "listening"
        elif kind == events.HELLO:
            server.hellos += 1
            server.state = "serving"
        elif kind == events.BYE:
            server.byes += 1
        elif kind == events.ERROR:
            server.errors += 1
        elif kind == events.END:
            server.state = "done" if event.get("status") == "ok" else (event.get("status") or "error")

    # -- the arm's totals ---------------------------------------------------------------------
    @property
    def mb_sent(self) -> float:
        return sum(s.bytes_sent for s in self.sources) / MB

    @property
    def mb_received(self) -> float:
        return sum(s.bytes_received for s in self.sources) / MB

    @property
    def batches_done(self) -> int:
        return sum(s.batches for s in self.sources)

    @property
    def samples_per_s(self) -> float | None:
        """The mean of the sources' samples/s (those measured so far)."""
        rates = [s.samples_per_s for s in self.sources if s.samples_per_s is not None]
        return sum(rates) / len(rates) if rates else None

    def counts(self) -> dict[str, int]:
        """Sources per state, in the order states come."""
        order = ["waiting", "starting", "connected", "pre-training", "training", "evaluating", "bye", "done", *FAILED]
        found = {}
        for s in self.sources:
            found[s.state] = found.get(s.state, 0) + 1
        return {state: found[state] for state in sorted(found, key=lambda x: order.index(x) if x in order else 99)}

    def status_line(self) -> str:
        """The lines display's periodic line: today's facts, then the arm's bytes and the server."""
        busy = self.server.busy
        lost = [s.index for s in self.sources if s.failed]
        return (f"  [{self.module}] batches done per source: " + " ".join(str(s.batches) for s in self.sources)
                + f" (of {self.total}); sent {self.mb_sent:.3f} MB, received {self.mb_received:.3f} MB"
                + (f"; server busy {busy:.0%}" if busy is not None else "")
                + (f"; lost or failed: {' '.join(map(str, lost))}" if lost else ""))

    def batches_summary(self, sources: list[SourceView]) -> str:
        done = sorted(s.batches for s in sources)
        return f"min {done[0]}, median {median(done):g}, max {done[-1]} of {self.total}" if done else ""


# -- the feeds -------------------------------------------------------------------------------------
Feed = Callable[[], Iterator[tuple[str, "int | None", dict]]]


class TraceFeed:
    """The arm folder's trace files, each event once: (role, source index, event)."""

    def __init__(self, directory: Path, sources: int):
        self.sources = [Tail(directory / f"source-{i}.jsonl") for i in range(sources)]
        self.server = Tail(directory / "server.jsonl")
        self.testbed = Tail(directory / "testbed.jsonl")

    def __call__(self) -> Iterator[tuple[str, int | None, dict]]:
        for event in self.server.new_events():
            yield events.ROLE_SERVER, None, event
        for i, tail in enumerate(self.sources):
            for event in tail.new_events():
                yield events.ROLE_SOURCE, i, event
        for event in self.testbed.new_events():
            yield events.ROLE_TESTBED, event.get("source"), event


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _plus1(epoch) -> str:
    return str(epoch + 1) if isinstance(epoch, int) else "?"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
