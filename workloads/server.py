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
GIL), stamps that moment, and queues it; the main thread answers the requests (one by one,
or several in one pass: "Batches" below) and hands each reply back to the receiver, which
sends it (over an inproc socket pair: a ZeroMQ socket is used by one thread only). So
every reply can say how long its request queued. Its ``times`` field carries
(protocol.SERVER_TIMES; as numbers, see workloads/protocol.py) queue_s, server_decode_s,
server_compute_s and server_encode_s, as the ``request`` trace event has them (with
server_s, their sum; the event's fields and units are declared in workloads/events.py),
then ``arrived_at`` (time.time() as the request was taken off the socket) and
``replied_at`` (time.time() as server_s ended), from which the source derives its one-way
times.

Requests, after ``hello``: ``train`` (a training step: the gradient back), ``infer`` (split
inference: the predictions back), ``calibrate`` (with --bn-batches, before an evaluation:
training batches through the current weights, for that source's BatchNorm statistics,
workloads/batchnorm.py), ``bye``; ``ping`` at any time.

Batches (``--server-batch N``, ``--server-train``). The main thread takes every request
waiting in the inbox at once, up to N samples in all (a training step counts its labels,
an ``infer`` or ``calibrate`` request ``--batch-size``, the most it may hold, anything else
nothing; at least one request), and answers them in arrival order, except that

- ``infer`` requests of sources whose evaluations use the same BatchNorm statistics
  (training's running ones, or with --bn-batches each source's own calibrated set) are
  answered with ONE forward pass over their concatenated cut tensors: in eval mode every
  sample's prediction is what it would be alone. Requests with different statistics are
  never mixed in one pass;
- with ``--server-train merged``, ``train`` requests with the same ``lr_scale`` and batch
  size are answered with ONE forward, backward and optimizer step (:meth:`Server._train_batch`):
  the loss is the SUM over the requests of each request's own mean cross-entropy, and the
  tail's BatchNorm layers normalise each request's samples with that request's own batch
  statistics (:func:`ghost_batchnorm`: the running statistics are updated once per request,
  in order, as sequential steps would), so each source's gradient at the cut is exactly
  the one it would get alone against the same weights, whoever else was in the batch. The
  step itself takes the summed gradient (and k times the weight decay, for k requests):
  with plain SGD that equals k sequential steps to first order in the learning rate only
  (the tail's weights do not move between the requests); with momentum the buffer
  advances once per merged step instead of k times, as for any larger batch. The module's
  server part decodes each request on its own (its BatchNorm layers, crbq's, see each
  request alone; its trainable layers get the summed gradient like the tail). A module
  whose server part adds a per-request term to the loss or takes the tail's weights from a
  request (entropic: ``distill_loss``, ``ships_tail``) trains sequentially whatever the
  option says. ``--server-train sequential`` (the default, the papers' setting) answers
  every training step on its own, one optimizer step each, as it always did.

A connection's requests are answered in the order it sent them; one from a source not yet
welcomed, and every other op, is answered on its own. Each request keeps its own
``request`` event, its reply and its times: queue_s up to the moment the server began on
it (its own decode), server_decode_s and server_encode_s its own, and server_compute_s the
rest of its stay (the pass's compute and the other requests' decode and encode meanwhile),
so queue_s + server_s is still its whole stay; the event adds the pass it was answered in
(``batch_id``, ``batch_requests``, ``batch_samples``, ``batch_compute_s``), and its
``duration_s`` is its own decode and encode plus its share of the pass's compute in
proportion to its samples (the server's busy time, summed over its requests).

On a CUDA device the request arrays the modules copy to the device are staged in pinned
(page-locked) host memory first, the labels cross with a non-blocking copy, every time is
read after ``torch.cuda.synchronize()``, and ``--server-precision bf16`` runs the
forward under autocast (bfloat16 convolutions and matrix products; the gradient sent back
stays float32).
"""
from __future__ import annotations

import contextlib
import os
import queue
import resource
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
import zmq
from torch import nn

from . import batchnorm, events, protocol, security, settings
from .compression import create_server, get
from .compression.base import ServerPart, state_bytes
from .compression.shipping import load_flat_state
from .data import INPUT_SHAPE, class_count
from .errors import Exit, WorkloadError
from .models import build_split_model, warm_up
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
# on a CUDA device, request arrays at least this large are staged in pinned host memory
PIN_BYTES = 64 * 1024
SEQUENTIAL, MERGED = "sequential", "merged"  # --server-train


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
    # what the server saw of it before answering (Server._hint): (samples, op, labels, lr_scale)
    hint: tuple | None = field(default=None, repr=False, compare=False)


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
    """The parts of answering one request: ``lap(part)`` adds the time since the previous
    lap (or the start) to ``part``. In a batch a request's own work is interleaved with the
    others': ``resume()`` before each piece of its own leaves the time since its last lap
    to no part of its own, and :meth:`times` counts it as compute (the pass's). ``sync``
    (CUDA: torch.cuda.synchronize) is called before every reading of the clock, so that
    work queued on the device is counted where it was queued."""

    def __init__(self, sync=None):
        self.sync = sync
        self.began = self.last = time.perf_counter()
        self.parts = {"decode": 0.0, "compute": 0.0, "encode": 0.0}
        self.samples = 0  # the samples of the request, once known

    def lap(self, part: str) -> None:
        if self.sync is not None:
            self.sync()
        now = time.perf_counter()
        self.parts[part] += now - self.last
        self.last = now

    def resume(self) -> None:
        self.last = time.perf_counter()

    def times(self) -> dict:
        """queue_s aside, the request's parts up to now: compute is what decode and encode
        leave of server_s (alone: the laps' compute and whatever no lap counted)."""
        if self.sync is not None:
            self.sync()
        self.last = time.perf_counter()
        server_s = self.last - self.began
        self.parts["compute"] = max(0.0, server_s - self.parts["decode"] - self.parts["encode"])
        return {"server_decode_s": self.parts["decode"], "server_compute_s": self.parts["compute"],
                "server_encode_s": self.parts["encode"], "server_s": server_s}


@dataclass
class Pending:
    """A request of a batch, taken in (decoded, checked) and waiting for the pass."""
    request: Request
    laps: Laps
    message: Message
    peer: Peer
    sent: torch.Tensor | None = None
    restored: torch.Tensor | None = None
    labels: torch.Tensor | None = None


@dataclass
class Unit:
    """Requests answered together: one pass (``key`` None: a request on its own)."""
    key: tuple | None
    requests: list
    samples: int


def _ghost_forward(layer: nn.modules.batchnorm._BatchNorm, chunks: int, x: torch.Tensor) -> torch.Tensor:
    """``layer`` in training mode on ``chunks`` equal chunks of ``x`` (along the batch), each
    normalised with its own batch statistics, as ``layer`` would normalise it alone; the
    running statistics take each chunk's in order, as ``chunks`` calls would.

    The chunks become channels: (k n, C, ...) -> (n, k C, ...), one native batch norm over
    that (the weight and bias repeated k times), and back; its statistics land in scratch
    buffers at momentum 1 (each chunk's mean and unbiased variance), from which the layer's
    running statistics are updated in order."""
    uses_batch = layer.training or (layer.running_mean is None and layer.running_var is None)
    if not uses_batch or chunks <= 1:
        return type(layer).forward(layer, x)
    layer._check_input_dim(x)
    n = x.shape[0] // chunks
    if n * chunks != x.shape[0]:
        raise ValueError(f"a batch of {x.shape[0]} samples is not {chunks} equal requests")
    channels, rest = x.shape[1], x.shape[2:]
    folded = x.reshape(chunks, n, channels, *rest).transpose(0, 1).reshape(n, chunks * channels, *rest)
    weight = layer.weight.repeat(chunks) if layer.weight is not None else None
    bias = layer.bias.repeat(chunks) if layer.bias is not None else None
    means = torch.zeros(chunks * channels, device=x.device, dtype=torch.float32)
    variances = torch.ones(chunks * channels, device=x.device, dtype=torch.float32)
    out = nn.functional.batch_norm(folded, means, variances, weight, bias, True, 1.0, layer.eps)
    out = out.reshape(n, chunks, channels, *rest).transpose(0, 1).reshape(x.shape)
    if layer.training and layer.track_running_stats and layer.running_mean is not None:
        with torch.no_grad():
            means, variances = means.view(chunks, channels), variances.view(chunks, channels)  # unbiased
            if layer.momentum is None:  # a cumulative average: the factor changes every call
                for i in range(chunks):
                    layer.num_batches_tracked.add_(1)
                    factor = 1.0 / float(layer.num_batches_tracked)
                    layer.running_mean.mul_(1 - factor).add_(means[i].to(layer.running_mean.dtype), alpha=factor)
                    layer.running_var.mul_(1 - factor).add_(variances[i].to(layer.running_var.dtype), alpha=factor)
            else:  # m <- (1-f) m + f x_i for i in order: (1-f)^k m + sum_i f (1-f)^(k-1-i) x_i
                factor = float(layer.momentum)
                weights = factor * (1 - factor) ** torch.arange(chunks - 1, -1, -1, dtype=torch.float64)
                weights = weights.to(means.device, torch.float32).unsqueeze(1)
                keep = (1 - factor) ** chunks
                layer.running_mean.mul_(keep).add_((weights * means).sum(0).to(layer.running_mean.dtype))
                layer.running_var.mul_(keep).add_((weights * variances).sum(0).to(layer.running_var.dtype))
                layer.num_batches_tracked.add_(chunks)
    return out


@contextlib.contextmanager
def ghost_batchnorm(chunks: int, *models: nn.Module):
    """While inside, every BatchNorm layer of ``models`` normalises a batch as ``chunks``
    equal requests, each with its own batch statistics ("ghost" batch norm: the batch seen
    as (chunks, n, C, ...)), and updates its running statistics once per request, in
    order. A layer in eval mode is unchanged (each sample on its own)."""
    patched = []
    try:
        if chunks > 1:
            for model in models:
                for layer in model.modules():
                    if isinstance(layer, nn.modules.batchnorm._BatchNorm) and "forward" not in vars(layer):
                        layer.forward = partial(_ghost_forward, layer, chunks)
                        patched.append(layer)
        yield
    finally:
        for layer in patched:
            del layer.forward


class Server:
    def __init__(self, args, trace: TraceWriter):
        self.args, self.trace = args, trace
        self.classes = class_count(args.dataset, args.classes)
        torch.manual_seed(args.seed)
        if args.threads:
            torch.set_num_threads(args.threads)
        self.device = pick_device(args.device)
        self.cuda = self.device.type == "cuda"
        self._sync = partial(torch.cuda.synchronize, self.device) if self.cuda else None
        self.batch_limit = getattr(args, "server_batch", 1)
        self.train_mode = getattr(args, "server_train", SEQUENTIAL)
        self.precision = getattr(args, "server_precision", "fp32")
        split = build_split_model(args.model, args.split, self.classes, INPUT_SHAPE)
        self.cut_shape = split.cut_shape
        self.decompress = create_server(args.module, split.cut_shape, settings.compression_config(args, "server")).to(self.device)
        self.decompress.max_batch = args.batch_size
        # a server part with a per-request loss term or tail weights trains one request at a time
        kind = type(self.decompress)
        self.merges_training = self.train_mode == MERGED and kind.distill_loss is ServerPart.distill_loss \
            and kind.take_tail_state is ServerPart.take_tail_state and not self.decompress.ships_tail
        self.curve = bool(getattr(args, "keys", ""))
        self.max_request = largest_request(self.decompress, args.batch_size, split.tail)
        self.tail_from = None  # the source whose weights the tail started from (a teacher's), if any
        self.steps = 0         # optimizer steps taken
        self.passes = 0        # passes answered (a request alone is one): the next batch_id
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
        self._held: Request | None = None  # taken off the inbox beyond --server-batch: the next sweep's first

    # -- the loop ----------------------------------------------------------------
    def serve(self, sock: zmq.Socket) -> None:
        """Answer requests until stopped (SIGTERM) or ``--expect-sources`` said bye; ``sock``
        belongs to the receiver's thread meanwhile."""
        receiver = Receiver(sock)

        def deliver(request: Request, out: list, traced: dict) -> None:
            receiver.reply(request.identity, out)
            self.trace.event(events.REQUEST, **traced)  # after the reply is on its way

        try:
            while not self._done():
                sweep = self._sweep(receiver)
                if sweep:
                    self.answer(sweep, deliver, stop=self._done)
        finally:
            receiver.stop()

    def _done(self) -> bool:
        expected = self.args.expect_sources
        return self.stopping or bool(expected and sum(p.done for p in self.peers.values()) >= expected)

    def _sweep(self, receiver: Receiver) -> list[Request]:
        """Every request waiting, up to --server-batch samples (at least one); [] when none
        came within POLL_MS."""
        if self._held is not None:
            first, self._held = self._held, None
        else:
            try:
                first = receiver.inbox.get(timeout=POLL_MS / 1000)
            except queue.Empty:
                if not receiver.alive():
                    raise RuntimeError("the receiving thread ended") from None
                return []
        sweep, samples = [first], self._hint(first)[0]
        while samples < self.batch_limit and len(sweep) < INBOX:
            try:
                request = receiver.inbox.get_nowait()
            except queue.Empty:
                break
            more = self._hint(request)[0]
            if samples + more > self.batch_limit:
                self._held = request
                break
            sweep.append(request)
            samples += more
        return sweep

    def _hint(self, request: Request) -> tuple:
        """(samples, op, labels, lr_scale) of a request, from a look at its header (decoded
        again when answered): a training step counts its labels, an infer or calibrate
        request --batch-size (the most it may hold), anything else 0."""
        if request.hint is None:
            try:
                message = protocol.decode(request.body)
            except Exception:  # noqa: BLE001 - answered (refused) on its own
                request.hint = (0, None, None, None)
                return request.hint
            labels = message.arrays.get("labels")
            count = int(labels.shape[0]) if labels is not None and labels.ndim == 1 else None
            lr_scale = message.fields.get("lr_scale", 1.0)
            if not isinstance(lr_scale, (int, float)) or isinstance(lr_scale, bool):
                lr_scale = None
            samples = {"train": self.args.batch_size if count is None else count,
                       "infer": self.args.batch_size, "calibrate": self.args.batch_size}.get(message.op, 0)
            request.hint = (samples, message.op, count, lr_scale)
        return request.hint

    def _key(self, request: Request) -> tuple | None:
        """What a request may share a pass with (None: it is answered on its own)."""
        _, op, count, lr_scale = self._hint(request)
        if request.identity not in self.peers:
            return None
        if op == "infer":
            return ("infer",)
        if op == "train" and self.merges_training and count and lr_scale is not None:
            return ("train", float(lr_scale), count)
        return None

    def plan(self, requests: list[Request]) -> list[Unit]:
        """The passes that answer ``requests``, in order: each request joins the latest
        earlier pass of its kind that has room, unless a request of its connection lies at
        or after that pass (a connection's requests keep their order)."""
        units: list[Unit] = []
        for request in requests:
            key, samples = self._key(request), self._hint(request)[0]
            target = None
            if key is not None:
                for unit in reversed(units):
                    if any(r.identity == request.identity for r in unit.requests):
                        break
                    if unit.key == key and unit.samples + samples <= self.batch_limit:
                        target = unit
                        break
            if target is None:
                units.append(Unit(key, [request], samples))
            else:
                target.requests.append(request)
                target.samples += samples
        return units

    def answer(self, requests: list[Request], deliver=None, stop=None) -> list:
        """Answer ``requests`` (taken together off the inbox): ``deliver(request, frames,
        traced)`` for each reply as soon as it is ready (never raises for a bad request: it
        gets an error reply); ``stop()`` is asked after each pass. Without ``deliver``,
        the (request, frames, traced) of every reply, in the order they were ready."""
        done = []
        deliver = deliver or (lambda *reply: done.append(reply))
        for unit in self.plan(requests):
            if len(unit.requests) == 1:
                deliver(*self._alone(unit.requests[0]))
            elif unit.key[0] == "infer":
                self._infer_batch(unit.requests, deliver)
            else:
                self._train_batch(unit.requests, deliver)
            if stop is not None and stop():
                break
        return done

    def respond(self, request: Request) -> tuple[list, dict]:
        """The reply frames to one request (never raises: a bad request gets an error reply),
        and the fields of its ``request`` trace event."""
        _, out, traced = self._alone(request)
        return out, traced

    def _alone(self, request: Request) -> tuple[Request, list, dict]:
        """One request answered on its own: a pass of one."""
        laps = Laps(self._sync)
        identity = request.identity
        peer = self.peers.get(identity)
        message = None
        try:
            message = protocol.decode(request.body)
            laps.lap("decode")
            reply = self.handle(identity, message, laps)
        except Exception as exc:  # noqa: BLE001 - whatever a message does, the server keeps serving
            reply = self._refuse(identity, message.op if message else None, exc)
        laps.lap("compute")  # what the handling did not count elsewhere
        peer = self.peers.get(identity, peer)
        batch = {"batch_id": self._next_pass(), "batch_requests": 1, "batch_samples": laps.samples}
        return self._finish(request, laps, reply, message, peer, batch, None)

    def _next_pass(self) -> int:
        self.passes += 1
        return self.passes - 1

    def _refuse(self, identity: bytes, op: str | None, exc: Exception) -> Message:
        """The error reply to a request that could not be answered (logged and traced)."""
        reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        reason = reason if len(reason) <= MAX_REASON else reason[:MAX_REASON] + "..."
        print(f"server: rejected {op or 'a message'} from {self._who(identity)}: {reason}", file=sys.stderr)
        self.trace.event(events.ERROR, peer=self._who(identity), op=op, reason=reason)
        return Message("error", {"reason": reason})

    def _finish(self, request: Request, laps: Laps, reply: Message, message: Message | None, peer: Peer | None,
                batch: dict, share_s: float | None) -> tuple[Request, list, dict]:
        """The reply's frames with its times, and its trace fields. ``share_s``: in a pass of
        several, the request's share of the pass's compute (its ``duration_s`` is its own
        decode and encode plus that); None: alone (from beginning on it to its reply encoded)."""
        times = {"queue_s": laps.began - request.arrived, **laps.times()}
        reply.fields["times"] = protocol.times_field({**times, "arrived_at": request.arrived_at,
                                                      "replied_at": time.time()})
        seq = message.fields.get("seq") if message is not None else None
        if isinstance(seq, int) and not isinstance(seq, bool) and abs(seq) < 2 ** 53:
            reply.fields["seq"] = seq  # the source checks that the reply is to this request
        encoding = time.perf_counter()
        try:
            out = protocol.encode(reply)
        except ProtocolError as exc:  # a reply the protocol refuses (it never should): say so instead
            out = protocol.encode(Message("error", {"reason": f"the reply could not be sent: {exc}"[:MAX_REASON]}))
        ended = time.perf_counter()
        if share_s is None:
            duration = ended - laps.began
        else:
            duration = laps.parts["decode"] + laps.parts["encode"] + share_s + (ended - encoding)
        self.served[peer.source if peer else -1] += 1
        traced = {"peer": peer.source if peer else None, "op": reply.op,
                  "bytes_in": protocol.stream_bytes(request.body, self.curve),
                  "bytes_out": protocol.stream_bytes(out, self.curve),
                  "duration_s": round(duration, 6),
                  **{name: round(v, 6) for name, v in times.items()},
                  **batch, "batch_compute_s": round(batch.get("batch_compute_s", times["server_compute_s"]), 6)}
        return request, out, traced

    def _who(self, identity: bytes) -> str:
        peer = self.peers.get(identity)
        return f"source {peer.source}" if peer else f"unknown peer {identity.hex()}"

    # -- passes of several requests ---------------------------------------------------
    def _take(self, request: Request, op: str, deliver) -> Pending | None:
        """A request of a pass decoded (the protocol's decode) and checked; None when it was
        refused (its error reply delivered)."""
        laps = Laps(self._sync)
        message = None
        try:
            message = protocol.decode(request.body)
            laps.lap("decode")
            if message.op != op:  # its header said otherwise when it was planned: it cannot be
                raise ProtocolError(f"a {message.op} request in a pass of {op} requests")
            return Pending(request, laps, message, self._expect(request.identity, message))
        except Exception as exc:  # noqa: BLE001
            self._refused(request, laps, message, exc, deliver)
            return None

    def _refused(self, request: Request, laps: Laps, message: Message | None, exc: Exception, deliver) -> None:
        reply = self._refuse(request.identity, message.op if message else None, exc)
        batch = {"batch_id": self._next_pass(), "batch_requests": 1, "batch_samples": 0}
        deliver(*self._finish(request, laps, reply, message, self.peers.get(request.identity), batch, None))

    def _deliver_all(self, taken: list[Pending], replies: list[Message], compute_s: float, deliver,
                     encode=None) -> None:
        """The replies of one pass, each encoded (``encode(pending, reply)``, its own encode
        lap) and delivered in turn; the pass's compute is shared by samples."""
        batch = {"batch_id": self._next_pass(), "batch_requests": len(taken),
                 "batch_samples": sum(p.laps.samples for p in taken), "batch_compute_s": compute_s}
        for pending, reply in zip(taken, replies):
            pending.laps.resume()
            if encode is not None:
                encode(pending, reply)
            pending.laps.lap("encode")
            if reply.op != "error":
                pending.peer.seq = pending.message.fields["seq"]  # only a request that was served advances
            share = compute_s * pending.laps.samples / max(1, batch["batch_samples"])
            deliver(*self._finish(pending.request, pending.laps, reply, pending.message, pending.peer, batch, share))

    def _fail_all(self, taken: list[Pending], exc: Exception, deliver) -> None:
        """A pass that failed as a whole (it never should): every request of it refused."""
        for pending in taken:
            pending.laps.resume()
            self._refused(pending.request, pending.laps, pending.message, exc, deliver)

    def _infer_batch(self, requests: list[Request], deliver) -> None:
        """``infer`` requests: one forward pass (eval mode) per set of BatchNorm statistics
        they use (training's, or a source's calibrated set with --bn-batches)."""
        groups: dict[int | None, list[Pending]] = {}
        for request in requests:
            pending = self._take(request, "infer", deliver)
            if pending is not None:
                stats = self.calibrated.get(pending.peer.source)
                groups.setdefault(None if stats is None else id(stats[0]), []).append(pending)
        for key, taken in groups.items():
            stats = {} if key is None else self.calibrated[taken[0].peer.source][0]
            self._infer_pass(taken, stats, deliver)

    @torch.no_grad()
    def _infer_pass(self, taken: list[Pending], stats: batchnorm.Statistics, deliver) -> None:
        self.decompress.eval()
        self.tail.eval()
        ready = []
        with batchnorm.using(stats, self.decompress, self.tail), self._autocast():
            for pending in taken:
                pending.laps.resume()
                try:
                    _, pending.restored = self.decompress.decode(self._staged(pending.message.arrays), self.device,
                                                                 pending.peer.source)
                    pending.laps.samples = int(pending.restored.shape[0])
                    pending.laps.lap("decode")
                    ready.append(pending)
                except Exception as exc:  # noqa: BLE001
                    self._refused(pending.request, pending.laps, pending.message, exc, deliver)
            if not ready:
                return
            began = time.perf_counter()
            try:
                logits = self.tail(torch.cat([p.restored for p in ready]))
                preds = logits.argmax(1).to("cpu").numpy()
            except Exception as exc:  # noqa: BLE001
                self._fail_all(ready, exc, deliver)
                return
        if self._sync is not None:
            self._sync()
        compute_s = time.perf_counter() - began
        dtype = np.uint8 if self.classes <= 256 else np.int32
        replies, start = [], 0
        for pending in ready:
            pred = preds[start:start + pending.laps.samples].astype(dtype)
            start += pending.laps.samples
            pending.restored = None
            replies.append(Message("pred", {}, {"pred": pred}))
        self._deliver_all(ready, replies, compute_s, deliver)

    def _train_batch(self, requests: list[Request], deliver) -> None:
        """``train`` requests of one lr_scale and batch size with --server-train merged: one
        forward, backward and optimizer step. The loss is the sum of each request's own mean
        cross-entropy and the tail's BatchNorm layers see each request's samples apart
        (:func:`ghost_batchnorm`), so each source's gradient at the cut is the one it would
        get alone against these weights; the step takes the summed gradient, with the weight
        decay counted once per request (k sequential steps, to first order in the learning
        rate, for plain SGD)."""
        self.decompress.train()
        self.tail.train()
        ready: list[Pending] = []
        for request in requests:
            pending = self._take(request, "train", deliver)
            if pending is None:
                continue
            try:
                pending.laps.resume()
                self._lr_scale(pending.message)
                source = pending.peer.source
                self.calibrated.pop(source, None)  # the weights move on: its next evaluation calibrates again
                with self._autocast():
                    pending.sent, pending.restored = self.decompress.decode(
                        self._staged(pending.message.arrays), self.device, source)
                pending.labels = self._labels(pending.message.arrays, pending.restored.shape[0])
                self._start_tail_from(self.decompress.take_tail_state(), source)
                pending.laps.samples = int(pending.restored.shape[0])
                pending.laps.lap("decode")
                ready.append(pending)
            except Exception as exc:  # noqa: BLE001
                self._refused(pending.request, pending.laps, pending.message, exc, deliver)
        if ready:  # one left (the others refused): exactly the sequential step
            self._train_pass(ready, deliver)

    def _train_pass(self, ready: list[Pending], deliver) -> None:
        k = len(ready)
        began = time.perf_counter()
        lr_scale = ready[0].message.fields.get("lr_scale", 1.0)
        try:
            self._train_new_parameters()
            for group in self.optimizer.param_groups:  # the source's boost on every group; the module's on its own
                group["lr"] = self.args.lr * lr_scale * group["lr_scale"]
                group["weight_decay"] = self.args.weight_decay * k  # each request's own L2 term, summed
            self.optimizer.zero_grad(set_to_none=True)
            sizes = [p.laps.samples for p in ready]
            labels = torch.cat([p.labels for p in ready])
            with self._autocast():
                restored = ready[0].restored if k == 1 else torch.cat([p.restored for p in ready])
                with ghost_batchnorm(k, self.tail):
                    logits = self.tail(restored)
                losses = [self.loss(chunk, y) for chunk, y in zip(logits.split(sizes), labels.split(sizes))]
                total = losses[0] if k == 1 else torch.stack(losses).sum()
            total.backward()
            self.optimizer.step()
            self.steps += 1
            hits = (logits.argmax(1) == labels).split(sizes)
            correct = torch.stack([h.sum() for h in hits]).tolist()  # waits for the device
            values = torch.stack([loss.detach().float() for loss in losses]).tolist()
        except Exception as exc:  # noqa: BLE001
            self._fail_all(ready, exc, deliver)
            return
        finally:
            for group in self.optimizer.param_groups:
                group["weight_decay"] = self.args.weight_decay
        if self._sync is not None:
            self._sync()
        compute_s = time.perf_counter() - began
        replies = [Message("grad", {"loss": round(loss, 6), "correct": int(hit)}) for loss, hit in zip(values, correct)]

        def encode(pending: Pending, reply: Message) -> None:
            if pending.message.fields.get("want_grad", True):
                reply.arrays.update(self.decompress.encode_grad(pending.sent))
            pending.sent = pending.restored = pending.labels = None

        self._deliver_all(ready, replies, compute_s, deliver, encode)

    # -- the device ----------------------------------------------------------------
    def _autocast(self):
        """--server-precision bf16: autocast on the device (bfloat16 convolutions and matrix
        products); fp32: nothing."""
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _staged(self, arrays: dict) -> dict:
        """On a CUDA device, a request's larger arrays copied into pinned host memory, so that
        the module's copies to the device come from page-locked memory (the received frame's
        pages are not); elsewhere the arrays as they came."""
        if not self.cuda:
            return arrays
        staged = {}
        for name, array in arrays.items():
            if array.nbytes < PIN_BYTES:
                staged[name] = array
                continue
            buffer = torch.empty(array.nbytes, dtype=torch.uint8, pin_memory=True)
            pinned = buffer.numpy().view(array.dtype).reshape(array.shape)  # keeps the buffer alive
            pinned[...] = array
            staged[name] = pinned
        return staged

    # -- messages ----------------------------------------------------------------
    def _expect(self, identity: bytes, message: Message) -> Peer:
        """The peer of a request that needs one (after hello), with the next seq."""
        peer = self.peers.get(identity)
        if peer is None:
            raise ProtocolError(f"{message.op} before hello")
        seq = message.fields.get("seq")
        if seq != peer.seq + 1:
            raise ProtocolError(f"out of order: expected seq {peer.seq + 1}, got {seq!r}")
        return peer

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
        self._expect(identity, message)
        if message.op == "train":
            reply = self._train(message, peer.source, laps)
        elif message.op == "calibrate":
            reply = self._calibrate(message, peer.source, laps)
        elif message.op == "infer":
            reply = self._infer(message, peer.source, laps)
        else:
            raise ProtocolError(f"a server does not accept {message.op!r}")
        peer.seq = message.fields["seq"]  # only a request that was served advances the sequence
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
        values = torch.from_numpy(labels.astype(np.int64))
        if self.cuda:  # page-locked, so that the copy need not wait
            return values.pin_memory().to(self.device, non_blocking=True)
        return values.to(self.device)

    @staticmethod
    def _lr_scale(message: Message) -> float:
        lr_scale = message.fields.get("lr_scale", 1.0)
        if not isinstance(lr_scale, (int, float)) or isinstance(lr_scale, bool) or not 0 < lr_scale <= 1000:
            raise ProtocolError(f"lr_scale must be a number in (0, 1000], got {lr_scale!r}")
        return lr_scale

    def _train(self, message: Message, source: int, laps: Laps) -> Message:
        lr_scale = self._lr_scale(message)
        self.calibrated.pop(source, None)  # the weights move on: its next evaluation calibrates again
        self.decompress.train()
        self.tail.train()
        with self._autocast():
            sent, restored = self.decompress.decode(self._staged(message.arrays), self.device, source)
        labels = self._labels(message.arrays, restored.shape[0])
        laps.samples = int(restored.shape[0])
        self._start_tail_from(self.decompress.take_tail_state(), source)
        laps.lap("decode")
        self._train_new_parameters()
        for group in self.optimizer.param_groups:  # the source's boost on every group; the module's scale on its own
            group["lr"] = self.args.lr * lr_scale * group["lr_scale"]
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
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
        with batchnorm.using(stats, self.decompress, self.tail, accumulate=accumulate), self._autocast():
            _, restored = self.decompress.decode(self._staged(message.arrays), self.device, source)
            laps.samples = int(restored.shape[0])
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
        warm_up()
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
