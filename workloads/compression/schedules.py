"""Budget schedules of paper 002: which budget each epoch trains at, and the
learning-rate boost (gamma for the first lk epochs after a budget change)."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BudgetSchedule:
    phases: tuple[tuple[int, int], ...]  # (budget, epochs), in order
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


def schedule_for(module: str, budget: int, maps: int, epochs: int, *, text: str | None = None,
                 boost: float = 1.0, boost_epochs: int = 0) -> BudgetSchedule:
    """The default schedule of ``module`` over ``epochs``, or the one given as text."""
    if text:
        phases = parse_schedule(text)
    elif module == "deprune":
        # Most epochs at the small budget, the last quarter (at least one) at all maps.
        late = max(1, round(epochs / 4)) if epochs > 1 else 0
        phases = ((budget, epochs - late), (maps, late)) if late else ((budget, epochs),)
    elif module == "prune":
        # Half the epochs at all maps (the base model), the rest transferred to smaller
        # budgets: a quarter of the maps, then B, when there are epochs for both.
        first = math.ceil(epochs / 2)
        rest = epochs - first
        steps = [b for b in (maps // 4, budget) if b < maps]
        steps = sorted(set(steps), reverse=True)[-rest:] if rest else []
        phases = [(maps, first)]
        for i, b in enumerate(steps):
            share = rest // len(steps) + (1 if i < rest % len(steps) else 0)
            phases.append((b, share))
        phases = tuple(phases)
    elif module == "none":
        phases = ((maps, epochs),)
    else:
        phases = ((budget, epochs),)
    return BudgetSchedule(tuple((min(b, maps), e) for b, e in phases), boost, boost_epochs)
