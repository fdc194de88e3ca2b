"""Adaptive compression (issue 13): policies that pick a module's level for the next
interval from what the source measured in the last ones.

A level is an index into the module's levels, ordered from the most compression to the
least (the filter family: budgets 1 .. all maps; cdc: mask numbers 4 .. 0; jpeg/webp:
qualities low .. high). Each interval the source reports a :class:`Measurement` (its own
requests' bytes and their time, and the samples/s it achieved); a policy answers with a
:class:`Decision`: the level, and the reason in words with the numbers behind it. A
policy holds no clock and draws no random number: the same measurements give the same
decisions.

Policies (``POLICIES``, a registry like the modules'):

- ``threshold``: step one level towards more compression when samples/s falls below the
  target by more than the hysteresis, one level towards less when it rises above it by
  more; never sooner than ``dwell`` intervals after the last change.
- ``harmonic``: predict the next interval's bandwidth as the harmonic mean of the last
  ``window`` intervals' (as adaptive-bitrate players do: one slow interval weighs more
  than one fast one), predict each level's samples/s from its bytes per sample and the
  compute time per sample, and pick the least compression that meets the target.

Not wired into the programs yet: ``--adapt POLICY`` comes next.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class Measurement:
    """One interval of one source: bytes its requests and replies carried, the seconds
    they spent on the network (request sent to reply received, less the server's time),
    the seconds it computed, and the samples it trained."""
    bytes: int
    network_s: float
    compute_s: float
    samples: int

    @property
    def samples_per_s(self) -> float:
        total = self.network_s + self.compute_s
        return self.samples / total if total > 0 else 0.0

    @property
    def bandwidth_bps(self) -> float:
        return 8 * self.bytes / self.network_s if self.network_s > 0 else float("inf")


@dataclass(frozen=True)
class Decision:
    level: int
    reason: str


class Policy:
    """Picks the next level; ``levels`` (most compression first) with each level's bytes
    per sample, ``target`` in samples/s."""
    name = ""

    def __init__(self, bytes_per_sample: Sequence[float], target: float, start: int | None = None):
        if not bytes_per_sample:
            raise ValueError("a policy needs at least one level")
        if target <= 0:
            raise ValueError(f"the target must be positive samples/s, got {target}")
        self.bytes_per_sample, self.target = list(bytes_per_sample), target
        self.level = len(bytes_per_sample) - 1 if start is None else start  # least compression first
        self.history: list[Measurement] = []

    def decide(self, measured: Measurement) -> Decision:
        self.history.append(measured)
        decision = self._decide(measured)
        self.level = decision.level
        return decision

    def _decide(self, measured: Measurement) -> Decision:
        raise NotImplementedError


class Threshold(Policy):
    name = "threshold"

    def __init__(self, bytes_per_sample, target, start=None, hysteresis: float = 0.1, dwell: int = 2):
        super().__init__(bytes_per_sample, target, start)
        self.hysteresis, self.dwell, self.since_change = hysteresis, dwell, dwell

    def _decide(self, measured: Measurement) -> Decision:
        rate, low, high = measured.samples_per_s, self.target * (1 - self.hysteresis), self.target * (1 + self.hysteresis)
        self.since_change += 1
        level = self.level
        if self.since_change >= self.dwell and rate < low and level > 0:
            level, why = level - 1, f"{rate:.1f} samples/s < {low:.1f} (target less {self.hysteresis:.0%}): more compression"
        elif self.since_change >= self.dwell and rate > high and level < len(self.bytes_per_sample) - 1:
            level, why = level + 1, f"{rate:.1f} samples/s > {high:.1f} (target plus {self.hysteresis:.0%}): less compression"
        elif self.since_change < self.dwell:
            why = f"{rate:.1f} samples/s; holding: {self.since_change} of {self.dwell} intervals since the last change"
        else:
            why = f"{rate:.1f} samples/s within [{low:.1f}, {high:.1f}] or at the end of the levels: holding"
        if level != self.level:
            self.since_change = 0
        return Decision(level, why)


class Harmonic(Policy):
    name = "harmonic"

    def __init__(self, bytes_per_sample, target, start=None, window: int = 5):
        super().__init__(bytes_per_sample, target, start)
        self.window = window

    def _decide(self, measured: Measurement) -> Decision:
        recent = [m for m in self.history[-self.window:] if m.network_s > 0 and m.bytes > 0]
        if not recent:
            return Decision(self.level, "no network time measured yet: holding")
        bandwidth = len(recent) / sum(1 / m.bandwidth_bps for m in recent)
        compute = sum(m.compute_s for m in recent) / sum(m.samples for m in recent)
        predicted = [1 / (compute + 8 * b / bandwidth) for b in self.bytes_per_sample]
        meeting = [i for i, p in enumerate(predicted) if p >= self.target]
        level = max(meeting) if meeting else 0
        why = (f"bandwidth {bandwidth / 1e6:.2f} Mbit/s (harmonic mean of {len(recent)}), compute "
               f"{1000 * compute:.1f} ms/sample: level {level} predicts {predicted[level]:.1f} samples/s"
               + ("" if meeting else f", below the target {self.target:g} at every level: the most compression"))
        return Decision(level, why)


POLICIES: dict[str, Callable[..., Policy]] = {p.name: p for p in (Threshold, Harmonic)}


def create_policy(name: str, bytes_per_sample: Sequence[float], target: float, **options) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown adaptation policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    return POLICIES[name](bytes_per_sample, target, **options)
