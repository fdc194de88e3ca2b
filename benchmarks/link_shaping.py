"""How exactly the emulated links deliver the rate they are given.

For each rate, a bulk TCP transfer through the real network the testbed builds
(namespaces, veths, htb; IFB for a shared medium) and the wire rate it reached, from
the source's interface counters (every header counted, offload off):

    python benchmarks/link_shaping.py [--seconds 4] [--rates 1mbit,5mbit,20mbit,100mbit]

Needs the rights to make network namespaces (root). Prints one row per rate and medium:
the configured rate, the wire rate the sources' interfaces sent (on a shared channel this
includes packets its queue dropped and TCP sent again), their ratio, and the goodput the
server received, all over the time the slowest flow took.
"""
from __future__ import annotations

import argparse
import socket
import threading
import time

from testbed.links.network import SERVER_ADDRESS, Network, inside, probe_kernel
from testbed.links.plan import plan_links
from testbed.links.values import parse_rate


def bulk(net: Network, sources: list[int], seconds: float) -> dict[int, tuple[float, float]]:
    """Every source in ``sources`` sends to the server for ``seconds`` at once; per source
    (wire bit/s from its counters, goodput bit/s)."""
    with inside(net.server_ns):
        listener = socket.create_server((SERVER_ADDRESS, 0), backlog=len(sources))
    port = listener.getsockname()[1]
    received: dict[int, int] = {}

    def drain(conn, key):
        total = 0
        while chunk := conn.recv(1 << 16):
            total += len(chunk)
        received[key] = total
        conn.close()

    def accept():
        for _ in sources:
            conn, (address, _) = listener.accept()
            threading.Thread(target=drain, args=(conn, int(address.split(".")[-1]) - 10), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    payload = b"x" * (1 << 16)
    before = {i: net.counters(i) for i in sources}
    result = {}

    def send(i):
        with inside(net.source_ns[i]):
            conn = socket.create_connection((SERVER_ADDRESS, port))
        end = time.monotonic() + seconds
        started = time.monotonic()
        while time.monotonic() < end:
            conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)
        elapsed = time.monotonic() - started
        after = net.counters(i)
        result[i] = elapsed, after["tx_bytes"] - before[i]["tx_bytes"]
        conn.close()
    threads = [threading.Thread(target=send, args=(i,)) for i in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(0.2)
    listener.close()
    window = max(elapsed for elapsed, _ in result.values())  # every flow over the same time
    return {i: (result[i][1] * 8 / window, received.get(i, 0) * 8 / window) for i in sources}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rates", default="1mbit,5mbit,20mbit,100mbit")
    args = parser.parse_args()
    kernel = probe_kernel()
    if kernel["rights"] is not True:
        raise SystemExit(f"link_shaping: {kernel['rights']}")
    print(f"{'rate':>9} {'medium':>10} {'flows':>5} {'wire Mbit/s':>12} {'wire/rate':>9} {'goodput Mbit/s':>15}")
    for rate in args.rates.split(","):
        bps = parse_rate(rate)
        for medium, flows, share in (("dedicated", 1, 1), ("shared", 2, 2)):
            net = Network(plan_links({"bandwidth": rate, "medium": medium}, 2), netem=False)
            try:
                net.build()
                measured = bulk(net, list(range(flows)), args.seconds)
            finally:
                net.remove()
            wire = sum(w for w, _ in measured.values())
            good = sum(g for _, g in measured.values())
            # a shared half-duplex channel also carries the ACKs of every flow
            print(f"{rate:>9} {medium:>10} {flows:>5} {wire / 1e6:>12.3f} {wire / bps:>9.3f} {good / 1e6:>15.3f}"
                  + (f"   per flow {', '.join(f'{w / 1e6:.2f}' for w, _ in measured.values())}" if share > 1 else ""))


if __name__ == "__main__":
    main()
