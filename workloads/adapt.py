"""Adaptive compression (``--adapt POLICY``): a controller inside each source that picks
its compression module's level for the next interval from what the source measured in
the last ones, to meet a target (``--target`` samples/s, or ``--target-latency`` seconds
per training step) with the least compression that meets it.

A module with a level declares it in its registry entry (``registry.Levels``): the
filter family's budget (maps sent), cdc's mask number, jpeg's and webp's quality. Its
levels are ordered from the most compression to the least; a policy speaks of indices
into that order.

Every ``--adapt-interval`` seconds of training steps the source closes an interval: a
:class:`Measurement` of its own requests (bytes both ways, the seconds they spent on the
network: round trip less the server's time and queue, the rest of the steps' time, the
samples). The policy answers with a :class:`Decision`: the level, and the reason in words
with the numbers behind it. A change takes effect at the next step, through the module's
own mechanism (the filter's budget change with the lr boost of paper 002, cdc's
fine-tuning from the current weights, a codec's quality). It is limited in rate so that
accuracy is not thrashed: more compression is taken at once (the link will not wait),
less only ``--adapt-dwell`` intervals after the last change. The controller starts at the
least compression (``--budget`` is then the lowest budget; ``--quality`` and
``--mask-number`` give way to the levels).

A policy holds no clock and draws no random number: the same measurements give the
same decisions (the source traces each interval's inputs with its decision, so a run's
decisions can be replayed: :func:`replay`).

Policies (``POLICIES``, a registry like the modules'):

- ``threshold``: one level towards more compression when samples/s falls below the
  target by more than the hysteresis; one towards less when it is above it by more and
  the next level, its network time per sample scaled by its bytes, would still meet it.
- ``harmonic``: predict the next interval's bandwidth as the harmonic mean of the last
  ``window`` intervals' (as adaptive-bitrate players do: one slow interval weighs more
  than one fast one), or the last interval's where that is lower (a drop counts at once,
  a recovery only as the window fills with it), predict each level's samples/s from its
  bytes per sample and the time per sample off the network, and pick the least
  compression that meets the target.

Nothing here needs the testbed: on Kubernetes the same controller runs in the source pods.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from .option import Option

SOURCE = ("source",)


def _policy_choices() -> list[str]:
    return ["", *policy_names()]


def _levels(text: str):
    return parse_levels(text)


# The options of adaptation, declared here (workloads.settings lists them with the core's;
# --adapt itself below the policies, whose names its help lists); the policies' defaults are theirs.
TARGET = Option("target", float, 0.0, "what --adapt aims at: samples/s per source", SOURCE, min=0,
                chart="workload.target", group="adapt")
TARGET_LATENCY = Option("target-latency", float, 0.0, "what --adapt aims at, instead of --target: seconds per "
                        "training step", SOURCE, min=0, chart="workload.targetLatency", group="adapt")
INTERVAL = Option("adapt-interval", float, 2.0, "seconds of training steps between two decisions of --adapt", SOURCE,
                  positive=True, chart="workload.adaptInterval", group="adapt")
DWELL = Option("adapt-dwell", int, 2, "intervals between two changes of level (the rate limit)", SOURCE, min=1,
               chart="workload.adaptDwell", group="adapt")
HYSTERESIS = Option("adapt-hysteresis", float, 0.1, "threshold: the band around the target in which the level "
                    "holds, as a share of the target", SOURCE, min=0, max=0.9, chart="workload.adaptHysteresis",
                    group="adapt")
WINDOW = Option("adapt-window", int, 5, "harmonic: the intervals whose bandwidths are averaged", SOURCE, min=1,
                chart="workload.adaptWindow", group="adapt")
LEVELS = Option("adapt-levels", str, "", "the levels --adapt chooses among, comma-separated (default, the module's: "
                "budgets from --budget doubling up to all maps; mask numbers 4..0; qualities 10,25,50,75,90)", SOURCE,
                validate=_levels, chart="workload.adaptLevels", group="adapt")


@dataclass(frozen=True)
class Measurement:
    """One interval of one source: bytes its requests and replies carried, the seconds
    they spent on the network (request sent to reply received, less the server's time),
    the rest of its steps' time (computing, coding, the server), and the samples it trained."""
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
    changed: bool = False


class Policy:
    """Picks the next level (an index into ``bytes_per_sample``: each level's bytes per
    sample, most compression first) to meet ``target`` samples/s. A change towards less
    compression waits until ``dwell`` intervals have passed since the last change; one
    towards more is taken at once (a link that dropped will not wait), so the level can fall
    fast but cannot rise and fall at every interval. Starts at the least compression unless
    ``start``."""
    name = ""
    options: dict[str, Option] = {}  # the options only this policy reads, by its constructor's keyword

    def __init__(self, bytes_per_sample: Sequence[float], target: float, start: int | None = None,
                 dwell: int = DWELL.default):
        if not bytes_per_sample:
            raise ValueError("a policy needs at least one level")
        if target <= 0:
            raise ValueError(f"the target must be positive samples/s, got {target}")
        self.bytes_per_sample, self.target, self.dwell = list(bytes_per_sample), target, dwell
        self.level = len(bytes_per_sample) - 1 if start is None else start
        self.history: list[tuple[Measurement, int]] = []  # each interval and the level it ran at
        self.since_change = dwell

    def decide(self, measured: Measurement) -> Decision:
        self.history.append((measured, self.level))
        self.since_change += 1
        level, why = self._propose(measured)
        if level > self.level and self.since_change < self.dwell:
            why += f"; holding level {self.level}: {self.since_change} of {self.dwell} intervals since the last change"
            level = self.level
        changed = level != self.level
        if changed:
            self.since_change = 0
        self.level = level
        return Decision(level, why, changed)

    def _propose(self, measured: Measurement) -> tuple[int, str]:
        raise NotImplementedError


class Threshold(Policy):
    name = "threshold"
    options = {"hysteresis": HYSTERESIS}

    def __init__(self, bytes_per_sample, target, start=None, dwell: int = DWELL.default,
                 hysteresis: float = HYSTERESIS.default):
        super().__init__(bytes_per_sample, target, start, dwell)
        self.hysteresis = hysteresis

    def _propose(self, measured: Measurement) -> tuple[int, str]:
        rate, low, high = measured.samples_per_s, self.target * (1 - self.hysteresis), self.target * (1 + self.hysteresis)
        if rate < low and self.level == 0:
            return 0, f"{rate:.1f} samples/s < {low:.1f}, at the most compression already: holding"
        if rate < low:
            return self.level - 1, f"{rate:.1f} samples/s < {low:.1f} (target less {self.hysteresis:.0%}): more compression"
        if rate > high and self.level == len(self.bytes_per_sample) - 1:
            return self.level, f"{rate:.1f} samples/s > {high:.1f}, at the least compression already: holding"
        if rate > high and self.level < len(self.bytes_per_sample) - 1:
            # one level up only where it would still meet the target: the network time per sample
            # grows with the bytes per sample (else it would step up and down at every dwell)
            up = self.level + 1
            network = measured.network_s * self.bytes_per_sample[up] / self.bytes_per_sample[self.level]
            after = measured.samples / (measured.compute_s + network) if measured.compute_s + network > 0 else rate
            if after >= self.target:
                return up, (f"{rate:.1f} samples/s > {high:.1f} (target plus {self.hysteresis:.0%}), level {up} "
                            f"would give {after:.1f}: less compression")
            return self.level, f"{rate:.1f} samples/s, but level {up} would give {after:.1f} < {self.target:g}: holding"
        return self.level, f"{rate:.1f} samples/s, band [{low:.1f}, {high:.1f}]: holding"


class Harmonic(Policy):
    name = "harmonic"
    options = {"window": WINDOW}

    def __init__(self, bytes_per_sample, target, start=None, dwell: int = DWELL.default,
                 window: int = WINDOW.default):
        super().__init__(bytes_per_sample, target, start, dwell)
        self.window = window

    def _propose(self, measured: Measurement) -> tuple[int, str]:
        recent = [(m, level) for m, level in self.history[-self.window:]
                  if m.network_s > 0 and m.bytes > 0 and m.samples > 0]
        if not recent:
            return self.level, "no network time measured yet: holding"
        mean = len(recent) / sum(1 / m.bandwidth_bps for m, _ in recent)
        bandwidth = min(mean, recent[-1][0].bandwidth_bps) if recent[-1][0] is measured else mean
        off_network = sum(m.compute_s for m, _ in recent) / sum(m.samples for m, _ in recent)
        # what a sample carried on the wire over what the module says its level sends (the
        # protocol's framing, labels): the same factor is assumed at every level
        overhead = (sum(m.bytes for m, _ in recent)
                    / sum(m.samples * self.bytes_per_sample[level] for m, level in recent))
        predicted = [1 / (off_network + 8 * overhead * b / bandwidth) for b in self.bytes_per_sample]
        meeting = [i for i, p in enumerate(predicted) if p >= self.target]
        level = max(meeting) if meeting else 0
        basis = f"harmonic mean of {len(recent)}" if bandwidth == mean else "the last interval's, below the harmonic mean"
        why = (f"bandwidth {bandwidth / 1e6:.2f} Mbit/s ({basis}), off the network "
               f"{1000 * off_network:.1f} ms/sample: level {level} predicts {predicted[level]:.1f} samples/s"
               + ("" if meeting else f", below the target {self.target:g} at every level: the most compression"))
        return level, why


POLICIES: dict[str, Callable[..., Policy]] = {p.name: p for p in (Threshold, Harmonic)}


ADAPT = Option("adapt", str, "", "adapt the module's level (the filter family's budget, cdc's mask number, the "
               "quality of jpeg and webp) to what each source measures of its link, with this policy: "
               + " or ".join(POLICIES) + " (empty: the level is fixed; arms without a level run fixed)", SOURCE,
               choices=_policy_choices, chart="workload.adapt", group="adapt")
OPTIONS = (ADAPT, TARGET, TARGET_LATENCY, INTERVAL, DWELL, HYSTERESIS, WINDOW, LEVELS)


def create_policy(name: str, bytes_per_sample: Sequence[float], target: float, **options) -> Policy:
    """Policy ``name``; ``options`` by keyword (start, dwell, and the policies' own options:
    those of another policy are left out, so a source can pass every value it was given)."""
    if name not in POLICIES:
        raise ValueError(f"unknown adaptation policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    chosen = POLICIES[name]
    others = {keyword for policy in POLICIES.values() for keyword in policy.options} - set(chosen.options)
    return chosen(bytes_per_sample, target, **{k: v for k, v in options.items() if k not in others})


def policy_names() -> list[str]:
    return sorted(POLICIES)


def target_samples_per_s(target: float, target_latency: float, batch_size: int) -> float:
    """``--target`` samples/s, or a batch per ``--target-latency`` seconds."""
    return target if target > 0 else batch_size / target_latency


def parse_levels(text: str) -> tuple[int, ...]:
    """``--adapt-levels`` "4,8,32" -> (4, 8, 32) (the module checks the range and orders them)."""
    try:
        return tuple(int(part) for part in str(text).split(",") if part.strip())
    except ValueError:
        raise ValueError(f"expected whole numbers separated by commas, got {text!r}") from None


ADAPT_ONLY = (TARGET.dest, TARGET_LATENCY.dest, LEVELS.dest)  # what has no use without --adapt


def check_unused(values: dict) -> None:
    """Without ``--adapt``, the options that only it reads must be left out."""
    given = [o for o in ADAPT_ONLY if values[o] not in (0, 0.0, "")]
    if not values["adapt"] and given:
        raise ValueError(f"--{given[0].replace('_', '-')} is for --adapt POLICY, which is not given")


def check(values: dict, levels, maps: int) -> tuple[int, ...]:
    """What ``--adapt`` needs beyond each option's own range, for a module whose registry
    entry declares ``levels`` (None: it has none) with ``maps`` at the cut; ``values`` by
    dest. The levels it will use, most compression first; a ValueError in one line."""
    check_unused(values)
    if levels is None:
        raise ValueError("--adapt needs a module with a level to change (the filter family, cdc, jpeg, webp)")
    if (values["target"] > 0) == (values["target_latency"] > 0):
        raise ValueError("--adapt needs one target: --target SAMPLES_PER_S or --target-latency SECONDS")
    if values.get("schedule") or values.get("mask_schedule"):
        raise ValueError("--adapt chooses the level itself: leave out --schedule and --mask-schedule")
    if values["adapt_levels"]:
        return levels.check(parse_levels(values["adapt_levels"]), maps)
    chosen = levels.default(values, maps)
    if len(set(chosen)) < 2:
        raise ValueError(f"the {levels.name} has one level only here ({','.join(map(str, chosen))}, with {maps} maps "
                         "at the cut): give a lower --budget or --adapt-levels")
    return levels.check(chosen, maps)


class Controller:
    """Closes an interval once ``interval_s`` seconds of training steps have passed, and
    asks the policy for the next level. ``values``: the module's levels, most
    compression first; ``bytes_per_sample``: what each sends per sample (both ways)."""

    def __init__(self, policy: str, values: Sequence[int], bytes_per_sample: Sequence[float], target: float,
                 interval_s: float, dwell: int = DWELL.default, **options):
        self.values = tuple(values)
        self.policy = create_policy(policy, bytes_per_sample, target, dwell=dwell, **options)
        self.interval_s = interval_s
        self.intervals = 0
        self._reset()

    def _reset(self) -> None:
        self.samples, self.step_s, self.network_s, self.bytes = 0, 0.0, 0.0, 0

    @property
    def value(self) -> int:
        return self.values[self.policy.level]

    def observe(self, samples: int, step_s: float, network_s: float, bytes_: int) -> tuple[Measurement, Decision] | None:
        """One training step; at the end of an interval, what was measured and decided."""
        self.samples += samples
        self.step_s += step_s
        self.network_s += network_s
        self.bytes += bytes_
        if self.step_s < self.interval_s:
            return None
        measured = Measurement(self.bytes, round(self.network_s, 6), round(max(0.0, self.step_s - self.network_s), 6),
                               self.samples)
        self._reset()
        self.intervals += 1
        return measured, self.policy.decide(measured)


def replay(policy: str, bytes_per_sample: Sequence[float], target: float, measured: Iterable[Measurement],
           dwell: int = DWELL.default, **options) -> list[Decision]:
    """The decisions a fresh policy makes on ``measured`` (e.g. the inputs a run traced)."""
    chosen = create_policy(policy, bytes_per_sample, target, dwell=dwell, **options)
    return [chosen.decide(m) for m in measured]
