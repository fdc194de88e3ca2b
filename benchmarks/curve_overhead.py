"""What CURVE adds per message at the default benchmark settings.

    python benchmarks/curve_overhead.py [--batch-size 16] [--budget 4] [--repeats 300]

For the none and filter modules (VGG11 split after block 2, the real messages of one
training step, as benchmarks/protocol_overhead.py builds them) it prints, per message,
the bytes on the TCP stream without and with CURVE (protocol.stream_bytes, which a test
checks against a counting relay), the bytes CURVE adds, and the microseconds it adds:
the median one-way time over a real loopback ZeroMQ connection with CURVE (encrypt at
the sender, decrypt at the receiver) minus the same without. Then the traffic ratio
none/filter per step and wire bytes over payload, with and without CURVE.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol_overhead import step_messages  # noqa: E402

from testbed.keys import make_run_keys  # noqa: E402
from workloads import protocol, security  # noqa: E402


def pair(keys: Path | None):
    ctx = zmq.Context.instance()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    auth = None
    if keys is not None:
        auth = security.serve_securely(router, security.load(keys, "server"))
        security.connect_securely(dealer, security.load(keys, "source"))
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"")
    identity = router.recv_multipart()[0]
    return router, dealer, identity, auth


def one_way_us(frames, keys, repeats: int, upstream: bool) -> float:
    """Median of half the round trip of ``frames`` out and an empty frame back."""
    router, dealer, identity, auth = pair(keys)
    times = []
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            if upstream:
                dealer.send_multipart(frames, copy=False)
                router.recv_multipart(copy=False)
            else:
                router.send_multipart([identity] + frames, copy=False)
                dealer.recv_multipart(copy=False)
            times.append(time.perf_counter() - start)
    finally:
        router.close(0)
        dealer.close(0)
        if auth is not None:
            auth.stop()
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--budget", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    keys = make_run_keys(Path(tempfile.mkdtemp()))
    print(f"VGG11 split after block 2, batch {args.batch_size}, filter budget {args.budget} of 128 maps, "
          f"{args.repeats} repeats; zmq {zmq.zmq_version()}, one frame per message")
    print(f"{'module':<8}{'message':<9}{'payload B':>11}{'plain B':>10}{'CURVE B':>10}{'+B':>5}"
          f"{'plain us':>10}{'CURVE us':>10}{'+us':>8}")
    wire = {False: {}, True: {}}
    payloads = {}
    for module in ("none", "filter"):
        request, reply = step_messages(module, args.batch_size, args.budget)
        payloads[module] = 0
        for curve in (False, True):
            wire[curve][module] = 0
        for name, message in (("request", request), ("reply", reply)):
            frames = protocol.encode(message)
            payload = protocol.payload_bytes(frames)
            plain, sealed = protocol.stream_bytes(frames), protocol.stream_bytes(frames, curve=True)
            payloads[module] += payload
            wire[False][module] += plain
            wire[True][module] += sealed
            t_plain = one_way_us(frames, None, args.repeats, name == "request")
            t_curve = one_way_us(frames, keys, args.repeats, name == "request")
            print(f"{module:<8}{name:<9}{payload:>11}{plain:>10}{sealed:>10}{sealed - plain:>5}"
                  f"{t_plain:>10.0f}{t_curve:>10.0f}{t_curve - t_plain:>8.0f}")
    for curve in (False, True):
        label = "CURVE" if curve else "plain"
        ratio = wire[curve]["none"] / wire[curve]["filter"]
        print(f"{label}: traffic ratio none/filter per step {ratio:.2f}x (limit {128 / args.budget:.0f}x); "
              f"wire/payload per step: none {wire[curve]['none'] / payloads['none']:.4f}, "
              f"filter {wire[curve]['filter'] / payloads['filter']:.4f}")


if __name__ == "__main__":
    main()
