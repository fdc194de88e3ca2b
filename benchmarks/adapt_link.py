"""Adaptive compression on a trace-driven link: what each arm sent, how fast it went while the
link was slow and overall, and where it ended, from run folders (``testbed run`` or the
trials of ``testbed sweep``).

    testbed sweep experiments/adapt-link-drop.toml
    python benchmarks/adapt_link.py runs/sweep-adapt-link-drop/trials/*

Per arm: MB sent (training steps, all sources), samples/s per source (whole run, warm-up
left out), samples/s per source while the link was at its lowest rate (binned as the
controller's intervals, mean over bins, and the worst bin) against the target, and how
long after the drop every bin was back at 75% of the target or more; final test accuracy; for an adapting arm the share of its intervals at >= 75% of the target, its
changes per minute and the seconds it spent at each level.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis import metrics  # noqa: E402
from analysis.load import load_runs  # noqa: E402


def slow_window(runs, run: str, arm: str) -> tuple[float, float] | None:
    """(start, end) in arm seconds of the longest stretch at the lowest uplink capacity any
    loaded arm saw; None where this arm has no link or ended before that rate."""
    capacity = metrics.capacity_over_time(runs)
    lowest = capacity[capacity["direction"] == "up"]["mbit_s"].min() if len(capacity) else None
    mine = capacity[(capacity["run"] == run) & (capacity["arm"] == arm)]
    if mine.empty or mine["mbit_s"].min() > lowest:
        return None
    direction = "up" if (mine["direction"] == "up").any() else mine["direction"].iloc[0]
    mine = mine[mine["direction"] == direction]
    first = mine["source"].dropna().min() if mine["source"].notna().any() else None
    mine = mine[mine["source"] == first] if first is not None else mine
    low = mine["mbit_s"].min()
    times, rates = list(mine["t"]), list(mine["mbit_s"])
    best, begin = None, None
    for i, (t, rate) in enumerate(zip(times, rates)):
        if rate == low and begin is None:
            begin = t
        if rate != low and begin is not None:
            if best is None or t - begin > best[1] - best[0]:
                best = (begin, t)
            begin = None
    if begin is not None:
        end = float(runs.events[(runs.events["run"] == run) & (runs.events["arm"] == arm)]["t_rel"].max())
        if best is None or end - begin > best[1] - best[0]:
            best = (begin, end)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders")
    parser.add_argument("--target", type=float, default=None,
                        help="samples/s to compare with (default: the adapting arm's target)")
    args = parser.parse_args(argv)
    runs = load_runs(args.runs)
    figures = metrics.arm_figures(runs)
    targets = [f["adapt_target_samples_per_s"] for f in figures.values() if f.get("adapt_target_samples_per_s")]
    target = args.target or (targets[0] if targets else None)
    interval = float(next(iter(metrics.adapt_starts(runs).values()))["interval_s"]) if targets else 2.0
    print(f"target: {target} samples/s per source; intervals of {interval:g} s")
    header = (f"{'arm':<40} {'MB sent':>8} {'samples/s':>9} {'slow: mean':>10} {'slow: worst':>11} "
              f"{'accuracy':>8}")
    print(header)
    for label, fig in figures.items():
        window = slow_window(runs, fig["run"], fig["arm"])
        binned = metrics.binned_rates(runs.batches, label, interval)
        slow = binned if window is None else binned[(binned["t"] > window[0] + interval) & (binned["t"] <= window[1])]
        rates = fig.get("samples_per_s_per_source") or []
        print(f"{label:<40} {fig['bytes_sent_total'] / 1e6:>8.2f} {sum(rates) / max(1, len(rates)):>9.1f} "
              f"{slow['samples_per_s'].mean() if len(slow) else float('nan'):>10.1f} "
              f"{slow['samples_per_s'].min() if len(slow) else float('nan'):>11.1f} "
              f"{100 * (fig.get('test_accuracy') or 0):>7.1f}%")
        print(f"{'':<40} " + (f"lowest capacity from {window[0]:.1f} s to {window[1]:.1f} s" if window else
                              "never at the lowest capacity (it ended before, or has no link)"))
        if window is not None and target and len(slow):
            inside = binned[(binned["t"] > window[0]) & (binned["t"] <= window[1])]
            low = (inside["samples_per_s"] < (1 - metrics.TARGET_TOLERANCE) * target).to_numpy()
            kept = next((i for i in range(len(low)) if not low[i:].any()), None)
            print(f"{'':<40} " + ("never back at 75% of the target while the link was slow" if kept is None else
                                  f"at >= 75% of the target in every {interval:g} s bin from "
                                  f"{inside['t'].iloc[kept] - interval:.1f} s on: "
                                  f"{inside['t'].iloc[kept] - interval - window[0]:.1f} s after the drop"))
        if fig.get("adapt_policy"):
            levels = ", ".join(f"{k}: {v:.1f} s" for k, v in fig["adapt_time_at_level"].items())
            print(f"{'':<40} {fig['adapt_policy']}: {fig['adapt_decisions']} decisions, {fig['adapt_changes']} "
                  f"changes ({fig['adapt_changes_per_min']} per minute of steps); intervals >= 75% of the target: "
                  f"{fig['adapt_within_target']:.0%}; worst interval {fig['adapt_samples_per_s_min']} samples/s")
            print(f"{'':<40} time at each {fig['adapt_level_name']}: {levels}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
