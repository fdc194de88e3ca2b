"""The data source: ``python -m workloads.source``.

Trains the head (blocks 1..n) and the source part of the compression module on its
own shard of the data; each step sends the cut to the server and finishes the
backward pass with the gradient that comes back. At the end of every epoch it
evaluates test accuracy by split inference over the same connection.

Its trace: ``start``, ``data``, ``connected``, the module's ``pretrain`` steps and
``prepared``, then a ``batch`` event per training step and, per epoch, a ``calibrate``
event per request with ``--bn-batches``, an ``infer`` event per split-inference request
and the ``eval`` event; with ``--adapt`` (workloads/adapt.py) ``adapt_start`` and an
``adapt`` event per interval; ``bye`` and ``end``. Each request's round trip is traced in
parts, measured at the source on one clock, with what the server reports in its reply
(see workloads/server.py). Every event, its fields and their units: workloads/events.py.
"""
from __future__ import annotations

import os
import resource
import signal
import sys
import threading
import time
import traceback

import numpy as np
import psutil
import torch

from . import adapt, batchnorm, events, settings
from .compression import create_source, get, schedule_for
from .data import augment_batch, augmenting, class_count, load_dataset, to_tensor_batch
from .errors import Exit, WorkloadError
from .models import build_split_model
from .protocol import Message, ProtocolError
from .trace import TraceWriter, process_created
from .transport import Connection, Exchange, ServerGone, ServerTimeout, largest_reply

AUGMENT_STREAM = 1    # the augmentation's generator: [seed, source id, this], apart from the data order's
CALIBRATION_STREAM = 2  # --bn-batches' draws: [seed, source id, this, epoch], apart from training's


class SourceError(WorkloadError, RuntimeError):
    pass


def check(args) -> None:
    """What the option declarations cannot check alone (each value's range they do)."""
    if not 0 <= args.source_id < args.sources:
        raise SourceError(f"--source-id must be in 0..{args.sources - 1}, got {args.source_id}")


class Source:
    def __init__(self, args, trace: TraceWriter, connection=None):
        """``connection``: what carries the requests (anything with Connection's ``request``
        and ``close``, such as transport.InProcessConnection); default: a ZeroMQ
        Connection to ``--server``."""
        self.args, self.trace = args, trace
        torch.manual_seed(args.seed)  # every source starts from the same weights
        if args.threads:
            torch.set_num_threads(args.threads)
        self.classes = class_count(args.dataset, args.classes)
        data = load_dataset(args.dataset, args.data_dir or None, seed=args.seed,
                            train_size=args.batch_size * args.batches, test_size=args.eval_samples,
                            download=args.download, part=args.source_id, parts=args.sources,
                            difficulty=args.difficulty, classes=self.classes)
        if data.name != args.dataset:
            print(f"source {args.source_id}: no CIFAR-10 under {args.data_dir or '(no --data-dir)'}; "
                  f"using the synthetic dataset instead", file=sys.stderr)
        self.data_origin = data.origin
        self.train = data.train
        self.test = data.test
        self.augment = augmenting(args.augment, data.name)
        split = build_split_model(args.model, args.split, self.classes, tail=False)  # the tail is the server's
        self.head = split.head
        self.cut_shape = split.cut_shape
        self.module = create_source(args.module, split.cut_shape, settings.compression_config(args, "source"))
        self.schedule = schedule_for(args.module, args.budget, split.cut_shape[0], args.epochs,
                                     text=args.schedule or None, boost=args.lr_boost,
                                     boost_epochs=args.boost_epochs)
        levels = get(args.module).levels
        self.levels = adapt.check(vars(args), levels, split.cut_shape[0]) if args.adapt else ()
        self.level_name = levels.name if levels is not None else ""
        self.controller: adapt.Controller | None = None
        self.boost_steps = 0  # steps left at the lr boost after an adaptive change
        self.sgd, own = self._optimizers()
        self.optimizers = ([self.sgd] if self.sgd else []) + own
        self.rng = np.random.default_rng([args.seed, args.source_id])
        self.augment_rng = np.random.default_rng([args.seed, args.source_id, AUGMENT_STREAM])
        self.connection = connection if connection is not None else self._connect()
        self.seq = 0
        self._nic: tuple[int, int] | None = None

    def _optimizers(self) -> tuple[torch.optim.Optimizer | None, list[torch.optim.Optimizer]]:
        """SGD for the head and the module's plain parameters, plus the module's own
        optimizers (the filter logits); only the SGD gets paper 002's lr boost."""
        a = self.args
        own = self.module.make_optimizers()
        taken = {id(p) for o in own for g in o.param_groups for p in g["params"]}
        rest = [p for p in list(self.head.parameters()) + list(self.module.parameters()) if id(p) not in taken]
        sgd = torch.optim.SGD(rest, lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay) if rest else None
        return sgd, own

    def _request(self, op: str, arrays, **fields) -> Exchange:
        self.seq += 1
        return self.connection.request(Message(op, {"seq": self.seq, **fields}, arrays))

    def _connect(self) -> Connection:
        return Connection(self.args.server, self.args.timeout, keys=self.args.keys,
                          max_reply_bytes=largest_reply(self.args.batch_size, self.cut_shape),
                          heartbeat_timeout_s=self.args.heartbeat_timeout)

    def hello(self) -> None:
        """The first request waits up to ``--connect-timeout`` for the server (on a cluster
        it may still be pulling its image or waiting for a node): ZeroMQ connects in the
        background and sends the hello once a server listens. A connection that comes
        and goes meanwhile (a server restarting) is opened again and the hello repeated;
        only past the deadline is a silent or absent server an error."""
        a = self.args
        hello = Message("hello", {"source": a.source_id, "module": a.module, "model": a.model, "split": a.split,
                                  "classes": self.classes, "cut": list(self.cut_shape)})
        deadline = time.monotonic() + max(a.connect_timeout, a.timeout)
        while True:
            try:
                exchange = self.connection.request(hello, timeout_s=max(0.001, deadline - time.monotonic()))
                break
            except ServerGone:
                if time.monotonic() >= deadline:
                    raise
                self.connection.close()  # the queued hello must not reach a server twice
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                self.connection = self._connect()
            except ServerTimeout:
                raise ServerTimeout(f"no answer from the server {a.server} within --connect-timeout "
                                    f"{max(a.connect_timeout, a.timeout):g} s") from None
        self.trace.event(events.CONNECTED, server=a.server, bytes_sent=exchange.bytes_sent,
                         bytes_received=exchange.bytes_received, **exchange.reply.fields)

    def _pretrain_batches(self):
        for _ in range(self.args.pretrain_epochs):
            for _, picked in self._epoch_batches():
                yield self._training_batch(picked), torch.from_numpy(self.train.labels[picked])

    def _training_batch(self, picked) -> torch.Tensor:
        """The training images ``picked``, augmented when ``--augment`` says so, as the model's input."""
        images = self.train.images[picked]
        return to_tensor_batch(augment_batch(images, self.augment_rng) if self.augment else images)

    def _epoch_batches(self):
        """(batch number, sample indices) of one epoch in a fresh order; wraps around a
        shard smaller than batches x batch size."""
        order = self.rng.permutation(len(self.train.labels))
        size = self.args.batch_size
        for batch in range(self.args.batches):
            yield batch, np.take(order, range(batch * size, (batch + 1) * size), mode="wrap")

    def run(self) -> None:
        a = self.args
        started = time.perf_counter()
        self.module.prepare(self.head, self._pretrain_batches, self.trace)
        self.trace.event(events.PREPARED, duration_s=round(time.perf_counter() - started, 6))
        if self.levels:
            self.controller = self._controller()
        first = True
        for epoch in range(a.epochs):
            if self.controller is None:  # the schedule decides
                budget, lr_scale = self.schedule.budget(epoch), self.schedule.lr_scale(epoch)
                self.module.set_budget(budget)
            self.module.start_epoch(epoch)
            for batch, picked in self._epoch_batches():
                if self.controller is not None:  # the controller decides, step by step
                    budget, lr_scale = self._adapted()
                self._set_lr(lr_scale)
                self._train_step(epoch, batch, picked, budget, lr_scale, warmup=first)
                first = False
            self._evaluate(epoch, budget)

    def _set_lr(self, lr_scale: float) -> None:
        if self.sgd is not None:
            for group in self.sgd.param_groups:
                group["lr"] = self.args.lr * lr_scale

    # -- --adapt ------------------------------------------------------------------
    def _controller(self) -> adapt.Controller:
        """The controller, starting at the least compression; each level's bytes per sample
        from the module, on the head's output of one training batch."""
        a = self.args
        picked = np.arange(a.batch_size) % len(self.train.labels)  # no draw: the data order stays the fixed arms'
        with torch.no_grad():
            self.head.eval()
            self.module.eval()  # no BatchNorm statistics updated by this count (train_mode restores it per step)
            costs = self.module.level_bytes(self.head(to_tensor_batch(self.train.images[picked])), self.levels)
        target = adapt.target_samples_per_s(a.target, a.target_latency, a.batch_size)
        controller = adapt.Controller(a.adapt, self.levels, costs, target, a.adapt_interval, a.adapt_dwell,
                                      hysteresis=a.adapt_hysteresis, window=a.adapt_window)
        self.module.set_level(controller.value)
        self.trace.event(events.ADAPT_START, policy=a.adapt, level_name=self.level_name, levels=list(self.levels),
                         bytes_per_sample=list(costs), target_samples_per_s=target,
                         interval_s=a.adapt_interval, dwell=a.adapt_dwell, value=controller.value)
        self._nic = nic_bytes() if a.own_interface else None
        return controller

    def _adapted(self) -> tuple[int, float]:
        """The budget the step is traced with and its lr scale (paper 002's boost for
        --boost-epochs epochs of steps after a change of a budget)."""
        budget = self.controller.value if self._level_is_budget() else self.cut_shape[0]
        if self.boost_steps > 0:
            self.boost_steps -= 1
            return budget, self.args.lr_boost
        return budget, 1.0

    def _level_is_budget(self) -> bool:
        """The filter family's level is paper 002's budget, with its lr boost after a change."""
        return get(self.args.module).schedule is not None

    def _observe(self, samples: int, step_s: float, exchange: Exchange) -> None:
        """One step for the controller; at the end of an interval its decision, traced with
        what it was measured on, and taken."""
        network_s = exchange.parts().get("network_s") or 0.0
        previous = self.controller.value
        closed = self.controller.observe(samples, step_s, network_s, exchange.bytes_sent + exchange.bytes_received)
        if closed is None:
            return
        measured, decision = closed
        nic = nic_bytes() if self.args.own_interface else None
        nic_fields = {} if nic is None or self._nic is None else {
            "nic_tx_bytes": nic[0] - self._nic[0], "nic_rx_bytes": nic[1] - self._nic[1]}
        self._nic = nic
        applying = time.perf_counter()
        if decision.changed:
            self.module.set_level(self.controller.value)
            if self._level_is_budget():
                self.boost_steps = self.args.boost_epochs * self.args.batches
        self.trace.event(
            events.ADAPT, interval=self.controller.intervals, policy=self.args.adapt, samples=measured.samples,
            bytes=measured.bytes, network_s=measured.network_s, compute_s=measured.compute_s,
            samples_per_s=round(measured.samples_per_s, 4),
            bandwidth_mbit_s=round(measured.bandwidth_bps / 1e6, 4) if measured.network_s > 0 else None,
            level=decision.level, value=self.controller.value, previous=previous, changed=decision.changed,
            reason=decision.reason, apply_s=round(time.perf_counter() - applying, 6), **nic_fields)

    def _train_step(self, epoch, batch, picked, budget, lr_scale, warmup) -> None:
        started = time.perf_counter()
        batchnorm.train_mode(self.head)
        batchnorm.train_mode(self.module)
        x = self._training_batch(picked)
        labels = self.train.labels[picked].astype(np.uint8 if self.classes <= 256 else np.int64)
        computing = time.perf_counter()
        sent, side = self.module(self.head(x))
        computed = time.perf_counter()
        arrays = self.module.encode(sent, side)
        arrays["labels"] = labels
        encoded = time.perf_counter()
        exchange = self._request("train", arrays, epoch=epoch, batch=batch, lr_scale=lr_scale,
                                 want_grad=sent.requires_grad)
        replied = time.perf_counter()
        tensors, grads = [], []
        if sent.requires_grad:
            tensors.append(sent)
            grads.append(self.module.decode_grad(exchange.reply.arrays, sent))
        decoded = time.perf_counter()
        prune = self.module.extra_loss()
        if prune is not None:
            tensors.append(prune)
            grads.append(None)
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        if tensors:
            torch.autograd.backward(tensors, grads)
            self.module.before_step()
            for optimizer in self.optimizers:
                optimizer.step()
            self.module.after_step()
        done = time.perf_counter()
        self.trace.event(
            events.BATCH, epoch=epoch, batch=batch, samples=len(picked), warmup=warmup,
            duration_s=round(done - started, 6), latency_s=round(done - started, 6),
            **parts(computed - computing, encoded - computed, exchange, decoded - replied),
            backward_s=round(done - decoded, 6),
            wait_s=round(exchange.wait_s, 6), cpu_s=round(time.process_time(), 6),
            bytes_sent=exchange.bytes_sent, bytes_received=exchange.bytes_received,
            payload_sent=exchange.payload_sent, payload_received=exchange.payload_received,
            coded_sent=self.module.coded_bytes(arrays),
            loss=exchange.reply.fields.get("loss"), correct=exchange.reply.fields.get("correct"),
            distill_loss=exchange.reply.fields.get("distill_loss"),
            prune_loss=None if prune is None else round(prune.item(), 6),
            budget=budget, phase=self.schedule.phase(epoch), lr_scale=lr_scale, **self.module.describe())
        if self.controller is not None and not warmup:  # the warm-up step is not the link's
            self._observe(len(picked), done - started, exchange)

    @torch.no_grad()
    def _evaluate(self, epoch, budget) -> None:
        if not len(self.test.labels):
            return
        self.head.eval()
        self.module.eval()
        stats, sent_bytes, received_bytes = self._calibrate(epoch) if self.args.bn_batches else ({}, 0, 0)
        with batchnorm.using(stats, self.head, self.module):
            correct, sent, received, coded_bytes = self._split_inference(epoch)
        sent_bytes += sent
        received_bytes += received
        self.trace.event(events.EVAL, epoch=epoch, budget=budget, samples=len(self.test.labels),
                         accuracy=round(correct / len(self.test.labels), 6),
                         bytes_sent=sent_bytes, bytes_received=received_bytes, coded_sent=coded_bytes,
                         **self.module.eval_state())

    def _calibrate(self, epoch: int) -> tuple[batchnorm.Statistics, int, int]:
        """--bn-batches training batches (drawn apart from the data order, without
        augmentation) through the current weights, here and at the server (``calibrate``
        requests): the BatchNorm statistics this evaluation uses (workloads/batchnorm.py)."""
        a = self.args
        rng = np.random.default_rng([a.seed, a.source_id, CALIBRATION_STREAM, epoch])
        stats = batchnorm.fresh(self.head, self.module)
        sent_bytes = received_bytes = 0
        with batchnorm.using(stats, self.head, self.module, accumulate=True):
            for batch in range(a.bn_batches):
                started = time.perf_counter()
                picked = rng.integers(0, len(self.train.labels), a.batch_size)
                sent, side = self.module(self.head(to_tensor_batch(self.train.images[picked])))
                exchange = self._request("calibrate", self.module.encode(sent, side), batch=batch)
                if exchange.reply.op != "calibrated":
                    raise ProtocolError(f"expected 'calibrated', got {exchange.reply.op!r}")
                self.trace.event(events.CALIBRATE, epoch=epoch, batch=batch, samples=len(picked),
                                 duration_s=round(time.perf_counter() - started, 6),
                                 bytes_sent=exchange.bytes_sent, bytes_received=exchange.bytes_received)
                sent_bytes += exchange.bytes_sent
                received_bytes += exchange.bytes_received
        return stats, sent_bytes, received_bytes

    def _split_inference(self, epoch: int) -> tuple[int, int, int, int]:
        """Every test sample through the head, the module and the server: (correct, bytes
        sent, bytes received, payload bytes), an ``infer`` event per request."""
        correct = sent_bytes = received_bytes = coded_bytes = 0
        size = self.args.batch_size
        for start in range(0, len(self.test.labels), size):
            x = to_tensor_batch(self.test.images[start:start + size])
            computing = time.perf_counter()
            sent, side = self.module(self.head(x))
            computed = time.perf_counter()
            arrays = self.module.encode(sent, side)
            encoded = time.perf_counter()
            exchange = self._request("infer", arrays)
            pred = exchange.reply.arrays.get("pred")
            labels = self.test.labels[start:start + size]
            if pred is None or pred.shape != labels.shape:
                raise ProtocolError(f"prediction of shape {None if pred is None else pred.shape}, expected {labels.shape}")
            done = time.perf_counter()
            self.trace.event(events.INFER, epoch=epoch, samples=len(labels), latency_s=round(done - computing, 6),
                             **parts(computed - computing, encoded - computed, exchange),
                             bytes_sent=exchange.bytes_sent, bytes_received=exchange.bytes_received,
                             coded_sent=self.module.coded_bytes(arrays))
            correct += int((pred.astype(np.int64) == labels).sum())
            sent_bytes += exchange.bytes_sent
            received_bytes += exchange.bytes_received
            coded_bytes += self.module.coded_bytes(arrays)
        return correct, sent_bytes, received_bytes, coded_bytes

    def bye(self) -> None:
        exchange = self.connection.request(Message("bye", {"source": self.args.source_id}))
        self.trace.event(events.BYE, bytes_sent=exchange.bytes_sent, bytes_received=exchange.bytes_received)


def parts(compute_s: float, encode_s: float, exchange: Exchange, decode_s: float = 0.0) -> dict:
    """One request's parts as traced (their meaning: workloads/events.py): ``encode_s`` and ``decode_s``
    are the module's, to which the exchange adds the protocol's."""
    return {"compute_s": round(compute_s, 6), "encode_s": round(encode_s + exchange.encode_s, 6),
            "decode_s": round(exchange.decode_s + decode_s, 6), **exchange.parts()}


def nic_bytes() -> tuple[int, int] | None:
    """Bytes sent and received by this network namespace's interfaces other than
    loopback (an emulated link's veth, a pod's eth0); None where there is none."""
    counters = {name: c for name, c in psutil.net_io_counters(pernic=True).items() if name != "lo"}
    if not counters:
        return None
    return sum(c.bytes_sent for c in counters.values()), sum(c.bytes_recv for c in counters.values())


def _resources(created: float) -> dict:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    wall = time.time() - created
    return {"cpu_seconds": round(cpu, 4), "wall_seconds": round(wall, 4),
            "cpu_share": round(cpu / wall, 4) if wall > 0 else None,
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}  # ru_maxrss is in KiB on Linux


def arm_drop(args, created: float, trace: TraceWriter) -> threading.Thread | None:
    """``--drop``: when this source is listed, a thread kills the process with SIGKILL
    that many seconds after it started (a real abrupt death: no bye, no end event),
    tracing a ``drop`` event just before so that the analysis knows it was injected."""
    after = settings.drops(args.drop).get(args.source_id)
    if after is None:
        return None

    def drop() -> None:
        time.sleep(max(0.0, created + after - time.time()))
        trace.event(events.DROP, after_s=after)
        os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=drop, name="drop", daemon=True)
    thread.start()
    return thread


def live(args, trace: TraceWriter, created: float, connection=None, before_start=None, **start) -> tuple[Exit, str]:
    """One source from its ``start`` event to its ``end`` event: ``python -m
    workloads.source``, and each source of ``workloads.inprocess`` (``connection``: its
    in-process one; ``start``: fields its start event adds). The exit status and the error
    ('' when none). The end event is traced whatever happens; an error is one line on
    stderr, a bug its traceback."""
    source = None
    try:
        check(args)
        if before_start is not None:
            before_start()
        trace.event(events.START, pid=os.getpid(), module=args.module, model=args.model, split=args.split,
                    process_created=created, torch=torch.__version__, threads=torch.get_num_threads(),
                    settings=settings.effective(args, "source"), **start)
        source = Source(args, trace, connection)
        synthetic = source.data_origin.startswith("synthetic")
        trace.event(events.DATA, origin=source.data_origin, synthetic=synthetic,
                    train_samples=len(source.train.labels), test_samples=len(source.test.labels),
                    train_digest=source.train.digest(), **({"difficulty": args.difficulty} if synthetic else {}))
        source.hello()
        source.run()
        source.bye()
        trace.event(events.END, status="ok", **_resources(created))
        return Exit.OK, ""
    except (WorkloadError, ValueError) as exc:  # a module's ValueError: a setting it cannot take
        status = getattr(exc, "status", Exit.ERROR)
        print(f"source {args.source_id}: {exc}", file=sys.stderr)
        trace.event(events.END, status="server-gone" if status == Exit.SERVER_GONE else "error", error=str(exc),
                    **_resources(created))
        return status, str(exc)
    except KeyboardInterrupt:
        trace.event(events.END, status="interrupted", **_resources(created))
        return Exit.INTERRUPTED, ""
    except Exception as exc:  # a bug: its traceback in the log, its end in the trace
        traceback.print_exc()
        error = f"{type(exc).__name__}: {exc}"
        trace.event(events.END, status="error", error=error, **_resources(created))
        return Exit.BUG, error
    finally:
        if source is not None and connection is None:
            source.connection.close()


def main(argv=None) -> int:
    args = settings.parse("source", "splittest data source", argv)
    created = process_created()
    trace = TraceWriter(args.trace or None, run=args.run_id, role="source", source=args.source_id,
                        copy_dir=args.trace_dir)
    try:
        status, _ = live(args, trace, created, before_start=lambda: arm_drop(args, created, trace))
        return status
    finally:
        trace.close()


if __name__ == "__main__":
    sys.exit(main())
