"""A paper's claims against a sweep's measurements (``testbed reproduce NAME``).

The claims are data, in the experiment's spec (``experiments/reproduce/NAME.toml``,
table ``[reproduce]``): each ``[[reproduce.claims]]`` has a ``kind`` (the functions of
``CLAIMS`` below), the series it compares (the sweep's ``series``: an arm's label or its
module) and the paper's value with where it comes from; ``[[reproduce.table]]`` rows put
the paper's reference values beside the measured ones. This module reads the sweep's
files only (``sweep.json`` and the trials' run directories) and writes
``reproduce.md`` and ``reproduce.json``.

Every claim compares rates in the unit its paper counts: ``rate`` of ``[reproduce]`` (or of
one claim) names one of ``RATES`` — "stream" (every byte on the wire, the default: paper
002's traffic), "payload" (what the method itself codes, per training sample: the coded
latent of papers 003 and 000) or "payload at inference" (per test sample: paper 004's
bytes per image); bpp divides that rate's bits by the input's 32x32 pixels. The table
shows the stream and payload bytes of every row, and the sentences name the unit.

Every claim becomes one sentence that says whether the paper's ordering holds and by how
much, e.g. "deprune reached none's accuracy (0.91 vs 0.92) with 3.9x fewer bytes; paper:
5.19x" or "... did not reach ...".
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .sweep import RATES, SeriesError, Sweep

PIXELS = 32 * 32  # bits per input pixel (bpp) divide a sample's bits by its pixels (CIFAR's 32x32)



ReproduceError = SeriesError  # a claim or table row the sweep cannot answer (a series it has no trial of)


@dataclass
class Verdict:
    kind: str
    holds: bool | None      # None: the sweep cannot say (a series failed)
    statement: str
    measured: float | None = None
    paper: object = None


@dataclass
class Reproduction:
    verdicts: list[Verdict] = field(default_factory=list)
    table: list[dict] = field(default_factory=list)
    markdown: Path | None = None


def _acc(point: dict) -> str:
    std = point.get("accuracy_std")
    return f"{point['test_accuracy']:.3f}" + (f" ± {std:.3f}" if std is not None else "")


def _paper(claim: dict) -> str:
    if "paper" not in claim:
        return ""
    value = claim["paper"]
    text = f"{value:g}" if isinstance(value, (int, float)) else str(value)
    return f"; paper: {text}{claim.get('unit', '')}" + (f" ({claim['source']})" if claim.get("source") else "")


# --- the claim kinds ------------------------------------------------------------------------------------------

def ratio(sweep: Sweep, claim: dict) -> Verdict:
    """``numerator``'s metric over ``denominator``'s; holds when above 1 (the paper's direction)."""
    metric = claim["metric"]
    top = sweep.point(claim["numerator"], claim.get("numerator_value"))
    bottom = sweep.point(claim["denominator"], claim.get("denominator_value"))
    measured = top[metric] / bottom[metric]
    holds = measured > 1
    what = claim.get("what", f"{metric} of {claim['numerator']} over {claim['denominator']}")
    return Verdict("ratio", holds, f"{what}: {measured:.2f}×" + ("" if holds else " (not above 1: the ordering "
                                                                  "does not hold)") + _paper(claim),
                   measured, claim.get("paper"))


def rate_of(claim: dict) -> tuple[str, str]:
    """(figure, name) of the rate ``claim`` compares (its ``rate``, else stream bytes)."""
    name = claim.get("rate", "stream")
    if name not in RATES:
        raise ReproduceError(f"unknown rate {name!r}; known: {', '.join(RATES)}")
    return RATES[name].figure, RATES[name].name


def _rate(point: dict, claim: dict) -> float:
    figure, name = rate_of(claim)
    value = point.get(figure)
    if value is None:
        raise ReproduceError(f"series {point['series']} has no {name} (its trials' traces do not say)")
    return value


def same_accuracy_fewer_bytes(sweep: Sweep, claim: dict) -> Verdict:
    """``series`` reaches ``against``'s final accuracy (within ``tolerance``) with fewer bytes
    (the whole stream of training, or per sample in the claim's ``rate``)."""
    tolerance = claim.get("tolerance", 0.02)
    mine = sweep.point(claim["series"], claim.get("value"))
    theirs = sweep.point(claim["against"], claim.get("against_value"))
    if "rate" in claim:
        fewer = _rate(theirs, claim) / _rate(mine, claim)
    else:
        fewer = theirs["bytes_sent_total"] / mine["bytes_sent_total"]
    reached = mine["test_accuracy"] >= theirs["test_accuracy"] - tolerance
    verb = "reached" if reached else "did not reach"
    return Verdict("same_accuracy_fewer_bytes", reached and fewer > 1,
                   f"{claim['series']} {verb} {claim['against']}'s accuracy ({_acc(mine)} vs {_acc(theirs)}, "
                   f"tolerance {tolerance:g}) with {fewer:.2f}× fewer "
                   f"{rate_of(claim)[1] if 'rate' in claim else 'stream bytes'}" + _paper(claim),
                   fewer, claim.get("paper"))


def accuracy_gain(sweep: Sweep, claim: dict) -> Verdict:
    """``series`` ends more accurate than ``against`` (in percentage points)."""
    mine = sweep.point(claim["series"], claim.get("value"))
    theirs = sweep.point(claim["against"], claim.get("against_value"))
    gain = 100 * (mine["test_accuracy"] - theirs["test_accuracy"])
    return Verdict("accuracy_gain", gain > 0,
                   f"{claim['series']} ended {gain:+.1f} points against {claim['against']} "
                   f"({_acc(mine)} vs {_acc(theirs)})" + _paper(claim), gain, claim.get("paper"))


def speedup_to_accuracy(sweep: Sweep, claim: dict) -> Verdict:
    """Epochs ``against`` (trained from scratch) needs to first reach its best accuracy
    (less ``tolerance``), over the epochs ``series`` needs to reach it after its transfer:
    the start of its schedule's ``phase`` (1-based)."""
    tolerance = claim.get("tolerance", 0.02)
    scratch = sweep.curve(claim["against"], claim.get("against_value"))
    mine = sweep.curve(claim["series"], claim.get("value"))
    start, end = _phase_window(sweep.point(claim["series"], claim.get("value")), claim.get("phase", 2), sweep)
    target = max(scratch) - tolerance
    scratch_epochs = next(e + 1 for e, a in enumerate(scratch) if a >= target)
    mine_epochs = next((e - start + 1 for e in range(start, min(end, len(mine))) if mine[e] >= target), None)
    if mine_epochs is None:
        return Verdict("speedup_to_accuracy", False,
                       f"{claim['series']} did not reach {claim['against']}'s best accuracy less {tolerance:g} "
                       f"({target:.3f}) in its {end - start} epochs after the transfer (it reached "
                       f"{max(mine[start:end], default=float('nan')):.3f}); from scratch took {scratch_epochs} "
                       "epochs" + _paper(claim), None, claim.get("paper"))
    speedup = scratch_epochs / mine_epochs
    return Verdict("speedup_to_accuracy", speedup > 1,
                   f"{claim['series']} reached {claim['against']}'s best accuracy less {tolerance:g} ({target:.3f}) "
                   f"{mine_epochs} epoch(s) after its transfer; from scratch took {scratch_epochs}: {speedup:.1f}× "
                   "sooner" + _paper(claim), speedup, claim.get("paper"))


def _phase_window(point: dict, phase: int, sweep: Sweep) -> tuple[int, int]:
    """The epochs [start, end) of the ``phase``-th step of the trial's budget schedule."""
    row = next(r for r in sweep.rows if r["trial"] == point["trials"][0])
    text = row["params"].get("schedule") or ""
    phases = [tuple(int(v) for v in part.split(":")) for part in text.split(",") if part]
    if len(phases) < phase:
        raise ReproduceError(f"series {point['series']} has no phase {phase} in its schedule {text!r}")
    start = sum(e for _, e in phases[:phase - 1])
    return start, start + phases[phase - 1][1]


def monotone(sweep: Sweep, claim: dict) -> Verdict:
    """Along ``series`` sorted by bytes per sample, accuracy does not fall by more than
    ``tolerance`` (more bytes, at least as accurate)."""
    tolerance = claim.get("tolerance", 0.02)
    points = sorted(sweep.points(claim["series"]), key=lambda p: _rate(p, claim))
    knob = points[0]["knob"] or "knob"
    falls = [(a, b) for a, b in zip(points, points[1:]) if b["test_accuracy"] < a["test_accuracy"] - tolerance]
    trail = ", ".join(f"{p['knob_value']}: {p['test_accuracy']:.3f} at {_rate(p, claim):,.0f} B"
                      for p in points)
    verdict = "accuracy rises (or holds) with the bytes" if not falls else \
        f"accuracy falls {len(falls)} time(s) as the bytes grow (beyond {tolerance:g})"
    return Verdict("monotone", not falls, f"{claim['series']} by {knob.replace('_', '-')}: {verdict} ({trail}; "
                   f"{rate_of(claim)[1]})"
                   + _paper(claim), None, claim.get("paper"))


def dominates(sweep: Sweep, claim: dict) -> Verdict:
    """Every point of each ``against`` series has a ``series`` point with no more bytes and
    at least its accuracy (less ``tolerance``)."""
    tolerance = claim.get("tolerance", 0.02)
    mine = sweep.points(claim["series"])
    parts, beaten, total = [], 0, 0
    for other in claim["against"]:
        theirs = sweep.points(other)
        count = sum(1 for t in theirs if any(_rate(m, claim) <= _rate(t, claim)
                                             and m["test_accuracy"] >= t["test_accuracy"] - tolerance for m in mine))
        parts.append(f"{count} of {len(theirs)} {other} points")
        beaten, total = beaten + count, total + len(theirs)
    return Verdict("dominates", beaten == total,
                   f"{claim['series']} matched or beat, at no more {rate_of(claim)[1]}, {', '.join(parts)}"
                   + _paper(claim),
                   beaten / total if total else None, claim.get("paper"))


def accuracy_at_rate(sweep: Sweep, claim: dict) -> Verdict:
    """The fewest bytes at which ``series`` is within ``tolerance`` of ``against``'s accuracy,
    in bits per input pixel."""
    tolerance = claim.get("tolerance", 0.02)
    theirs = sweep.point(claim["against"], claim.get("against_value"))
    good = sorted((p for p in sweep.points(claim["series"]) if p["test_accuracy"] >= theirs["test_accuracy"] - tolerance),
                  key=lambda p: _rate(p, claim))
    if not good:
        best = max(sweep.points(claim["series"]), key=lambda p: p["test_accuracy"])
        return Verdict("accuracy_at_rate", False,
                       f"{claim['series']} stayed below {claim['against']}'s accuracy less {tolerance:g} at every "
                       f"rate (best {_acc(best)} at {_bpp(best, claim):.2f} bpp of {rate_of(claim)[1]}, against "
                       f"{_acc(theirs)})" + _paper(claim),
                       None, claim.get("paper"))
    point = good[0]
    return Verdict("accuracy_at_rate", True,
                   f"{claim['series']} kept {claim['against']}'s accuracy ({_acc(point)} vs {_acc(theirs)}) down to "
                   f"{_bpp(point, claim):.2f} bits per input pixel ({_rate(point, claim):,.1f} "
                   f"{rate_of(claim)[1]}, {point['knob'] or 'knob'} {point['knob_value']})" + _paper(claim),
                   _bpp(point, claim), claim.get("paper"))


def _bpp(point: dict, claim: dict) -> float:
    return 8 * _rate(point, claim) / PIXELS


CLAIMS = {f.__name__: f for f in (ratio, same_accuracy_fewer_bytes, accuracy_gain, speedup_to_accuracy, monotone,
                                   dominates, accuracy_at_rate)}


# --- the table and the report ---------------------------------------------------------------------------------

def table_rows(sweep: Sweep, rows: list[dict], reference: str | None, unit: str = "stream") -> list[dict]:
    """Each ``[[reproduce.table]]`` row (``series``, optional ``value``, ``paper``: the
    paper's columns) with the measured stream and payload bytes per sample, bpp in the
    spec's ``unit`` (a name of ``RATES``), accuracy and, with a ``reference`` series, the
    accuracy loss against it."""
    try:
        base = sweep.point(reference) if reference else None
    except ReproduceError:  # the reference has no one point: the rows go without their loss against it
        base = None
    out = []
    for row in rows:
        try:
            point = sweep.point(row["series"], row.get("value"))
        except ReproduceError as exc:
            out.append({"series": row["series"], "value": row.get("value"), "paper": row.get("paper", {}),
                        "measured": None, "missing": str(exc)})
            continue
        measured = {"stream bytes per sample": round(point["bytes_per_sample_sent"], 1)}
        for name, rate in RATES.items():
            if name != "stream" and point.get(rate.figure) is not None:
                measured[rate.name] = round(point[rate.figure], 1)
        rate = {"rate": unit} if unit != "stream" else {}
        if point.get(rate_of(rate)[0]) is not None:
            measured[f"bpp ({rate_of(rate)[1]})"] = round(_bpp(point, rate), 3)
        measured.update({"accuracy": _acc(point), "seeds": point["n"]})
        if point.get("samples_total") is not None:  # how equal the starting points were
            measured["samples trained before streaming (per source)"] = round(point.get("pretrain_samples_per_source") or 0)
            measured["samples streamed (all sources)"] = round(point["samples_total"])
        if base is not None:
            measured[f"loss vs {reference} (points)"] = round(100 * (base["test_accuracy"] - point["test_accuracy"]), 2)
        out.append({"series": row["series"], "value": row.get("value"), "paper": row.get("paper", {}),
                    "measured": measured})
    return out


def reproduce(sweep_dir: str | Path, spec: dict, *, scale: str | None = None, command: str = "") -> Reproduction:
    """Evaluate the claims and the table of ``spec`` (the ``[reproduce]`` table) on the
    sweep in ``sweep_dir``; write ``reproduce.md`` and ``reproduce.json`` there."""
    sweep = Sweep(sweep_dir)
    result = Reproduction()
    unit = spec.get("rate", "stream")
    for claim in spec.get("claims", []):
        if "rate" not in claim and unit != "stream" and claim.get("kind") != "ratio":
            claim = {**claim, "rate": unit}
        kind = CLAIMS.get(claim.get("kind"))
        if kind is None:
            raise ReproduceError(f"unknown claim kind {claim.get('kind')!r}; known: {', '.join(CLAIMS)}")
        try:
            result.verdicts.append(kind(sweep, claim))
        except ReproduceError as exc:
            result.verdicts.append(Verdict(claim["kind"], None, str(exc)))
    try:
        rate_of({"rate": unit})
    except ReproduceError as exc:
        raise ReproduceError(f"[reproduce] rate: {exc}") from None
    result.table = table_rows(sweep, spec.get("table", []), spec.get("reference"), unit)
    result.markdown = _write(Path(sweep_dir), spec, result, scale, command, sweep)
    return result


def _write(folder: Path, spec: dict, result: Reproduction, scale, command: str, sweep: Sweep) -> Path:
    lines = [f"# {spec.get('title', folder.name)}", "",
             f"Paper {', '.join(str(x) for x in (spec.get('paper', '?'), spec.get('figures')) if x)}. "
             f"Scale: {scale or 'as the spec says'}."
             + (f" Command: `{command}`." if command else ""), ""]
    if spec.get("scale_notes", {}).get(scale or ""):
        lines += [spec["scale_notes"][scale], ""]
    lines += [f"Rates are compared as {rate_of({'rate': spec.get('rate', 'stream')})[1]}, the unit the paper "
              "counts (stream bytes: everything on the wire; payload bytes: what the method itself codes).", "",
              "## Does the paper's ordering hold?", ""]
    for verdict in result.verdicts:
        mark = {True: "holds", False: "does not hold", None: "cannot say"}[verdict.holds]
        lines.append(f"- **{mark}**: {verdict.statement}")
    if spec.get("why"):
        lines += ["", spec["why"]]
    if result.table:
        paper_cols = []
        for row in result.table:
            paper_cols += [c for c in row["paper"] if c not in paper_cols]
        measured_cols = []
        for row in result.table:
            measured_cols += [c for c in (row["measured"] or {}) if c not in measured_cols]
        lines += ["", "## Paper beside measured", "",
                  "| series | value | " + " | ".join(f"paper: {c}" for c in paper_cols) + " | "
                  + " | ".join(f"measured: {c}" for c in measured_cols) + " |",
                  "| --- " * (2 + len(paper_cols) + len(measured_cols)) + "|"]
        for row in result.table:
            measured = row["measured"] or {}
            lines.append(f"| {row['series']} | {'' if row['value'] is None else row['value']} | "
                         + " | ".join(str(row["paper"].get(c, "")) for c in paper_cols) + " | "
                         + " | ".join(str(measured.get(c, row.get("missing", ""))) for c in measured_cols) + " |")
    if sweep.failed:
        lines += ["", "## Failed trials", ""] + [f"- {r['trial']}: {r['error']}" for r in sweep.failed]
    figures = [f for f in spec.get("figures_drawn", []) if (folder / "report" / f"{f}.png").exists()]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f}](report/{f}.png)" for f in figures]
    path = folder / "reproduce.md"
    path.write_text("\n".join(lines) + "\n")
    (folder / "reproduce.json").write_text(json.dumps(
        {"title": spec.get("title"), "paper": spec.get("paper"), "scale": scale,
         "verdicts": [v.__dict__ for v in result.verdicts], "table": result.table}, indent=2, default=str) + "\n")
    return path
