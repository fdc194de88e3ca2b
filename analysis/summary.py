"""``summary.json`` and the table ``testbed run`` prints at the end, from an arm's traces.

What every figure is (the keys of an arm in ``summary.json``, their definitions, titles and
formats) is declared in :mod:`analysis.figures`; :mod:`analysis.metrics` computes them. This
module only reads one arm folder, checks that every source ended well, and lays the figures
out. ``report.md`` takes the same figures from the same functions, so the two always agree.

An arm of ``summary.json`` holds module, sources, cpu_cap, cap_method, then every figure of
:func:`analysis.metrics.arm_figures`. ``comparison`` (from :func:`compare`) holds baseline,
module (the first other arm) and its ratios (the figures of family "comparison"), and
by_module with those ratios for every other arm.

The printed table has a row per declaration shown in "table" (``ROWS``), then the optional
ones (``LINK_ROWS``: the link and latency figures) that hold a value for at least one arm
(runs without a link or latency parts print none of them). The lines below the table say
what bound each arm, then its link trace, adaptation and lost sources, the ratios, and last
what the figures do not measure (:mod:`analysis.caveats`).
"""
from __future__ import annotations

from pathlib import Path

from . import metrics
from .caveats import caveats
from .errors import AnalysisError
from .figures import cell, shown
from .load import RunDirError, load_arm


class SummaryError(AnalysisError):
    """An arm cannot be summarised: a source did not end well, or a trace is missing or
    damaged. The message is one line and names the trace."""
    status = 1  # the run failed


def summarise_arm(arm_dir, module: str, sources: int, cpu_cap: float, cap_method: str, *,
                  strict: bool = True) -> dict:
    """The figures of one arm folder (``server.jsonl``, ``source-0..N-1.jsonl``).

    Strict (the default, as ``testbed`` runs it) raises SummaryError when a trace is
    missing or damaged, a source has no ``end`` event or ended with a status other than
    ok, or traced no batch; otherwise ``status_per_source`` names each source's end. A
    source the testbed saw die (``testbed.jsonl``) is not an error: it is "lost", listed
    in ``lost_sources``, and the arm is ``partial``."""
    arm_dir = Path(arm_dir)
    try:
        runs = load_arm(arm_dir, sources)
    except RunDirError as exc:
        raise SummaryError(str(exc)) from None
    if strict:
        _check(arm_dir, runs, sources)
    labels = runs.labels
    if not labels:
        raise SummaryError(f"{arm_dir}: no source trace holds any event")
    figures = metrics.arm_figures(runs, caps={labels[0]: cpu_cap})[labels[0]]
    for key in ("run", "arm", "label", "module", "sources", "cpu_cap"):
        figures.pop(key, None)
    return {"module": module, "sources": sources, "cpu_cap": cpu_cap, "cap_method": cap_method, **figures}


def _check(arm_dir: Path, runs, sources: int) -> None:
    lost = set(runs.sources.loc[runs.sources["status"] == "lost", "source"].astype(int))
    missing = [f"source-{i}.jsonl" for i in range(sources)
               if not (arm_dir / f"source-{i}.jsonl").exists() and i not in lost]
    if missing:
        raise SummaryError(f"{arm_dir}: no trace {', '.join(missing)} (did the source start?)")
    if not (arm_dir / "server.jsonl").exists():
        raise SummaryError(f"{arm_dir}: no trace server.jsonl (did the server start?)")
    for source in runs.sources.itertuples():
        path = arm_dir / f"source-{source.source}.jsonl"
        if source.status == "lost":
            continue
        if source.status == "no end event":
            raise SummaryError(f"{path}: no 'end' event (did the source die?)")
        if source.status != "ok":
            end = runs.events[(runs.events["role"] == "source") & (runs.events["source"] == source.source)
                              & (runs.events["event"] == "end")]
            error = end["error"].iloc[-1] if "error" in end and isinstance(end["error"].iloc[-1], str) else ""
            raise SummaryError(f"{path}: the source ended with status {source.status}: {error}".rstrip(": "))
    problems = [p for p in runs.problems if not any(f"source {i}:" in p or f"source-{i}.jsonl" in p for i in lost)]
    if problems:
        raise SummaryError(problems[0])
    counted = runs.batches.groupby("source").size()
    for i in range(sources):
        if counted.get(i, 0) == 0 and i not in lost:
            raise SummaryError(f"{arm_dir / f'source-{i}.jsonl'}: no batch was traced")


def compare(arms: dict[str, dict], baseline: str = "none") -> dict | None:
    """Traffic and throughput of every module arm against the baseline arm."""
    if baseline not in arms or len(arms) < 2:
        return None
    by_module = {name: metrics.comparison(arms[baseline], arm) for name, arm in arms.items() if name != baseline}
    first = next(iter(by_module))
    return {"baseline": baseline, "module": first, **by_module[first], "by_module": by_module}


# the printed table's rows: every declaration shown in "table"; the optional ones only where an arm has a value
ROWS = tuple(d for d in shown("table") if not d.optional)
LINK_ROWS = tuple(d for d in shown("table") if d.optional)


def table_cells(arm: dict, rows=ROWS) -> list[str]:
    """The printed table's cells of one arm, in ROWS order (or ``rows``'; "-" where a figure
    is unknown)."""
    return [cell(d, d.one(arm)) for d in rows]


def format_table(summary: dict) -> str:
    arms = summary["arms"]
    names = list(arms)
    link_cells = {name: table_cells(arms[name], LINK_ROWS) for name in names}
    known = [i for i in range(len(LINK_ROWS)) if any(link_cells[n][i] != "-" for n in names)]
    rows = list(ROWS) + [LINK_ROWS[i] for i in known]
    columns = {name: table_cells(arms[name]) + [link_cells[name][i] for i in known] for name in names}
    widths = {name: max(14, len(name) + 2, *(len(c) + 2 for c in columns[name])) for name in names}
    width = max(len(r.title) for r in rows) + 2
    lines = [" " * width + "".join(f"{n:>{widths[n]}}" for n in names)]
    for row, declared in enumerate(rows):
        lines.append(f"{declared.title:<{width}}" + "".join(f"{columns[n][row]:>{widths[n]}}" for n in names))
    for name in names:
        if arms[name].get("bound_reason"):
            lines.append(f"{name}: bound by {arms[name].get('bound_by') or 'unknown'}: {arms[name]['bound_reason']}")
    for name in names:
        for direction, f in (arms[name].get("link_trace_fidelity") or {}).items():
            if f:
                lines.append(f"{name}: link trace {direction}: {fidelity_text(f)}")
    for name in names:
        if arms[name].get("adapt_policy"):
            lines.append(f"{name}: {adapt_text(arms[name])}")
    for name in names:
        if arms[name].get("partial_note"):
            lines.append(f"{name}: {arms[name]['partial_note']}")
    comparison = summary.get("comparison")
    if comparison:
        for name, c in comparison["by_module"].items():
            lines.append(f"{name} vs {comparison['baseline']}: traffic ratio {_x(c['traffic_ratio'])} "
                         f"(sent {_x(c['traffic_ratio_sent'])}, received {_x(c['traffic_ratio_received'])}), "
                         f"throughput ratio {c['throughput_ratio'] if c['throughput_ratio'] is not None else '-'}")
    lines += [f"note: {line}" for line in caveats(arms)]
    return "\n".join(lines)


def adapt_text(arm: dict) -> str:
    """An adapting arm's figures in words (the printed table, report.md)."""
    levels = ", ".join(f"{k}: {v:.0f} s" for k, v in (arm.get("adapt_time_at_level") or {}).items())
    within = arm.get("adapt_within_target")
    return (f"adapted by {arm['adapt_policy']} to {arm['adapt_target_samples_per_s']:g} samples/s: "
            f"{arm['adapt_decisions']} decisions, {arm['adapt_changes']} changes "
            f"({arm['adapt_changes_per_min']} per minute of steps), "
            f"{'-' if within is None else f'{within:.0%}'} of the intervals at 75% of the target or more "
            f"(worst {arm['adapt_samples_per_s_min']}, median {arm['adapt_samples_per_s_median']} samples/s); "
            f"seconds at each {arm['adapt_level_name']}: {levels}")


def fidelity_text(f: dict) -> str:
    """One traced direction's link_trace_fidelity in words (the printed table, report.md)."""
    correlation = "-" if f.get("correlation") is None else f"{f['correlation']:.3f}"
    return (f"delivered vs capacity per second: correlation {correlation}, mean absolute error "
            f"{f['mae_mbit_s']:.3f} Mbit/s over {f['seconds']} s of training (mean capacity "
            f"{f['mean_capacity_mbit_s']:.3f}, delivered {f['mean_delivered_mbit_s']:.3f} Mbit/s)")


def _x(ratio) -> str:
    return "-" if ratio is None else f"{ratio:.1f}x"
