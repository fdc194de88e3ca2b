"""Time-varying link capacity from a trace file (``--link-trace``).

Two formats:

- Mahimahi's (``.up``/``.down`` files of the mahimahi emulator, Netravali et al., USENIX
  ATC 2015): one line per delivery opportunity, each a time in milliseconds at which one
  1500-byte packet may cross the link; the same time repeats for several packets in one
  millisecond; the trace repeats when it reaches its end.
- A CSV of ``seconds,Mbit/s`` rows (a header line is allowed): the capacity from that
  time on; the last row's rate holds to the end of the run (no repeat).

Either becomes a :class:`Schedule`: the capacity over intervals of ``BIN_S`` seconds
(Mahimahi: the opportunities in each interval × 1500 bytes), which the link controller
applies to the shaper on time. An interval with no opportunity gets ``FLOOR_BPS``: a
shaper cannot be set to zero, and a link that delivers nothing for a while still keeps
its connections (the floor is recorded with every change, so figures show it).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput
from .values import MIN_RATE_BPS

PACKET_BYTES = 1500   # Mahimahi's delivery opportunity: one MTU-sized packet
BIN_S = 0.1           # the capacity changes at most this often (10 Hz)
FLOOR_BPS = MIN_RATE_BPS
MAX_LINES = 20_000_000


class TraceFileError(BadInput):
    """A trace file that cannot be read; the message names the file and the line."""


@dataclass(frozen=True)
class Schedule:
    """Capacity in bit/s per interval of ``bin_s`` seconds, repeating after the last."""
    name: str
    rates: tuple[int, ...]
    bin_s: float = BIN_S
    repeat: bool = True   # else the last rate holds after the end

    @property
    def period_s(self) -> float:
        return len(self.rates) * self.bin_s

    def rate_at(self, t: float) -> int:
        index = int(t / self.bin_s)
        return self.rates[index % len(self.rates) if self.repeat else min(index, len(self.rates) - 1)]

    def percentile_bps(self, q: float) -> float:
        """The ``q`` quantile of the trace's 1-second mean rates."""
        per_second = max(1, round(1 / self.bin_s))
        seconds = [sum(self.rates[i:i + per_second]) / len(self.rates[i:i + per_second])
                   for i in range(0, len(self.rates), per_second)]
        seconds.sort()
        return seconds[min(len(seconds) - 1, int(q * len(seconds)))]

    @property
    def mean_bps(self) -> float:
        return sum(self.rates) / len(self.rates)


def read_schedule(path: str | Path, bin_s: float = BIN_S) -> Schedule:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TraceFileError(f"--link-trace: cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TraceFileError(f"--link-trace: {path} is not a text file") from None
    lines = [line.strip() for line in text.splitlines()]
    content = [(n, line) for n, line in enumerate(lines, 1) if line and not line.startswith("#")]
    if not content:
        raise TraceFileError(f"--link-trace: {path} holds no delivery times or rates")
    if len(content) > MAX_LINES:
        raise TraceFileError(f"--link-trace: {path} has more than {MAX_LINES} lines")
    if any("," in line for _, line in content[:2]):
        return _csv(path, content, bin_s)
    return _mahimahi(path, content, bin_s)


def _mahimahi(path: Path, content, bin_s: float) -> Schedule:
    times = []
    for n, line in content:
        try:
            ms = int(line)
        except ValueError:
            raise TraceFileError(f"--link-trace: {path} line {n}: {line[:40]!r} is not a time in whole "
                                 "milliseconds (Mahimahi format: one delivery time per line)") from None
        if ms < 0 or (times and ms < times[-1]):
            raise TraceFileError(f"--link-trace: {path} line {n}: times must not decrease and not be negative "
                                 f"(got {ms} after {times[-1] if times else 'the start'})")
        times.append(ms)
    end_ms = max(times[-1], 1)  # Mahimahi repeats the trace after its last time
    bins = max(1, math.ceil(end_ms / (bin_s * 1000) - 1e-9))  # a last part-bin is a bin: no packet moves
    counts = [0] * bins
    for ms in times:
        counts[min(bins - 1, int(ms / 1000 / bin_s))] += 1
    rates = tuple(max(FLOOR_BPS, round(c * PACKET_BYTES * 8 / bin_s)) for c in counts)
    return Schedule(path.name, rates, bin_s)


def _csv(path: Path, content, bin_s: float) -> Schedule:
    points = []
    for index, (n, line) in enumerate(content):
        row = next(csv.reader([line]))
        try:
            seconds, mbit = float(row[0]), float(row[1])
        except (ValueError, IndexError):
            if index == 0:
                continue  # a header
            raise TraceFileError(f"--link-trace: {path} line {n}: expected seconds,Mbit/s, got {line[:40]!r}") from None
        if seconds < 0 or mbit < 0 or (points and seconds <= points[-1][0]):
            raise TraceFileError(f"--link-trace: {path} line {n}: times must increase and rates not be negative")
        points.append((seconds, mbit))
    if not points:
        raise TraceFileError(f"--link-trace: {path} has no seconds,Mbit/s rows")
    if points[0][0] != 0:
        points.insert(0, (0.0, points[0][1]))
    bins = max(1, round(points[-1][0] / bin_s) + 1)  # the last row's rate, then it holds
    rates, k = [], 0
    for b in range(bins):
        t = b * bin_s
        while k + 1 < len(points) and points[k + 1][0] <= t + 1e-9:
            k += 1
        rates.append(max(FLOOR_BPS, round(points[k][1] * 1e6)))
    return Schedule(path.name, tuple(rates), bin_s, repeat=False)
