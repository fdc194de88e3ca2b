"""The link controller of one arm: ``python -m testbed.links.controller PLAN.json``.

A small process the testbed starts right before the sources and stops after them. It

- records every shaper's rate as a ``capacity`` event when it starts;
- for a trace-driven link (``--link-trace``), sets each shaper's htb rate on the
  trace's schedule (every ``bin_s``, only when the rate changes) and records each change;
- samples every source's interface counters every ``sample_s`` (``sample`` events).

Events go to the arm's ``link.jsonl`` (declared in workloads/events.py). It runs until
SIGTERM or SIGINT, then records a last sample and exits 0.

PLAN.json: ``{"out": path, "sample_s": s, "shapers": [{namespace, device, direction,
source, bps}], "schedules": {"up"|"down"|"both": {"rates": [...], "bin_s": s, "repeat": bool}},
"sources": [{"source": i, "namespace": ns}]}``.
"""
from __future__ import annotations

import json
import signal
import sys
import time

from workloads import events

from .network import _burst, _index, _ipr, _rate
from .schedule import Schedule

SAMPLE_S = 0.25


class Controller:
    def __init__(self, plan: dict):
        self.plan = plan
        self.out = open(plan["out"], "a", buffering=1, encoding="utf-8")
        self.sample_s = float(plan.get("sample_s") or SAMPLE_S)
        self.schedules = {d: Schedule(d, tuple(s["rates"]), s["bin_s"], s.get("repeat", True))
                          for d, s in (plan.get("schedules") or {}).items()}
        self.sockets = {}
        self.stopping = False

    def _ip(self, namespace: str):
        if namespace not in self.sockets:
            self.sockets[namespace] = _ipr(namespace)
        return self.sockets[namespace]

    def event(self, kind: str, **fields) -> None:
        events.check(events.ROLE_LINK, kind)
        self.out.write(json.dumps({"t": round(time.time(), 6), "event": kind, **fields}, separators=(",", ":")) + "\n")

    def run(self) -> None:
        shapers = self.plan["shapers"]
        for shaper in shapers:
            self.event(events.CAPACITY, direction=shaper["direction"], source=shaper["source"], bps=shaper["bps"])
        start = time.monotonic()
        bins = [s.bin_s for s in self.schedules.values()]
        tick = min([self.sample_s, *bins])
        next_sample = start
        step = 0
        while not self.stopping:
            now = time.monotonic() - start
            for shaper in shapers:
                schedule = self.schedules.get(shaper["direction"])
                if schedule is None:
                    continue
                bps = schedule.rate_at(now)
                if bps != shaper["bps"]:
                    self._set_rate(shaper, bps)
            if time.monotonic() >= next_sample:
                self.sample()
                next_sample += self.sample_s
            step += 1
            time.sleep(max(0.0, start + step * tick - time.monotonic()))
        self.sample()

    def _set_rate(self, shaper: dict, bps: int) -> None:
        ip = self._ip(shaper["namespace"])
        ip.tc("change-class", "htb", index=_index(ip, shaper["device"]), handle="1:10", parent="1:",
              rate=_rate(bps), ceil=_rate(bps), burst=_burst(bps), cburst=_burst(bps))
        shaper["bps"] = bps
        self.event(events.CAPACITY, direction=shaper["direction"], source=shaper["source"], bps=bps)

    def sample(self) -> None:
        for source in self.plan["sources"]:
            ip = self._ip(source["namespace"])
            stats = ip.get_links(_index(ip, "eth0"))[0].get_attr("IFLA_STATS64")
            self.event(events.SAMPLE, source=source["source"], tx_bytes=int(stats["tx_bytes"]),
                       rx_bytes=int(stats["rx_bytes"]))

    def close(self) -> None:
        for ip in self.sockets.values():
            ip.close()
        self.out.close()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m testbed.links.controller PLAN.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        controller = Controller(json.load(f))

    def stop(_signum, _frame):
        controller.stopping = True
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        controller.run()
    finally:
        controller.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
