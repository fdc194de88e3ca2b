"""Budget schedules of paper 002: which budget each epoch trains at, and the
learning-rate boost (gamma for the first lk epochs after a budget change)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..option import knob

Phases = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class BudgetSchedule:
    phases: Phases                       # (budget, epochs), in order
    boost: float = 1.0                   # gamma
    boost_epochs: int = 0                # lk

    def _phase(self, epoch: int) -> int:
        start = 0
        for i, (_, epochs) in enumerate(self.phases):
            if epoch < start + epochs:
                return i
            start += epochs
        return len(self.phases) - 1

    def budget(self, epoch: int) -> int:
        return self.phases[self._phase(epoch)][0]

    def phase(self, epoch: int) -> int:
        return self._phase(epoch)

    def lr_scale(self, epoch: int) -> float:
        i = self._phase(epoch)
        if i == 0:
            return 1.0
        started = sum(e for _, e in self.phases[:i])
        return self.boost if epoch - started < self.boost_epochs else 1.0


def parse_schedule(text: str) -> tuple[tuple[int, int], ...]:
    """``"128:2,32:1,4:1"`` -> ((128, 2), (32, 1), (4, 1))."""
    phases = []
    for part in text.split(","):
        try:
            budget, epochs = (int(v) for v in part.split(":"))
        except ValueError:
            raise ValueError(f"bad schedule entry {part!r}: expected BUDGET:EPOCHS, e.g. 4:3,128:1") from None
        if budget < 1 or epochs < 1:
            raise ValueError(f"bad schedule entry {part!r}: budget and epochs must be >= 1")
        phases.append((budget, epochs))
    return tuple(phases)


def fixed(budget: int, maps: int, epochs: int) -> Phases:
    """B maps throughout."""
    return ((budget, epochs),)


def budget_first(budget: int, maps: int, epochs: int) -> Phases:
    """Paper 002's deprune: most epochs at budget B, the last quarter (at least one) at all maps."""
    late = max(1, round(epochs / 4)) if epochs > 1 else 0
    return ((budget, epochs - late), (maps, late)) if late else ((budget, epochs),)


def all_maps_first(budget: int, maps: int, epochs: int) -> Phases:
    """Paper 002's prune: half the epochs at all maps (the base model), the rest
    transferred to smaller budgets: a quarter of the maps, then B, when there are
    epochs for both."""
    first = math.ceil(epochs / 2)
    rest = epochs - first
    steps = sorted({b for b in (maps // 4, budget) if b < maps}, reverse=True)[-rest:] if rest else []
    phases = [(maps, first)]
    for i, b in enumerate(steps):
        phases.append((b, rest // len(steps) + (1 if i < rest % len(steps) else 0)))
    return tuple(phases)


# The knobs of the modules with a budget (the filter family).
BUDGET = knob("budget", int, 4, "feature maps allowed across the cut", ("source",), min=1)
SCHEDULE = knob("schedule", str, "", "budget schedule BUDGET:EPOCHS,... (default: the module's)", ("source",),
                validate=parse_schedule)
LR_BOOST = knob("lr-boost", float, 2.0, "gamma: learning-rate factor after a budget change", ("source",),
                positive=True)
BOOST_EPOCHS = knob("boost-epochs", int, 1, "lk: epochs the boost lasts after a budget change", ("source",), min=0)
BUDGET_KNOBS = (BUDGET, SCHEDULE, LR_BOOST, BOOST_EPOCHS)
