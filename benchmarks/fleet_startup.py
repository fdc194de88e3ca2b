"""Sources forked from a warm parent against sources exec'd: start-up and memory.

For each fleet size and each ``--spawn`` method, one real ``testbed run`` (the local
backend: cgroup caps, CURVE, the arm ``none`` unless told otherwise) while this script
samples, about every second, the memory of every process of the run from /proc:

- each source's own memory: USS (the pages only it maps) and PSS (its own plus its share
  of what it shares), at their peak over the run, then the median and the max over the
  sources; the peak of what the kernel charged to its memory cgroup (the testbed's
  ``memory`` event) beside them;
- the run's total: the sum of the PSS of all its processes (testbed, launcher, server,
  sources) at its peak, and how much the machine's used memory rose over what it was
  before the run;
- start-up: each source's process start (its fork, or the fork before its exec) to the end
  of its first batch, from the run's summary (``startup_s_per_source``), median and max;
  and for fork, how long the launcher took to import (its log), once per arm.

    python benchmarks/fleet_startup.py                      # 2 sources at 0.4 CPU, 32 at 0.05
    python benchmarks/fleet_startup.py --fleets 64:0.02,128:0.01 --spawn fork

Prints one table. Nothing is asserted: these are measurements.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
MB = 2**20


def sources_started(arm: Path) -> dict[int, int]:
    """Source id -> pid, from the start events written so far."""
    found = {}
    for trace in arm.glob("source-*.jsonl"):
        try:
            line = trace.open().readline()
            event = json.loads(line)
        except (OSError, ValueError):
            continue
        if event.get("event") == "start":
            found[int(event["source"])] = int(event["pid"])
    return found


class Sampler(threading.Thread):
    """Samples the run's processes until stopped."""

    def __init__(self, testbed: subprocess.Popen, arm: Path, period_s: float):
        super().__init__(daemon=True)
        self.testbed, self.arm, self.period_s = testbed, arm, period_s
        self.uss: dict[int, int] = {}
        self.pss: dict[int, int] = {}
        self.total_pss = 0
        self.baseline = psutil.virtual_memory().used
        self.used_rise = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            self.sample()
            self.stopping.wait(max(0.0, self.period_s - (time.monotonic() - started)))

    def sample(self) -> None:
        pids = sources_started(self.arm)
        try:
            tree = [psutil.Process(self.testbed.pid), *psutil.Process(self.testbed.pid).children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        by_pid = {}
        for proc in tree:
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            total += info.pss
            by_pid[proc.pid] = info
        for source, pid in pids.items():
            info = by_pid.get(pid)
            if info is not None:
                self.uss[source] = max(self.uss.get(source, 0), info.uss)
                self.pss[source] = max(self.pss.get(source, 0), info.pss)
        self.total_pss = max(self.total_pss, total)
        self.used_rise = max(self.used_rise, psutil.virtual_memory().used - self.baseline)


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.1f} / {max(values):.1f}"


def measure(sources: int, cpu: float, spawn: str, args, root: Path) -> dict:
    out = root / f"{spawn}-{sources}"
    command = [sys.executable, "-m", "testbed.cli", "run", "--sources", str(sources), "--cpu", str(cpu),
               "--spawn", spawn, "--module", args.module, "--batches", str(args.batches), "--epochs", "1",
               "--out", str(out), "--quiet", *args.extra]
    started = time.monotonic()
    testbed = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(testbed, out / args.module, args.period)
    sampler.start()
    _, err = testbed.communicate()
    sampler.stopping.set()
    sampler.join()
    wall = time.monotonic() - started
    row = {"spawn": spawn, "sources": sources, "cpu": cpu, "exit": testbed.returncode, "wall_s": wall}
    if testbed.returncode not in (0, 3):
        row["error"] = err.strip().splitlines()[-1] if err.strip() else "no output"
        return row
    arm = json.loads((out / "summary.json").read_text())["arms"][args.module]
    row.update(startup=[v for v in arm["startup_s_per_source"] if v is not None],
               uss=[v / MB for v in sampler.uss.values()], pss=[v / MB for v in sampler.pss.values()],
               charged=[v for v in arm.get("memory_peak_mb_per_source") or [] if v is not None],
               total_pss=sampler.total_pss / MB, used_rise=sampler.used_rise / MB,
               samples_per_s=statistics.fmean(v for v in arm["samples_per_s_per_source"] if v is not None),
               bound_by=arm.get("bound_by"), sampled=len(sampler.uss))
    log = out / args.module / "logs" / "launcher.log"
    if log.exists():
        found = re.search(r"imported in ([0-9.]+) s", log.read_text())
        row["launcher_s"] = float(found.group(1)) if found else None
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fleets", default="2:0.4,32:0.05", help="SOURCES:CPU,... (default: 2:0.4,32:0.05)")
    parser.add_argument("--spawn", default="fork,exec", help="methods to compare (default: fork,exec)")
    parser.add_argument("--module", default="none")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--period", type=float, default=1.0, help="seconds between memory samples")
    parser.add_argument("extra", nargs="*", help="more testbed run arguments, after --")
    args = parser.parse_args(argv)
    fleets = [(int(n), float(c)) for n, c in (item.split(":") for item in args.fleets.split(","))]
    rows = []
    with tempfile.TemporaryDirectory(prefix="fleet-startup-") as root:
        for sources, cpu in fleets:
            for spawn in args.spawn.split(","):
                print(f"measuring {sources} sources at {cpu} CPU, --spawn {spawn} ...", file=sys.stderr, flush=True)
                rows.append(measure(sources, cpu, spawn, args, Path(root)))
    header = ("spawn", "sources", "cpu", "start-up s (median / max)", "USS MiB (median / max)",
              "PSS MiB (median / max)", "cgroup peak MiB (median / max)", "run's PSS MiB", "used rise MiB",
              "launcher import s", "samples/s per source", "bound by", "wall s", "exit")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        if "error" in r:
            print(f"| {r['spawn']} | {r['sources']} | {r['cpu']} | {r['error']} |" + " |" * (len(header) - 4))
            continue
        print(f"| {r['spawn']} | {r['sources']} | {r['cpu']} | {spread(r['startup'])} | {spread(r['uss'])} | "
              f"{spread(r['pss'])} | {spread(r['charged'])} | {r['total_pss']:.0f} | {r['used_rise']:.0f} | "
              f"{r.get('launcher_s') if r.get('launcher_s') is not None else '-'} | {r['samples_per_s']:.2f} | "
              f"{r['bound_by']} | {r['wall_s']:.0f} | {r['exit']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
