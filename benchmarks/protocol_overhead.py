"""Protocol overhead and encode/decode cost per message at the default settings.

    python benchmarks/protocol_overhead.py [--batch-size 16] [--budget 4] [--repeats 2000]

For each module and direction it builds the real message of one training step
(VGG11 split after block 2, CIFAR-sized input; the reply with the server's times), then
prints the wire bytes (the frame plus ZMTP framing) over the tensor payload, in plaintext
and with CURVE, the time to encode and decode it, and the round-trip time of the step's
two messages over a real loopback ZeroMQ link.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import zmq

from workloads import protocol
from workloads.compression import CompressionConfig, create_server, create_source
from workloads.models import build_split_model
from workloads.protocol import Message

# what a server's reply says of its request (workloads/server.py), at typical magnitudes
SERVER_TIMES = {"queue_s": 0.000412, "server_decode_s": 0.001234, "server_compute_s": 0.253107,
                "server_encode_s": 0.002046, "arrived_at": 1767225600.123456, "replied_at": 1767225600.380245}


def step_messages(module: str, batch_size: int, budget: int) -> tuple[Message, Message]:
    model = build_split_model("vgg11", 2, 10)
    config = CompressionConfig(budget=budget)
    source, server = create_source(module, model.cut_shape, config), create_server(module, model.cut_shape, config)
    sent, side = source(model.head(torch.randn(batch_size, 3, 32, 32)))
    arrays = {**source.encode(sent, side), "labels": np.zeros(batch_size, np.uint8)}
    request = Message("train", {"seq": 12345, "epoch": 3, "batch": 31, "lr_scale": 1.0, "want_grad": True}, arrays)
    leaf, restored = server.decode(arrays, torch.device("cpu"))
    restored.sum().backward()
    times = protocol.times_field(SERVER_TIMES)  # with seq, what the server adds to every reply
    reply = Message("grad", {"loss": 2.302585, "correct": 16, "times": times, "seq": 12345}, server.encode_grad(leaf))
    return request, reply


def time_codec(message: Message, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        protocol.decode(protocol.encode(message))
    return (time.perf_counter() - start) / repeats


def loopback_round_trip(request: Message, reply: Message, repeats: int) -> float:
    ctx = zmq.Context.instance()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    reply_frames = protocol.encode(reply)
    times = []
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            dealer.send_multipart(protocol.encode(request), copy=False)
            frames = router.recv_multipart(copy=False)
            protocol.decode(frames[1:])
            router.send_multipart([frames[0]] + reply_frames, copy=False)
            protocol.decode(dealer.recv_multipart(copy=False))
            times.append(time.perf_counter() - start)
    finally:
        router.close(0)
        dealer.close(0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--budget", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2000)
    args = parser.parse_args()
    print(f"VGG11 split after block 2, batch {args.batch_size}, filter budget {args.budget} of 128 maps, "
          f"{args.repeats} repeats")
    print(f"{'module':<8}{'message':<9}{'payload B':>11}{'wire B':>9}{'wire/payload':>14}{'CURVE B':>9}"
          f"{'CURVE w/p':>11}{'enc+dec us':>12}{'loopback RTT us':>17}")
    totals = {}
    for module in ("none", "filter"):
        request, reply = step_messages(module, args.batch_size, args.budget)
        rtt = loopback_round_trip(request, reply, max(50, args.repeats // 10))
        wire_sum = sealed_sum = payload_sum = 0
        for name, message in (("request", request), ("reply", reply)):
            frames = protocol.encode(message)
            payload, wire = protocol.payload_bytes(frames), protocol.stream_bytes(frames)
            sealed = protocol.stream_bytes(frames, curve=True)
            wire_sum, sealed_sum, payload_sum = wire_sum + wire, sealed_sum + sealed, payload_sum + payload
            micros = time_codec(message, args.repeats) * 1e6
            print(f"{module:<8}{name:<9}{payload:>11}{wire:>9}{wire / payload:>14.4f}{sealed:>9}"
                  f"{sealed / payload:>11.4f}{micros:>12.1f}")
        totals[module] = wire_sum
        print(f"{module:<8}{'step':<9}{payload_sum:>11}{wire_sum:>9}{wire_sum / payload_sum:>14.4f}{sealed_sum:>9}"
              f"{sealed_sum / payload_sum:>11.4f}{'':>12}{rtt * 1e6:>17.0f}")
    print(f"traffic ratio none/filter per training step: {totals['none'] / totals['filter']:.2f}x "
          f"(limit {128 / args.budget:.0f}x for {args.budget} of 128 maps)")


if __name__ == "__main__":
    main()
