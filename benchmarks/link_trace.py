"""How closely a trace-driven link delivers its trace's capacity, second by second.

One source behind a dedicated link whose uplink follows the trace (the real network and
the real link controller of a run), saturated by a bulk TCP upload; the source's
interface counters per second against the capacity the controller set:

    python benchmarks/link_trace.py TRACE [--seconds 60]

e.g. ``../shared/traces/Verizon-LTE-short.up``. Prints the correlation (Pearson) and the
mean absolute error of delivered against capacity per second, and the means. Needs the
rights to make network namespaces (root).
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from testbed.links.arm import ArmLinks
from testbed.links.network import SERVER_ADDRESS, inside, probe_kernel
from testbed.links.plan import plan_links


def upload(links: ArmLinks, seconds: float) -> None:
    with inside(links.network.server_ns):
        listener = socket.create_server((SERVER_ADDRESS, 0))
    port = listener.getsockname()[1]

    def drain():
        conn, _ = listener.accept()
        while conn.recv(1 << 16):
            pass
        conn.close()
    threading.Thread(target=drain, daemon=True).start()
    with inside(links.network.source_ns[0]):
        conn = socket.create_connection((SERVER_ADDRESS, port))
    payload, end = b"x" * (1 << 16), time.monotonic() + seconds
    while time.monotonic() < end:
        conn.sendall(payload)
    conn.close()
    listener.close()


def per_second(events: list[dict], start: float, seconds: int) -> tuple[list[float], list[float]]:
    """(capacity, delivered) in Mbit/s for each whole second after ``start``."""
    caps = [(e["t"], e["bps"]) for e in events if e["event"] == "capacity" and e["direction"] == "up"]
    samples = [(e["t"], e["tx_bytes"]) for e in events if e["event"] == "sample"]

    def counter_at(t):  # linear between samples
        for (t0, b0), (t1, b1) in zip(samples, samples[1:]):
            if t0 <= t <= t1:
                return b0 + (b1 - b0) * (t - t0) / (t1 - t0)
        raise ValueError("no sample around that time")

    def capacity(t0, t1, steps=100):  # the time-weighted mean of the step function
        total = 0.0
        for k in range(steps):
            t = t0 + (k + 0.5) * (t1 - t0) / steps
            total += [bps for when, bps in caps if when <= t][-1]
        return total / steps / 1e6

    cap, got = [], []
    for s in range(1, seconds):  # the first second: TCP's slow start
        t0, t1 = start + s, start + s + 1
        cap.append(capacity(t0, t1))
        got.append((counter_at(t1) - counter_at(t0)) * 8 / 1e6)
    return cap, got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    kernel = probe_kernel()
    if kernel["rights"] is not True:
        raise SystemExit(f"link_trace: {kernel['rights']}")
    folder = Path(tempfile.mkdtemp(prefix="link-trace-"))
    links = ArmLinks(plan_links({"link_trace": args.trace}, 1), kernel, folder)
    try:
        links.build()
        controller = subprocess.Popen([sys.executable, "-m", "testbed.links.controller", *links.controller_argv()])
        time.sleep(0.5)
        start = time.time()
        upload(links, args.seconds)
        links.stop_controller(controller)
    finally:
        links.remove()
    events = [json.loads(line) for line in (folder / "link.jsonl").read_text().splitlines()]
    cap, got = per_second(events, start, int(args.seconds))
    mae = statistics.fmean(abs(c - g) for c, g in zip(cap, got))
    print(f"trace {Path(args.trace).name}: {len(cap)} s of a saturating upload")
    print(f"  correlation (per second, delivered vs capacity): {statistics.correlation(cap, got):.3f}")
    print(f"  mean absolute error: {mae:.3f} Mbit/s")
    print(f"  mean capacity {statistics.fmean(cap):.3f} Mbit/s, mean delivered {statistics.fmean(got):.3f} Mbit/s "
          f"(wire bytes, headers included)")


if __name__ == "__main__":
    main()
