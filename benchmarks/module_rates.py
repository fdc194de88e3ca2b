"""Bytes per sample and encode/decode time per batch of every compression module.

    python benchmarks/module_rates.py [--batch-size 16] [--repeats 20]

Each module at its default knob on the default model (VGG11, split after block 2;
split 0 for the input-compression modules) and CIFAR-shaped synthetic data. Bytes
are those of the real training request on the wire (header, arrays, labels, ZMTP
framing), after anything a module sends once (cdc's decoder, mcr2's entropy model);
encode is the source part's forward + encode, decode the server part's. cdc and mcr2
first train on 16 batches of their own (as a source does before it streams).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from workloads import protocol
from workloads.compression import CompressionConfig, available, create_server, create_source, get
from workloads.data import synthetic_dataset, to_tensor_batch
from workloads.models import build_split_model
from workloads.protocol import Message
from workloads.trace import TraceWriter


def measure(module: str, x: torch.Tensor, labels: np.ndarray, repeats: int, shard) -> dict:
    split = 0 if get(module).input_only else 2
    model = build_split_model("vgg11", split, 10)
    config = CompressionConfig()
    source, server = create_source(module, model.cut_shape, config), create_server(module, model.cut_shape, config)
    with TraceWriter(os.devnull, run="bench", role="source", source=0) as trace:  # cdc, mcr2 train here first
        source.prepare(model.head, shard, trace)
    model.head.eval()
    source.eval()
    server.eval()
    with torch.no_grad():
        maps = model.head(x)
        encode_s, decode_s = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            arrays = source.encode(*source(maps))
            encode_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            server.decode(arrays, torch.device("cpu"))
            decode_s.append(time.perf_counter() - start)
    frames = protocol.encode(Message("train", {"seq": 1, "epoch": 0, "batch": 0, "lr_scale": 1.0, "want_grad": True},
                                     {**arrays, "labels": labels}))
    return {"split": split, "wire": protocol.stream_bytes(frames) / len(labels),
            "payload": protocol.payload_bytes(frames) / len(labels),
            "encode_ms": statistics.median(encode_s) * 1e3, "decode_ms": statistics.median(decode_s) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    data = synthetic_dataset(train_size=16 * args.batch_size, test_size=0).train
    x, labels = to_tensor_batch(data.images[:args.batch_size]), data.labels[:args.batch_size].astype(np.uint8)

    def shard():  # what a source trains on before it streams (cdc's autoencoder, mcr2's phase 1)
        for i in range(0, len(data.labels), args.batch_size):
            yield to_tensor_batch(data.images[i:i + args.batch_size]), torch.from_numpy(data.labels[i:i + args.batch_size])
    print(f"batch {args.batch_size}, default knobs, median of {args.repeats}; bytes per sample of the training request")
    print(f"{'module':<9}{'split':>6}{'wire B/sample':>15}{'payload B/sample':>18}{'encode ms/batch':>17}{'decode ms/batch':>17}")
    for module in available():
        m = measure(module, x, labels, args.repeats, shard)
        print(f"{module:<9}{m['split']:>6}{m['wire']:>15.1f}{m['payload']:>18.1f}{m['encode_ms']:>17.2f}{m['decode_ms']:>17.2f}")


if __name__ == "__main__":
    main()
