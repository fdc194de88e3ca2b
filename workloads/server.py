"""The offload server: ``python -m workloads.server``.

One server-side model (decompression + blocks n+1..L) shared by every source, as in
paper 002's testbed. One ROUTER socket serves all sources: requests are handled in
arrival order and the server never waits on any particular source, so a slow or
silent source does not stall the others. A malformed or out-of-order message gets an
error reply and a log line; the server keeps serving.

Only the run's own sources take part: source ids are 0..--sources-1, each taken by one
connection's ``hello`` and never again; ``bye`` counts only from the connection that said
``hello``; every reply echoes its request's ``seq``; no frame larger than the run's
largest legitimate request (``--batch-size``, the module's shipments) is taken in
(ZMQ_MAXMSGSIZE); with ``--keys`` only holders of the run's source key get through the
CURVE handshake, and the loop never sees anyone else.

Two threads: a :class:`Receiver` owns the ROUTER socket; it takes each request off the
socket as soon as it has fully arrived (also while the model computes: torch releases the
GIL), stamps that moment, and queues it; the main thread answers the requests one by one
and hands each reply back to the receiver, which sends it (over an inproc socket pair: a
ZeroMQ socket is used by one thread only). So every reply can say how long its request
queued. Its ``times`` field carries (protocol.SERVER_TIMES; as numbers, see workloads/protocol.py)
queue_s, server_decode_s, server_compute_s and server_encode_s, as the ``request`` trace
event has them (with server_s, their sum; the event's fields and units are declared in
workloads/events.py), then ``arrived_at`` (time.time() as the request was taken off the
socket) and ``replied_at`` (time.time() as server_s ended), from which the source derives
its one-way times.

Requests, after ``hello``: ``train`` (a training step: the gradient back), ``infer`` (split
inference: the predictions back), ``calibrate`` (with --bn-batches, before an evaluation:
training batches through the current weights, for that source's BatchNorm statistics,
workloads/batchnorm.py), ``bye``; ``ping`` at any time.
"""
from __future__ import annotations

import os
import queue
import resource
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import zmq
from torch import nn

from . import batchnorm, events, protocol, security, settings
from .compression import create_server, get
from .compression.base import state_bytes
from .compression.shipping import load_flat_state
from .data import INPUT_SHAPE, class_count
from .errors import Exit, WorkloadError
from .models import build_split_model
from .protocol import Message, ProtocolError
from .trace import TraceWriter

POLL_MS = 200
# the largest request is sized from the run's settings, then given this much room
MESSAGE_MARGIN = 1.25
# ZMTP heartbeats on every connection (the sources rely on them to notice a lost server);
# the timeout and TTL are --heartbeat-timeout (5 s unless a slow link needs longer)
HEARTBEAT_IVL_MS = 1000
MAX_REASON = 300  # characters of an error reason (it may quote what a peer sent)
# requests taken in and not yet answered; beyond, they wait in ZeroMQ's queue unstamped
INBOX = 256


@dataclass
class Peer:
    source: int
    seq: int = 0
    done: bool = False


@dataclass
class Request:
    identity: bytes
    body: list
    arrived: float     # time.perf_counter() as the receiver took it off the socket
    arrived_at: float  # time.time() then


STOP_JOIN_S = 10.0  # how long the receiver may take to send the replies handed over before a stop


class Receiver:
    """Owns the ROUTER socket in a thread of its own: queues each request in ``inbox`` with
    the moment it was taken off the socket, and sends the replies given to :meth:`reply`."""

    def __init__(self, sock: zmq.Socket):
        self.inbox: queue.Queue[Request] = queue.Queue(maxsize=INBOX)
        address = f"inproc://replies-{id(self)}"
        self._replies = sock.context.socket(zmq.PAIR)  # the receiver's end
        self._replies.bind(address)
        self._pipe = sock.context.socket(zmq.PAIR)     # the caller's end
        self._pipe.connect(address)
        self._thread = threading.Thread(target=self._run, args=(sock,), name="receiver", daemon=True)
        self._thread.start()

    def reply(self, identity: bytes, frames: list) -> None:
        if not self.alive():  # a send into the pair with nobody on the other end would block for ever
            raise RuntimeError("the receiving thread ended")
        self._pipe.send_multipart([identity] + frames, copy=False)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Send the replies handed over so far, then end the thread (a single frame says so)."""
        try:
            self._pipe.send(b"", zmq.NOBLOCK)
        except zmq.Again:  # the thread has ended already: nobody on the other end
            pass
        self._thread.join(timeout=STOP_JOIN_S)
        self._pipe.close(linger=0)

    def _run(self, sock: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(self._replies, zmq.POLLIN)
        try:
            while True:
                poller.register(sock, 0 if self.inbox.full() else zmq.POLLIN)  # 0: not polled
                for ready, _ in poller.poll():
                    if ready is sock:
                        frames = sock.recv_multipart(copy=False)
                        arrived, arrived_at = time.perf_counter(), time.time()
                        self.inbox.put(Request(frames[0].bytes, frames[1:], arrived, arrived_at))
                        continue
                    frames = self._replies.recv_multipart(copy=False)
                    if len(frames) == 1:
                        return
                    sock.send_multipart(frames, copy=False)
        finally:
            self._replies.close(linger=0)


class Laps:
    """The consecutive parts of answering one request: ``lap(part)`` adds the time since
    the previous lap (or the start) to ``part``."""

    def __init__(self):
        self.began = self.last = time.perf_counter()
        self.parts = {"decode": 0.0, "compute": 0.0, "encode": 0.0}

    def lap(self, part: str) -> None:
        now = time.perf_counter()
        self.parts[part] += now - self.last
        self.last = now


class Server:
    def __init__(self, args, trace: TraceWriter):
        self.args, self.trace = args, trace
        self.classes = class_count(args.dataset, args.classes)
        torch.manual_seed(args.seed)
        if args.threads:
            torch.set_num_threads(args.threads)
        self.device = pick_device(args.device)
        split = build_split_model(args.model, args.split, self.classes, INPUT_SHAPE)
        self.cut_shape = split.cut_shape
        self.decompress = create_server(args.module, split.cut_shape, settings.compression_config(args, "server")).to(self.device)
        self.decompress.max_batch = args.batch_size
        self.curve = bool(getattr(args, "keys", ""))
        self.max_request = largest_request(self.decompress, args.batch_size, split.tail)
        self.tail_from = None  # the source whose weights the tail started from (a teacher's), if any
        self.steps = 0         # training steps taken
        self.lr_scale = get(args.module).server_lr_scale  # on the module's own parameters, never the tail's
        self.tail = split.tail.to(self.device)
        self.optimizer = torch.optim.SGD(
            [{"params": list(self.tail.parameters()), "lr_scale": 1.0},
             {"params": list(self.decompress.parameters()), "lr_scale": self.lr_scale}],
            lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
        self.loss = nn.CrossEntropyLoss()
        self.peers: dict[bytes, Peer] = {}   # by connection (the ROUTER's identity)
        self.taken: dict[int, bytes] = {}    # source id -> the connection that said hello with it
        self.served: Counter = Counter()
        # source id -> the statistics of its next evaluation, and the calibrate batches in them
        self.calibrated: dict[int, tuple[batchnorm.Statistics, int]] = {}
        self.stopping = False

    # -- the loop ----------------------------------------------------------------
    def serve(self, sock: zmq.Socket) -> None:
        """Answer requests until stopped (SIGTERM) or ``--expect-sources`` said bye; ``sock``
        belongs to the receiver's thread meanwhile."""
        receiver = Receiver(sock)
        try:
            while not self.stopping:
                try:
                    request = receiver.inbox.get(timeout=POLL_MS / 1000)
                except queue.Empty:
                    if not receiver.alive():
                        raise RuntimeError("the receiving thread ended") from None
                    continue
                out, traced = self.respond(request)
                receiver.reply(request.identity, out)
                self.trace.event(events.REQUEST, **traced)  # after the reply is on its way
                expected = self.args.expect_sources
                if expected and sum(p.done for p in self.peers.values()) >= expected:
                    break
        finally:
            receiver.stop()

    def respond(self, request: Request) -> tuple[list, dict]:
        """The reply frames to one request (never raises: a bad request gets an error reply),
        and the fields of its ``request`` trace event."""
        laps = Laps()
        identity = request.identity
        peer = self.peers.get(identity)
        op = seq = None
        try:
            message = protocol.decode(request.body)
            laps.lap("decode")
            op, seq = message.op, message.fields.get("seq")
            reply = self.handle(identity, message, laps)
        except Exception as exc:  # noqa: BLE001 - whatever a message does, the server keeps serving
            reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            reason = reason if len(reason) <= MAX_REASON else reason[:MAX_REASON] + "..."
            reply = Message("error", {"reason": reason})
            print(f"server: rejected {op or 'a message'} from {self._who(identity)}: {reason}", file=sys.stderr)
            self.trace.event(events.ERROR, peer=self._who(identity), op=op, reason=reason)
        laps.lap("compute")  # what the handling did not count elsewhere
        times = {"queue_s": laps.began - request.arrived, "server_decode_s": laps.parts["decode"],
                 "server_compute_s": laps.parts["compute"], "server_encode_s": laps.parts["encode"]}
        reply.fields["times"] = protocol.times_field({**times, "arrived_at": request.arrived_at, "replied_at": time.time()})
        times["server_s"] = laps.last - laps.began  # the sum of the three parts
        if isinstance(seq, int) and not isinstance(seq, bool) and abs(seq) < 2 ** 53:
            reply.fields["seq"] = seq  # the source checks that the reply is to this request
        try:
            out = protocol.encode(reply)
        except ProtocolError as exc:  # a reply the protocol refuses (it never should): say so instead
            out = protocol.encode(Message("error", {"reason": f"the reply could not be sent: {exc}"[:MAX_REASON]}))
        peer = self.peers.get(identity, peer)
        self.served[peer.source if peer else -1] += 1
        traced = {"peer": peer.source if peer else None, "op": reply.op,
                  "bytes_in": protocol.stream_bytes(request.body, self.curve),
                  "bytes_out": protocol.stream_bytes(out, self.curve),
                  "duration_s": round(time.perf_counter() - laps.began, 6),
                  **{name: round(v, 6) for name, v in times.items()}}
        return out, traced

    def _who(self, identity: bytes) -> str:
        peer = self.peers.get(identity)
        return f"source {peer.source}" if peer else f"unknown peer {identity.hex()}"

    # -- messages ----------------------------------------------------------------
    def handle(self, identity: bytes, message: Message, laps: Laps) -> Message:
        if message.op == "hello":
            return self._hello(identity, message.fields)
        if message.op == "ping":  # health check: it answers; no settings (they would let anyone say hello)
            return Message("pong", {"device": str(self.device)})
        peer = self.peers.get(identity)
        if peer is None:
            raise ProtocolError(f"{message.op} before hello")
        if message.op == "bye":
            said = message.fields.get("source", peer.source)
            if said != peer.source:
                raise ProtocolError(f"bye for source {said!r} from the connection of source {peer.source}")
            peer.done = True
            self.calibrated.pop(peer.source, None)
            self.trace.event(events.BYE, peer=peer.source)
            return Message("bye", {})
        seq = message.fields.get("seq")
        if seq != peer.seq + 1:
            raise ProtocolError(f"out of order: expected seq {peer.seq + 1}, got {seq!r}")
        if message.op == "train":
            reply = self._train(message, peer.source, laps)
        elif message.op == "calibrate":
            reply = self._calibrate(message, peer.source, laps)
        elif message.op == "infer":
            reply = self._infer(message, peer.source, laps)
        else:
            raise ProtocolError(f"a server does not accept {message.op!r}")
        peer.seq = seq  # only a request that was served advances the sequence
        return reply

    def _hello(self, identity: bytes, fields: dict) -> Message:
        mine = {"module": self.args.module, "model": self.args.model, "split": self.args.split,
                "classes": self.classes, "cut": list(self.cut_shape)}
        wrong = [f"{k}={fields.get(k)!r} (server: {v!r})" for k, v in mine.items() if fields.get(k) != v]
        if wrong:
            raise ProtocolError("settings differ from the server's: " + ", ".join(wrong))
        source = fields.get("source")
        sources = self.args.sources
        if not isinstance(source, int) or isinstance(source, bool) or not 0 <= source < sources:
            raise ProtocolError(f"hello needs a source id in 0..{sources - 1} (--sources {sources}), got {source!r}")
        if identity in self.peers:
            raise ProtocolError(f"this connection already said hello as source {self.peers[identity].source}")
        if source in self.taken:
            raise ProtocolError(f"source {source} has already said hello")
        self.peers[identity] = Peer(source)
        self.taken[source] = identity
        self.trace.event(events.HELLO, peer=source)
        return Message("welcome", {"device": str(self.device), **mine})

    def _labels(self, arrays, count: int) -> torch.Tensor:
        labels = arrays.get("labels")
        if labels is None or labels.dtype.kind not in "ui" or labels.shape != (count,):
            raise ProtocolError(f"labels must be {count} integers, got {None if labels is None else (labels.dtype, labels.shape)}")
        if count and (int(labels.min()) < 0 or int(labels.max()) >= self.classes):
            raise ProtocolError(f"labels must lie in 0..{self.classes - 1}")
        return torch.from_numpy(labels.astype(np.int64)).to(self.device)

    def _train(self, message: Message, source: int, laps: Laps) -> Message:
        lr_scale = message.fields.get("lr_scale", 1.0)
        if not isinstance(lr_scale, (int, float)) or not 0 < lr_scale <= 1000:
            raise ProtocolError(f"lr_scale must be a number in (0, 1000], got {lr_scale!r}")
        self.calibrated.pop(source, None)  # the weights move on: its next evaluation calibrates again
        self.decompress.train()
        self.tail.train()
        sent, restored = self.decompress.decode(message.arrays, self.device, source)
        labels = self._labels(message.arrays, restored.shape[0])
        self._start_tail_from(self.decompress.take_tail_state(), source)
        laps.lap("decode")
        self._train_new_parameters()
        for group in self.optimizer.param_groups:  # the source's boost on every group; the module's scale on its own
            group["lr"] = self.args.lr * lr_scale * group["lr_scale"]
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.tail(restored)
        loss = self.loss(logits, labels)  # what every arm reports
        distill = self.decompress.distill_loss(logits)
        (loss if distill is None else loss + distill).backward()
        self.optimizer.step()
        self.steps += 1
        correct = int((logits.argmax(1) == labels).sum())  # waits for the device
        laps.lap("compute")
        arrays = self.decompress.encode_grad(sent) if message.fields.get("want_grad", True) else {}
        laps.lap("encode")
        fields = {"loss": round(loss.item(), 6), "correct": correct}
        if distill is not None:
            fields["distill_loss"] = round(distill.item(), 6)
        return Message("grad", fields, arrays)

    def _start_tail_from(self, flat, source: int) -> None:
        """The tail takes the weights a source sent for it (paper 004: the student's layers
        start from the teacher's), once, and only before it has trained: later ones are
        ignored (one tail serves every source)."""
        if flat is None or self.tail_from is not None or self.steps:
            return
        try:
            load_flat_state(self.tail, flat, "weights for the server's layers")
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        self.tail_from = source
        self.trace.event(events.TAIL_FROM, source=source, values=int(flat.size))

    def _train_new_parameters(self) -> None:
        """Modules may add layers when a source first sends them (a decoder per source):
        the optimizer takes them on from then."""
        known = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        new = [p for p in self.decompress.parameters() if p.requires_grad and id(p) not in known]
        if new:
            self.optimizer.add_param_group({"params": new, "lr_scale": self.lr_scale})

    def _inference(self, message: Message, source: int, laps: Laps, stats: batchnorm.Statistics,
                   accumulate: bool = False) -> torch.Tensor:
        """The inference path (eval mode) of a request's arrays to the logits, with the
        BatchNorm statistics ``stats`` (empty: training's), accumulating into them with
        ``accumulate``."""
        self.decompress.eval()
        self.tail.eval()
        with batchnorm.using(stats, self.decompress, self.tail, accumulate=accumulate):
            _, restored = self.decompress.decode(message.arrays, self.device, source)
            laps.lap("decode")
            logits = self.tail(restored)
            laps.lap("compute")
        return logits

    @torch.no_grad()
    def _calibrate(self, message: Message, source: int, laps: Laps) -> Message:
        """One of the source's --bn-batches training batches through the current weights,
        adding to the BatchNorm statistics of its next evaluation (workloads/batchnorm.py);
        batch 0 starts them anew, a training step of the source drops them."""
        batch = message.fields.get("batch")
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 0:
            raise ProtocolError(f"calibrate needs a batch number, got {batch!r}")
        stats, done = self.calibrated.get(source, (None, 0))  # no set: 0 comes first
        if batch == 0:
            stats = batchnorm.fresh(self.decompress, self.tail)
        elif batch != done:
            raise ProtocolError(f"calibrate batch {batch}, expected {done}")
        self._inference(message, source, laps, stats, accumulate=True)
        self.calibrated[source] = (stats, batch + 1)  # only a batch that went through counts
        return Message("calibrated", {})

    @torch.no_grad()
    def _infer(self, message: Message, source: int, laps: Laps) -> Message:
        logits = self._inference(message, source, laps, self.calibrated.get(source, ({}, 0))[0])
        pred = logits.argmax(1).to("cpu").numpy().astype(np.uint8 if self.classes <= 256 else np.int32)
        laps.lap("encode")
        return Message("pred", {}, {"pred": pred})


def largest_request(part, batch_size: int, tail=None) -> int:
    """The largest request frame of a run (the module's largest arrays at its batch size,
    the labels as 64-bit integers at most, the tail's weights where the module ships them
    once, the longest header), with a margin."""
    shipped = state_bytes(tail) if part.ships_tail and tail is not None else 0
    return protocol.message_bytes(int(MESSAGE_MARGIN * (part.largest_request(batch_size) + 8 * batch_size + shipped)))


def listen(sock: zmq.Socket, args, max_request: int):
    """Socket options, CURVE when ``--keys`` is given, and the bind. Returns the ZAP
    authenticator (or None), to be stopped when the server ends."""
    curve = bool(args.keys)
    sock.setsockopt(zmq.MAXMSGSIZE, protocol.frame_bytes(max_request, curve))
    sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(args.heartbeat_timeout * 1000))
    sock.setsockopt(zmq.HEARTBEAT_TTL, int(args.heartbeat_timeout * 1000))
    auth = security.serve_securely(sock, security.load(args.keys, security.SERVER)) if curve else None
    try:
        sock.bind(f"tcp://{args.bind}:{args.port}")
    except zmq.ZMQError as exc:
        if auth is not None:
            auth.stop()
        raise ValueError(f"cannot listen on port {args.port}: {zmq.strerror(exc.errno)}") from None
    return auth


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but CUDA is not available")
    return torch.device(name)


def trace_listening(trace: TraceWriter, server: Server, args, *, port, bind: str) -> None:
    """The ``listening`` event: what the server serves, and how (the program's, and the
    in-process arm's)."""
    trace.event(events.LISTENING, port=port, bind=bind, curve=server.curve, max_request=server.max_request,
                device=str(server.device), module=args.module, model=args.model, split=args.split,
                cut=list(server.cut_shape), torch=torch.__version__, threads=torch.get_num_threads(),
                lr_scale=server.lr_scale)


def main(argv=None) -> int:
    args = settings.parse("server", "splittest offload server", argv)
    trace = TraceWriter(args.trace or None, run=args.run_id, role="server", copy_dir=args.trace_dir)
    trace.event(events.START, pid=os.getpid(), module=args.module, settings=settings.effective(args, "server"))
    context = zmq.Context.instance()
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    server = auth = None

    def stop(signum, _frame):
        if server is None:  # still starting: nothing to finish
            raise KeyboardInterrupt
        server.stopping = True  # finish the request in hand, then leave the loop

    signal.signal(signal.SIGTERM, stop)
    try:
        server = Server(args, trace)
        auth = listen(sock, args, server.max_request)
        trace_listening(trace, server, args, port=args.port, bind=args.bind)
        server.serve(sock)
        trace.event(events.END, status="ok", served={str(k): v for k, v in sorted(server.served.items())},
                    peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
        return Exit.OK
    except (WorkloadError, ValueError) as exc:
        print(f"server: {exc}", file=sys.stderr)
        trace.event(events.END, status="error", error=str(exc))
        return Exit.ERROR
    except KeyboardInterrupt:
        trace.event(events.END, status="interrupted")
        return Exit.INTERRUPTED
    finally:
        sock.close(linger=0)
        if auth is not None:
            auth.stop()
        trace.close()


if __name__ == "__main__":
    sys.exit(main())
