"""Server capacity: the training requests per second, and samples per second, that the
offload server sustains against the number of sources sending to it at once, with each
training step answered on its own (``--server-train sequential``, the papers' setting) or
the steps waiting together merged into one (``--server-train merged``).

How: the real server program (``python -m workloads.server``) is started as a process,
one per device and mode, listening on loopback (plaintext, or CURVE with ``--curve``), with
the module ``none`` (the cut's float32 maps cross as they are), ``--model`` at ``--split``
and ``--batch-size``. Synthetic sources in this process, each with its own DEALER
connection and source id (a fresh set of ids per point), say hello, then each sends a
ready-made training request (random maps and labels, made once with numpy; only its seq
changes) and the next as soon as its reply is in, as a real source does: one request in
flight per source. One poller drives them all, so they cost the host little (no torch, no
head, no backward). For each number of sources (1, 8, 32, 128; 256 with ``--max-sources
256``) the sources run a warm-up (at least one reply each), then a window of at least
``--seconds`` and at least one more reply per source, in which the replies are counted:
requests/s and samples/s (the fleet's), the median round trip of a request, and from the
server's trace the requests per pass (its ``request`` events' ``batch_id``: 1 when every
step is answered alone). Then the sources stop sending, wait for their last replies, and
the next point starts. Both modes' servers are up at once and each point runs them back to
back, so that a change in the host's load falls on both alike. The table goes to stdout,
one row per device, number of sources and mode, and the merged/sequential ratio of
samples/s per number of sources.

On a 2-core host the server and the synthetic sources share the cores, so this measures
the server's throughput on what the sources leave it (the server gets one torch thread on
a host of 4 cores or fewer, ``--threads``); a GPU server is measured where
CUDA is available (``--devices``). Each point takes a few seconds; the whole benchmark a
couple of minutes at the defaults.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from workloads import protocol, security  # noqa: E402
from workloads.protocol import Message  # noqa: E402

POINTS = (1, 8, 32, 128)
START_TIMEOUT_S = 120.0
REPLY_TIMEOUT_S = 120.0
LONGEST_WINDOW_S = 60.0


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vgg11-slim", help="the split model (vgg11: the papers'; slow on a small CPU)")
    p.add_argument("--split", type=int, default=2, help="the cut")
    p.add_argument("--batch-size", type=int, default=16, help="samples per request (the papers': 16)")
    p.add_argument("--max-sources", type=int, default=128, choices=(128, 256),
                   help="the largest number of sources (256 adds a point)")
    p.add_argument("--sources", default="", help="the numbers of sources, comma-separated (default 1,8,32,128[,256])")
    p.add_argument("--modes", default="sequential,merged", help="--server-train modes to compare")
    p.add_argument("--devices", default="auto", help="server devices, comma-separated (auto: cpu, and cuda where "
                                                     "available)")
    p.add_argument("--server-batch", type=int, default=0, help="the server's --server-batch (0: its default)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"), help="the server's --server-precision")
    p.add_argument("--threads", type=int, default=1 if (os.cpu_count() or 1) <= 4 else 0,
                   help="the server's torch threads (0: torch's default; default 1 on a host of 4 cores or fewer, "
                        "where the server shares them with the sources and OpenMP threads would stall each other)")
    p.add_argument("--seconds", type=float, default=3.0, help="the shortest measuring window of a point")
    p.add_argument("--warmup", type=float, default=1.0, help="the shortest warm-up of a point, in seconds")
    p.add_argument("--curve", action="store_true", help="CURVE between the sources and the server (default: plaintext)")
    p.add_argument("--json", default="", help="also write the rows to this file")
    args = p.parse_args(argv)
    args.points = tuple(int(v) for v in args.sources.split(",")) if args.sources else \
        POINTS + ((256,) if args.max_sources >= 256 else ())
    return args


def devices(text: str) -> list[str]:
    if text != "auto":
        return [d.strip() for d in text.split(",") if d.strip()]
    import torch  # only to ask whether there is a GPU

    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


class ServerProcess:
    """``python -m workloads.server`` on a free loopback port, its trace in ``folder``."""

    def __init__(self, args, folder: Path, device: str, mode: str, ids: int, keys: Path | None):
        self.trace = folder / f"server-{device}-{mode}.jsonl"
        with zmq.Context.instance().socket(zmq.ROUTER) as probe:  # a free port
            self.port = probe.bind_to_random_port("tcp://127.0.0.1")
        command = [sys.executable, "-m", "workloads.server", "--module", "none", "--model", args.model,
                   "--split", str(args.split), "--dataset", "synthetic", "--batch-size", str(args.batch_size),
                   "--sources", str(ids), "--port", str(self.port), "--bind", "127.0.0.1", "--device", device,
                   "--server-train", mode, "--server-precision", args.precision, "--threads", str(args.threads),
                   "--trace", str(self.trace)]
        if args.server_batch:
            command += ["--server-batch", str(args.server_batch)]
        if keys is not None:
            command += ["--keys", str(keys)]
        self.log = open(folder / f"server-{device}-{mode}.log", "w")
        self.proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (self.trace.exists() and '"listening"' in self.trace.read_text()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"the server did not start: {(folder / f'server-{device}-{mode}.log').read_text()}")
            time.sleep(0.05)
        listening = next(e for e in self.events() if e["event"] == "listening")
        self.cut = listening["cut"]

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.trace.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class Sources:
    """``count`` synthetic sources (ids ``first``..), one DEALER each, driven by one poller."""

    def __init__(self, port: int, first: int, count: int, cut, batch: int, keys: Path | None):
        context = zmq.Context.instance()
        self.sockets, self.ids = [], list(range(first, first + count))
        for _ in self.ids:
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if keys is not None:
                security.connect_securely(sock, security.load(keys, security.SOURCE))
            sock.connect(f"tcp://127.0.0.1:{port}")
            self.sockets.append(sock)
        self.poller = zmq.Poller()
        for sock in self.sockets:
            self.poller.register(sock, zmq.POLLIN)
        rng = np.random.default_rng(0)
        self.arrays = {"maps": rng.normal(size=(batch, *cut)).astype(np.float32),
                       "labels": rng.integers(0, 10, batch).astype(np.uint8)}
        self.batch = batch
        self.hello = {"module": "none", "split": None, "classes": 10, "cut": list(cut)}
        self.seq = [0] * count
        self.sent_at = [0.0] * count
        self.busy = [False] * count

    def say_hello(self, model: str, split: int) -> None:
        for sock, source in zip(self.sockets, self.ids):
            sock.send_multipart(protocol.encode(Message("hello", {**self.hello, "source": source, "model": model,
                                                                  "split": split})))
        for sock in self.sockets:
            if not sock.poll(int(REPLY_TIMEOUT_S * 1000)):
                raise SystemExit("no welcome from the server")
            reply = protocol.decode(sock.recv_multipart())
            if reply.op != "welcome":
                raise SystemExit(f"hello refused: {reply.fields}")

    def _send(self, i: int) -> None:
        self.seq[i] += 1
        message = Message("train", {"seq": self.seq[i], "lr_scale": 1.0, "want_grad": True}, self.arrays)
        self.sent_at[i] = time.perf_counter()
        self.sockets[i].send_multipart(protocol.encode(message), copy=False)
        self.busy[i] = True

    def run(self, until, record) -> None:
        """Every source sends, and sends again on each reply, until ``until()``;
        ``record(source index, round trip)`` per reply."""
        index = {sock: i for i, sock in enumerate(self.sockets)}
        for i, busy in enumerate(self.busy):
            if not busy:
                self._send(i)
        while not until():
            ready = self.poller.poll(int(REPLY_TIMEOUT_S * 1000))
            if not ready:
                raise SystemExit("no reply from the server")
            for sock, _ in ready:
                i = index[sock]
                reply = protocol.decode(sock.recv_multipart())
                rtt = time.perf_counter() - self.sent_at[i]
                self.busy[i] = False
                if reply.op != "grad":
                    raise SystemExit(f"the server refused a step: {reply.fields}")
                record(i, rtt)
                if not until():
                    self._send(i)

    def drain(self) -> None:
        """Wait for the replies still owed (so the next point starts on an idle server)."""
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while any(self.busy) and time.monotonic() < deadline:
            for sock, _ in self.poller.poll(1000):
                sock.recv_multipart()
                self.busy[self.sockets.index(sock)] = False

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(0)


def point(server: ServerProcess, args, first: int, count: int, keys: Path | None) -> dict:
    sources = Sources(server.port, first, count, server.cut, args.batch_size, keys)
    try:
        sources.say_hello(args.model, args.split)
        answered = [0] * count
        began = time.perf_counter()
        sources.run(lambda: time.perf_counter() - began >= args.warmup and min(answered) >= 1,
                    lambda i, rtt: answered.__setitem__(i, answered[i] + 1))
        counted, rtts = [0] * count, []
        window_at, began = time.time(), time.perf_counter()

        def enough() -> bool:
            elapsed = time.perf_counter() - began
            return elapsed >= LONGEST_WINDOW_S or (elapsed >= args.seconds and min(counted) >= 1)

        def record(i, rtt):
            counted[i] += 1
            rtts.append(rtt)

        sources.run(enough, record)
        seconds, window_end = time.perf_counter() - began, time.time()
        sources.drain()
    finally:
        sources.close()
    steps = [e for e in server.events() if e["event"] == "request" and e.get("op") == "grad"
             and e.get("peer") is not None and first <= e["peer"] < first + count and window_at <= e["t"] <= window_end]
    passes = len({e["batch_id"] for e in steps if "batch_id" in e})
    requests = sum(counted)
    return {"sources": count, "seconds": round(seconds, 3), "requests": requests,
            "requests_per_s": requests / seconds, "samples_per_s": requests * args.batch_size / seconds,
            "rtt_p50_ms": 1000 * statistics.median(rtts) if rtts else None,
            "requests_per_pass": len(steps) / passes if passes else None}


def main(argv=None) -> int:
    args = parse(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="server-capacity-") as tmp:
        folder = Path(tmp)
        keys = None
        if args.curve:
            from testbed.keys import make_run_keys
            keys = make_run_keys(folder / "keys")
        ids = sum(args.points)
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        for device in devices(args.devices):
            servers = {}
            try:
                for mode in modes:  # all up at once: each point runs the modes back to back
                    servers[mode] = ServerProcess(args, folder, device, mode, ids, keys)
                first = 0
                for count in args.points:
                    for mode in modes:
                        row = {"device": device, "mode": mode, **point(servers[mode], args, first, count, keys)}
                        rows.append(row)
                        print(f"  {device} {mode:10} {count:4} sources: {row['requests_per_s']:8.1f} requests/s "
                              f"{row['samples_per_s']:9.1f} samples/s", file=sys.stderr, flush=True)
                    first += count
            finally:
                for server in servers.values():
                    server.stop()
    print(f"server capacity: module none, {args.model} split {args.split}, {args.batch_size} samples per request, "
          f"{'CURVE' if args.curve else 'plaintext'}, {args.precision}, --server-batch "
          f"{args.server_batch or 'default'}, --threads {args.threads or 'default'}; each source one request in "
          f"flight; {os.cpu_count()} cores")
    print(f"{'device':6} {'train':10} {'sources':>7} {'requests/s':>10} {'samples/s':>10} {'req/pass':>8} "
          f"{'rtt p50 ms':>10} {'window s':>8}")
    for r in rows:
        per_pass = "-" if r["requests_per_pass"] is None else f"{r['requests_per_pass']:.1f}"
        rtt = "-" if r["rtt_p50_ms"] is None else f"{r['rtt_p50_ms']:.1f}"
        print(f"{r['device']:6} {r['mode']:10} {r['sources']:7d} {r['requests_per_s']:10.1f} "
              f"{r['samples_per_s']:10.1f} {per_pass:>8} {rtt:>10} {r['seconds']:8.2f}")
    by = {(r["device"], r["mode"], r["sources"]): r for r in rows}
    for device in dict.fromkeys(r["device"] for r in rows):
        ratios = [f"{n}: {by[device, 'merged', n]['samples_per_s'] / by[device, 'sequential', n]['samples_per_s']:.2f}x"
                  for n in args.points if (device, "merged", n) in by and (device, "sequential", n) in by]
        if ratios:
            print(f"{device}: merged / sequential samples/s, by sources: {', '.join(ratios)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
