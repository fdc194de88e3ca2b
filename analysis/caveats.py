"""What a run's numbers do not measure, in one line each: the printed table and report.md
end with these lines, so that a run made with the defaults says what its figures mean.

- **No link:** no arm ran behind an emulated link (no ``link`` figure), so every source
  reached the server over whatever joins them (loopback on one machine, nothing in process,
  the pod network on a cluster): the throughput compares the server and the sources'
  compute, not the network the papers measured.
- **A saturated synthetic set:** every arm trained on the synthetic set at difficulty 0
  and every arm's test accuracy is at least ``SATURATED``: the set is learnt whatever the
  compression, so accuracy does not tell the methods apart.

``caveats(arms)`` takes the arms' figures by label (``summary.json``'s ``arms``, or
:func:`analysis.metrics.arm_figures`) and returns the lines that apply, in that order.
"""
from __future__ import annotations

from typing import Mapping

SATURATED = 0.95  # every arm's test accuracy at least this: the synthetic set no longer separates them

NO_LINK = ("no link was emulated: the sources reached the server over whatever joins them here (loopback on "
           "one machine, nothing in process), so the throughput compares the server and the sources' compute, not "
           "the network the papers measured (--link wifi gives paper 002's setting)")


def caveats(arms: Mapping[str, Mapping]) -> list[str]:
    """The caveats that apply to these arms (none for no arms)."""
    if not arms:
        return []
    lines = []
    if not any(arm.get("link") for arm in arms.values()):
        lines.append(NO_LINK)
    saturated = _saturated(arms)
    if saturated:
        lines.append(saturated)
    return lines


def _saturated(arms: Mapping[str, Mapping]) -> str | None:
    data = [arm.get("data") or {} for arm in arms.values()]
    if not all(d.get("synthetic") and d.get("difficulty") == 0 for d in data):
        return None
    accuracies = [arm.get("test_accuracy") for arm in arms.values()]
    if any(a is None or a < SATURATED for a in accuracies):
        return None
    shown = " / ".join(f"{a:.3f}" for a in accuracies)
    return (f"the synthetic set at difficulty 0 saturates: every arm reaches {shown} test accuracy "
            f"({', '.join(arms)}), so accuracy does not separate the methods (--difficulty 0.5, or real "
            f"data with --dataset cifar10 --data-dir DIR)")
