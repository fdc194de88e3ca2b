"""A sweep's table and figures (what ``testbed sweep`` writes: ``sweep.json``, and each
trial's run directory under ``trials/``).

    from analysis.sweep import Sweep, load_sweep, write_sweep_report
    table = load_sweep("runs/sweep-x")          # one row per trial: params and metrics as columns
    sweep = Sweep("runs/sweep-x")                 # the finished trials by series and knob value
    sweep.points(SERIES), sweep.curve(SERIES, KNOB_VALUE)

A series is one line: an arm's label in the spec, else its module; its points are its knob
values, each averaged over the seeds (the spread: the standard deviation). Figures:
``rate_accuracy`` (final accuracy against stream bytes per sample sent, log x; beside it
``payload_rate_accuracy`` and ``inference_rate_accuracy``, the same against the method's
payload bytes per training and per test sample), ``accuracy_vs_bytes``
(accuracy after each epoch against cumulative training traffic: paper 002's figures 8-10)
and ``time_to_accuracy`` (accuracy after each epoch against seconds since the arm started:
figures 12-13), and ``sweep.md`` with the table, the time and bytes each series needed to
reach a target accuracy, and the failed trials.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .errors import AnalysisError  # noqa: E402
from .load import RunDirError  # noqa: E402
from .plots import STYLES, _save, module_colour, rate_axes  # noqa: E402

FINISHED = ("ok", "lost-sources")
TARGET_SHARE = 0.95  # the target accuracy of the time-to-accuracy table: this share of the reference's best


class SweepError(RunDirError):
    """A sweep folder that cannot be read; the message names it."""


class SeriesError(AnalysisError):
    """A series (or a knob value of it) the sweep has no finished trial of."""


def _read(sweep_dir: Path) -> dict:
    path = Path(sweep_dir) / "sweep.json"
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SweepError(f"{path}: cannot read it ({exc.strerror}): is {sweep_dir} a sweep folder?") from None
    except ValueError as exc:
        raise SweepError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("trials"), list):
        raise SweepError(f"{path} has no list of trials")
    for row in data["trials"]:
        if not isinstance(row, dict) or not {"trial", "status", "series", "metrics"} <= set(row):
            raise SweepError(f"{path}: a trial row lacks trial, status, series or metrics: {str(row)[:80]}")
    return data


def load_sweep(sweep_dir) -> pd.DataFrame:
    """One row per trial: trial, status, error, series, module, knob, knob_value, seed,
    seconds, run_dir, then ``param.<setting>`` and every metric."""
    rows = []
    for row in _read(Path(sweep_dir))["trials"]:
        flat = {k: row.get(k) for k in ("trial", "status", "error", "series", "module", "knob", "knob_value", "seed",
                                        "seconds", "run_dir")}
        flat.update({f"param.{k}": v for k, v in (row.get("params") or {}).items()})
        flat.update(row.get("metrics") or {})
        rows.append(flat)
    return pd.DataFrame(rows)


class Sweep:
    """The finished trials of a sweep, by series, and each trial's curve over epochs."""

    def __init__(self, sweep_dir):
        self.dir = Path(sweep_dir)
        data = _read(self.dir)
        self.name = data.get("sweep", self.dir.name)
        self.rows = [r for r in data["trials"] if r["status"] in FINISHED]
        self.failed = [r for r in data["trials"] if r["status"] not in FINISHED]
        self.series = list(dict.fromkeys(r["series"] for r in data["trials"]))
        knobs = {r.get("knob") for r in data["trials"]}
        # the settings other than the seed that vary within a series: a grid's (a link's rate)
        self.grid = [k for k in data.get("vary") or [] if k not in knobs | {"seed", "module"}
                     and any(len({json.dumps((r.get("params") or {}).get(k)) for r in data["trials"]
                                  if r["series"] == s}) > 1 for s in self.series)]
        self.problems: list[str] = []

    def points(self, series: str) -> list[dict]:
        """The series' points, one per setting of its trials but the seed (its knob's value,
        and the value of each other setting the grid varies, a link's rate: ``at``): metrics
        averaged over seeds (``n`` seeds, ``accuracy_std``), sorted by bytes per sample sent."""
        rows = [r for r in self.rows if r["series"] == series]
        if not rows:
            known = sorted({r["series"] for r in self.rows})
            why = " (its trials failed)" if any(r["series"] == series for r in self.failed) else ""
            raise SeriesError(f"no finished trial of series {series!r}{why}; the sweep has {', '.join(known)}")
        by_setting: dict = {}
        for row in rows:
            others = {k: v for k, v in (row.get("params") or {}).items() if k != "seed"}
            by_setting.setdefault(json.dumps(others, sort_keys=True), []).append(row)
        points = []
        for group in by_setting.values():
            params = group[0].get("params") or {}
            at = {k: params.get(k) for k in self.grid if k in params}
            point = {"series": series, "module": group[0].get("module"), "knob": group[0].get("knob"),
                     "knob_value": group[0].get("knob_value"), "at": at, "n": len(group),
                     "trials": [r["trial"] for r in group]}
            for metric in group[0]["metrics"]:
                values = [r["metrics"][metric] for r in group if isinstance(r["metrics"].get(metric), (int, float))]
                point[metric] = sum(values) / len(values) if values else None
            point["accuracy_std"] = _std([r["metrics"].get("test_accuracy") for r in group])
            points.append(point)
        return sorted(points, key=lambda p: p.get("bytes_per_sample_sent") or 0)

    def point(self, series: str, knob_value=None, **at) -> dict:
        """The series' one point at ``knob_value`` and at the grid's values ``at`` (by setting:
        ``bandwidth="5mbit"``); a SeriesError where none, or more than one, is left."""
        points = self.points(series)
        if knob_value is not None:
            points = [p for p in points if p["knob_value"] == knob_value]
            if not points:
                raise SeriesError(f"series {series!r} has no trial at {self.points(series)[0]['knob']} {knob_value}")
        points = [p for p in points if all(p["at"].get(k) == v for k, v in at.items())]
        if not points:
            raise SeriesError(f"series {series!r} has no trial at " + ", ".join(f"{k} {v}" for k, v in at.items()))
        if len(points) > 1:
            unnamed = ([points[0]["knob"]] if knob_value is None and points[0]["knob"] else []) + \
                [k for k in self.grid if k not in at]
            raise SeriesError(f"series {series!r} has {len(points)} points: name its "
                              + " and ".join(k.replace("_", "-") for k in unnamed))
        return points[0]

    def trial_curve(self, trial: str) -> pd.DataFrame:
        """One trial's accuracy after each epoch (mean over its sources), the cumulative
        training MB (both directions, all sources) and the seconds since its arm started.
        Columns: epoch, accuracy, mb_total, t."""
        from .load import load_runs
        from .metrics import accuracy_curves

        runs = load_runs([self.dir / "trials" / trial])
        self.problems += [f"trial {trial}: {p}" for p in runs.problems]
        curves = accuracy_curves(runs)
        if curves.empty:
            return pd.DataFrame(columns=["epoch", "accuracy", "mb_total", "t"])
        seconds = runs.evals.groupby("epoch")["t"].max()
        return curves.assign(t=curves["epoch"].map(seconds))[["epoch", "accuracy", "mb_total", "t"]]

    def curve(self, series: str, knob_value=None) -> list[float]:
        """Test accuracy after each epoch, averaged over the point's seeds."""
        return self.mean_curve(series, knob_value)["accuracy"].tolist()

    def mean_curve(self, series: str, knob_value=None) -> pd.DataFrame:
        return self.point_curve(self.point(series, knob_value))

    def point_curve(self, point: dict) -> pd.DataFrame:
        """A point's accuracy after each epoch, averaged over its seeds."""
        frames = [self.trial_curve(t) for t in point["trials"]]
        frames = [f for f in frames if not f.empty]
        if not frames:
            return pd.DataFrame(columns=["epoch", "accuracy", "mb_total", "t"])
        epochs = min(len(f) for f in frames)
        return pd.concat([f.iloc[:epochs].reset_index(drop=True) for f in frames]).groupby("epoch").mean().reset_index()


def _std(values) -> float | None:
    numbers = [v for v in values if isinstance(v, (int, float))]
    if len(numbers) < 2:
        return None
    mean = sum(numbers) / len(numbers)
    return math.sqrt(sum((v - mean) ** 2 for v in numbers) / (len(numbers) - 1))


def _style(sweep: Sweep, series: str) -> dict:
    modules = [r.get("module") for r in sweep.rows if r["series"] == series]
    module = modules[0] if modules else series
    same = [s for s in sweep.series if any(r.get("module") == module and r["series"] == s for r in sweep.rows)]
    return {"color": module_colour(module), "linestyle": STYLES[same.index(series) % len(STYLES)] if series in same
            else "-"}


def _at(point: dict) -> str:
    """The grid's settings of a point, as a label: ``bandwidth 5mbit`` ("" without a grid)."""
    return ", ".join(f"{k.replace('_', '-')} {v}" for k, v in point["at"].items())


def _setting(point: dict) -> str:
    """What tells a series' points apart, for a legend: `` budget 4, bandwidth 5mbit``."""
    parts = ([f"{point['knob'].replace('_', '-')} {point['knob_value']}"] if point["knob"] else []) + \
        ([_at(point)] if point["at"] else [])
    return (" " + ", ".join(parts)) if parts else ""


def _finished_series(sweep: Sweep) -> list[str]:
    return [s for s in sweep.series if any(r["series"] == s for r in sweep.rows)]


def _log_x(ax) -> None:
    """A log x axis labelled at its decades only, in plain numbers."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))


@dataclass(frozen=True)
class Rate:
    """One way to count an arm's rate: the stream (every byte on the wire) or the payload
    (what the method itself codes: analysis/figures.py), per training or test sample."""
    figure: str     # the sweep point's (and summary's) figure
    name: str       # as sentences and tables name it
    title: str      # of its rate-accuracy figure
    file: str       # that figure's file name


# by the name a spec gives it (``rate`` of a reproduction's ``[reproduce]`` or of one claim)
RATES = {
    "stream": Rate("bytes_per_sample_sent", "stream bytes per sample", "Stream rate", "rate_accuracy"),
    "payload": Rate("coded_bytes_per_sample", "payload bytes per sample", "Payload rate", "payload_rate_accuracy"),
    "payload at inference": Rate("eval_coded_bytes_per_sample", "payload bytes per sample at inference",
                                 "Payload rate at inference", "inference_rate_accuracy"),
}


def rate_accuracy(sweep: Sweep, out: Path) -> list[Path]:
    """Final test accuracy against each rate of ``RATES`` (log x; a figure each, where the
    trials traced it), one line per series across its knob, mean over seeds with the spread
    as error bars."""
    return [path for rate in RATES.values() for path in _rate_accuracy(sweep, out, rate)]


def _rate_accuracy(sweep: Sweep, out: Path, kind: Rate) -> list[Path]:
    rate, title, xlabel = kind.figure, kind.title, f"{kind.name} (log)"
    if not any(p.get(rate) for s in _finished_series(sweep) for p in sweep.points(s)):
        return []
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    lines = []  # one per series and value of the grid's other settings (a bandwidth): its knob's values
    for series in _finished_series(sweep):
        by_grid: dict[str, list[dict]] = {}
        for p in sweep.points(series):
            if p.get(rate) and p.get("test_accuracy") is not None:
                by_grid.setdefault(_at(p), []).append(p)
        lines += [(series, at, sorted(points, key=lambda p: p[rate])) for at, points in by_grid.items()]
    for series, at, points in lines:
        x = [p[rate] for p in points]
        y = [100 * p["test_accuracy"] for p in points]
        errors = [100 * (p["accuracy_std"] or 0) for p in points]
        knob = points[0]["knob"]
        ax.errorbar(x, y, yerr=errors if any(errors) else None, marker="o", markersize=4, capsize=3,
                    label=series + (f" ({knob.replace('_', '-')})" if knob else "") + (f", {at}" if at else ""),
                    **_style(sweep, series))
        for p, xi, yi in zip(points, x, y):
            if knob:
                ax.annotate(f"{p['knob_value']:g}" if isinstance(p["knob_value"], float) else str(p["knob_value"]),
                            (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    _log_x(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("final test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=8)
    seeds = max((p["n"] for s in _finished_series(sweep) for p in sweep.points(s)), default=1)
    ax.set_title(f"{title} against accuracy — {sweep.name}" + (f" (mean ± sd over {seeds} seeds)" if seeds > 1 else ""))
    fig.tight_layout()
    return _save(fig, out, kind.file)


def _curves_figure(sweep: Sweep, out: Path, name: str, column: str, xlabel: str, title: str, log: bool) -> list[Path]:
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for series in _finished_series(sweep):
        style = _style(sweep, series)
        points = sweep.points(series)
        for i, point in enumerate(points):
            curve = sweep.point_curve(point)
            if curve.empty:
                continue
            alpha = 0.45 + 0.55 * (i + 1) / len(points)
            ax.plot(curve[column], 100 * curve["accuracy"], marker="o", markersize=3, alpha=alpha,
                    label=series + _setting(point), **style)
    if log:
        _log_x(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"{title} — {sweep.name}")
    fig.tight_layout()
    return _save(fig, out, name)


def accuracy_vs_bytes(sweep: Sweep, out: Path) -> list[Path]:
    """Accuracy after each epoch against the cumulative training traffic (paper 002, figures 8-10)."""
    return _curves_figure(sweep, out, "accuracy_vs_bytes", "mb_total",
                          "cumulative training traffic, both directions, all sources (MB, log)",
                          "Accuracy against network usage", log=True)


def time_to_accuracy(sweep: Sweep, out: Path) -> list[Path]:
    """Accuracy after each epoch against the seconds since the arm started (paper 002, figures 12-13)."""
    return _curves_figure(sweep, out, "time_to_accuracy", "t", "seconds since the arm started",
                          "Time to accuracy", log=False)


def throughput_vs_bandwidth(sweep: Sweep, out: Path) -> list[Path]:
    """Samples/s per source against the link's rate (log-log, as a roofline: a source bound
    by its link follows a line of slope 1, one bound by computing stays flat), one line per
    series and knob value, mean over seeds; dashed, what the link allows the ``none`` series.
    Drawn when a series ran behind links of different rates (a grid of ``bandwidth``, as
    ``testbed run --sweep-bandwidth`` makes)."""
    lines: dict[str, list[tuple[float, dict]]] = {}
    for series in _finished_series(sweep):
        for point in sweep.points(series):
            rate = point.get("link_up_bps") or point.get("link_down_bps")
            if rate and point.get("samples_per_s_per_source"):
                knob = f" {point['knob'].replace('_', '-')} {point['knob_value']}" if point["knob"] else ""
                lines.setdefault(series + knob, []).append((rate / 1e6, point))
    if not any(len({x for x, _ in points}) > 1 for points in lines.values()):
        return []
    asymmetric = any(p.get("link_up_bps") != p.get("link_down_bps") for points in lines.values() for _, p in points)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for label, points in lines.items():
        points.sort(key=lambda item: item[0])
        style = _style(sweep, points[0][1]["series"])
        ax.plot([x for x, _ in points], [p["samples_per_s_per_source"] for _, p in points], marker="o", label=label,
                **style)
        limits = [(x, p["link_limit_samples_per_s_per_source"]) for x, p in points
                  if p.get("link_limit_samples_per_s_per_source")]
        if points[0][1]["module"] == "none" and limits:
            ax.plot(*zip(*limits), linestyle="--", color=style["color"], label=f"link limit ({label})")
    rate_axes(ax, {x for points in lines.values() for x, _ in points}, asymmetric)
    ax.set_title(f"Throughput against link rate — {sweep.name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out, "throughput_vs_bandwidth")


def reach_table(sweep: Sweep, target: float) -> list[dict]:
    """Per series and knob value: the first epoch, second and MB at which the mean curve
    reached ``target`` (None where it never did)."""
    rows = []
    for series in _finished_series(sweep):
        for point in sweep.points(series):
            curve = sweep.point_curve(point)
            hit = curve[curve["accuracy"] >= target]
            first = hit.iloc[0] if len(hit) else None
            rows.append({"series": series, "knob_value": point["knob_value"], "at": _at(point),
                         "epoch": int(first["epoch"]) + 1 if first is not None else None,
                         "seconds": round(float(first["t"]), 1) if first is not None else None,
                         "mb": round(float(first["mb_total"]), 2) if first is not None else None})
    return rows


@dataclass
class SweepReport:
    markdown: Path
    figures: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def write_sweep_report(sweep_dir, out=None) -> SweepReport:
    """The sweep's figures (PNG and SVG) and ``sweep.md`` into ``out`` (default
    ``<sweep_dir>/report``)."""
    sweep = Sweep(sweep_dir)
    target_dir = Path(out) if out else sweep.dir / "report"
    target_dir.mkdir(parents=True, exist_ok=True)
    figures: list[Path] = []
    problems = [f"trial {r['trial']} {r['status']}: {r.get('error') or 'not run'} (left out of the figures)"
                for r in sweep.failed]
    at = [", ".join(k.replace("_", "-") for k in sweep.grid)] if sweep.grid else []  # a column for the grid's settings
    lines = [f"# Sweep {sweep.name}", "", "| " + " | ".join(["series", "knob", "value"] + at + [
             "seeds", "stream bytes per sample sent", "samples/s per source", "accuracy"]) + " |",
             "|" + " --- |" * (7 + len(at))]
    if sweep.rows:
        for draw in (rate_accuracy, accuracy_vs_bytes, time_to_accuracy, throughput_vs_bandwidth):
            figures += draw(sweep, target_dir)
        for series in _finished_series(sweep):
            for p in sweep.points(series):
                std = f" ± {100 * p['accuracy_std']:.1f}" if p["accuracy_std"] is not None else ""
                accuracy = f"{100 * p['test_accuracy']:.1f}%{std}" if p.get("test_accuracy") is not None else "-"
                sent = f"{p['bytes_per_sample_sent']:,.0f}" if p.get("bytes_per_sample_sent") else "-"
                speed = f"{p['samples_per_s_per_source']:.2f}" if p.get("samples_per_s_per_source") else "-"
                grid = [", ".join(str(v) for v in p["at"].values())] if at else []
                lines.append("| " + " | ".join([series, (p["knob"] or "-").replace("_", "-"),
                                                "" if p["knob_value"] is None else str(p["knob_value"])] + grid
                                               + [str(p["n"]), sent, speed, accuracy]) + " |")
        reference = "none" if "none" in _finished_series(sweep) else None
        best = max((p["test_accuracy"] for s in ([reference] if reference else _finished_series(sweep))
                    for p in sweep.points(s) if p.get("test_accuracy") is not None), default=None)
        if best is not None:
            target = TARGET_SHARE * best
            lines += ["", f"## Time and bytes to {100 * target:.1f}% accuracy ({100 * TARGET_SHARE:g}% of the best "
                      f"final accuracy of {reference or 'any series'})", "",
                      "| series | value | epoch | seconds since the arm started | MB (training, both directions) |",
                      "| --- | --- | --- | --- | --- |"]
            for row in reach_table(sweep, target):
                never = "not reached"
                value = ", ".join(str(v) for v in ([] if row["knob_value"] is None else [row["knob_value"]])
                                  + ([row["at"]] if row["at"] else []))
                lines.append(f"| {row['series']} | {value} | "
                             f"{row['epoch'] or never} | {row['seconds'] if row['seconds'] is not None else never} | "
                             f"{row['mb'] if row['mb'] is not None else never} |")
    if sweep.failed:
        lines += ["", "## Failed trials", ""] + [f"- `{r['trial']}` ({r['status']}): {r.get('error') or 'not run'}"
                                                  for r in sweep.failed]
    names = list(dict.fromkeys(p.stem for p in figures))
    lines += [""] + [f"![{n}]({n}.png)" for n in names]
    markdown = target_dir / "sweep.md"
    markdown.write_text("\n".join(lines) + "\n")
    return SweepReport(markdown, figures, problems + sweep.problems)
