"""Every figure of a run is declared once (analysis/figures.py): a figure summary.json holds
has a declaration, a declaration names a figure summary.json holds, and every place a
declaration says it is shown (the printed table, report.md's tables, the sweep table)
shows it, written as declared. The arms are hand-written traces: no process is started."""
import json

import pytest

from analysis import figures
from analysis.figures import COLUMNS, DECLARED, FIGURES, PLACES, REDUCTIONS, SCALES, Figure, cell, one, shown
from analysis.report import write_report
from analysis.summary import LINK_ROWS, ROWS, compare, format_table, summarise_arm

from test_analysis import write_arm, write_arm_with_a_lost_source
from test_link_analysis import SHARED_TRACE, write_link_arm

pytestmark = pytest.mark.quick


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder of two arms (none, and a second one behind a trace-driven shared link with
    latency parts) and its summary.json, as the runner writes it; plus an arm with a lost source."""
    folder = tmp_path_factory.mktemp("figures") / "run"
    write_arm(folder / "none", pretrain=7.0, lr_scale=0.5)
    write_link_arm(folder / "filter", module="filter", **SHARED_TRACE)
    for i in range(2):  # the filter arm adapted (--adapt): its adapt figures hold numbers to round
        with open(folder / "filter" / f"source-{i}.jsonl", "a") as trace:
            trace.write(json.dumps({"t": 109.0, "role": "source", "source": i, "event": "adapt_start",
                                    "policy": "threshold", "level_name": "budget", "levels": [4, 8],
                                    "target_samples_per_s": 9.0, "interval_s": 2.0}) + "\n")
            for k, (rate, level, value) in enumerate([(7.123456, 8, 4), (9.87654, 4, 4), (11.1111, 4, 8)]):
                trace.write(json.dumps({"t": 111.0 + k, "role": "source", "source": i, "event": "adapt",
                                        "interval": k, "samples": 10, "bytes": 1000, "network_s": 0.3333333,
                                        "compute_s": 0.4444444, "samples_per_s": rate, "level": value,
                                        "value": value, "previous": level, "changed": level != value,
                                        "reason": "test"}) + "\n")
    arms = {"none": summarise_arm(folder / "none", "none", 2, 0.4, "test"),
            "filter": summarise_arm(folder / "filter", "filter", 2, 0.4, "test")}
    summary = {"run": "run", "arms": arms, "comparison": compare(arms)}
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    lost = summarise_arm(write_arm_with_a_lost_source(folder.parent / "lost" / "none"), "none", 2, 0.5, "test")
    return folder, json.loads((folder / "summary.json").read_text()), lost


def test_every_figure_of_a_summary_is_declared(run):
    _, summary, lost = run
    for arm in [*summary["arms"].values(), lost]:
        undeclared = set(arm) - {name for name, f in FIGURES.items() if f.scope != "comparison"}
        assert not undeclared, f"summary.json figures without a declaration in analysis/figures.py: {undeclared}"
    ratios = set(summary["comparison"]) - {"baseline", "module", "by_module"}
    for one_arm in summary["comparison"]["by_module"].values():
        ratios |= set(one_arm)
    assert ratios == {name for name, f in FIGURES.items() if f.scope == "comparison"}


def test_every_declared_figure_is_in_the_summary_with_its_scope_and_rounding(run):
    _, summary, lost = run
    assert summary["arms"]["filter"]["adapt_changes_per_min"] is not None  # the adapt figures are computed
    for name, declared in FIGURES.items():
        for arm in [*summary["arms"].values(), lost]:
            if declared.scope == "comparison":
                continue
            assert name in arm, f"{name} is declared but summary.json has no such figure"
            value = arm[name]
            if declared.scope == "per source" and value is not None:  # None: an arm without a link
                assert isinstance(value, list) and len(value) == arm["sources"], name
            if declared.decimals is not None:  # every number in it, nested ones too, rounded as declared
                for number in _numbers(value):
                    assert number == round(number, declared.decimals), (name, number)
    for ratios in summary["comparison"]["by_module"].values():
        for name, value in ratios.items():
            assert value is None or value == round(value, FIGURES[name].decimals), name


def _numbers(value):
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return [value] if isinstance(value, float) else []


def test_the_declarations_are_whole():
    assert len(COLUMNS) == len(DECLARED), "two declarations share a name"
    for d in DECLARED:
        assert d.definition and all(place in PLACES for place in d.shown_in), d.name
        assert (d.scale is None or d.scale in SCALES) and (d.title or not set(d.shown_in) - {"sweep"}), d.name
        if isinstance(d, Figure):
            assert d.scope in figures.SCOPES and d.family in figures.FAMILIES, d.name
            assert d.reduce is None or d.reduce in REDUCTIONS, d.name
            if d.scope == "per source" and d.shown_in:  # a cell or a sweep column holds one number
                assert d.reduce, f"{d.name} is shown but does not say how it becomes one number"
        else:
            assert d.of and all(name in FIGURES for name in d.of), d.name
    for place in PLACES:
        titles = [d.title for d in shown(place)]
        assert place == "latency table" or len(titles) == len(set(titles)), f"a title twice in {place}"


def test_the_printed_table_shows_what_its_declarations_say(run):
    _, summary, _ = run
    lines = format_table(summary).splitlines()
    assert [d.name for d in ROWS + LINK_ROWS] == [d.name for d in shown("table")]
    for row, declared in enumerate(ROWS + LINK_ROWS):  # the filter arm has a link: every optional row shows
        line = lines[1 + row]
        assert line.startswith(declared.title), f"{declared.name} is declared shown in the table but is not"
        cells = line[len(declared.title):].split()
        expected = [cell(declared, one(declared.name, summary["arms"][name])) for name in ("none", "filter")]
        assert " ".join(cells) == " ".join(expected), declared.name


def test_report_md_shows_what_its_declarations_say(run, tmp_path):
    folder, summary, _ = run
    text = write_report([folder], tmp_path / "report").markdown.read_text().splitlines()

    def table(header_start: str) -> list[list[str]]:
        first = next(i for i, line in enumerate(text) if line.startswith(header_start))
        rows = []
        for line in text[first:]:
            if not line.startswith("|"):
                break
            rows.append([c.strip() for c in line.strip("|").split("|")])
        return [rows[0]] + rows[2:]

    for place, header in (("report", "| arm | sources"), ("link table", "| arm | link")):
        rows = table(header)
        assert rows[0] == ["arm"] + [d.title for d in shown(place)], f"report.md's {place} is not as declared"
        for values in rows[1:]:
            arm = summary["arms"][values[0]]
            ratios = figures.comparison_of(summary, values[0]) or {"traffic_ratio": 1.0, "throughput_ratio": 1.0}
            for declared, written in zip(shown(place), values[1:]):
                assert written == cell(declared, declared.one(arm, ratios), "–"), (place, declared.name)
    latency = table("| arm | phase")
    arm = summary["arms"]["filter"]
    for values in latency[1:]:
        assert values[0] == "filter"
        phase = values[1]
        for declared in shown("latency table"):
            if declared.name.startswith(f"latency_{phase}_p"):
                title = declared.name.split("_")[2] + " (ms)"  # p50 (ms), p95 (ms)
                assert values[latency[0].index(title)] == cell(declared, arm[declared.name], "–"), declared.name
            elif declared.name == f"latency_parts_{phase}":
                assert values[4:] == [cell(declared, (arm[declared.name] or {}).get(p), "–")
                                      for p in [*figures_parts()]], declared.name


def figures_parts():
    from analysis.metrics import LATENCY_PARTS, ONE_WAY
    return [*LATENCY_PARTS, *ONE_WAY]


def test_the_sweep_table_has_a_column_per_declaration_shown_there(run):
    from testbed.sweep.table import METRICS, _csv

    _, summary, _ = run
    assert list(METRICS) == [d.name for d in shown("sweep")]
    arm = summary["arms"]["none"]
    row = {"trial": "t", "status": "ok", "params": {}, "metrics": {m: one(m, arm) for m in METRICS}}
    header, values = _csv([row]).splitlines()
    assert header.split(",")[-len(METRICS):] == list(METRICS)
    assert row["metrics"]["samples_per_s_per_source"] == 9.0  # a per-source figure: its declared mean
    assert row["metrics"]["bytes_sent_total"] == arm["bytes_sent_total"]


def test_a_view_and_a_reduction_take_the_figures_as_declared():
    arm = {"cpu_share_over_cap_per_source": [1.2, None, 0.9, 1.0], "bytes_sent_total": 3_000_000,
           "bytes_received_total": 1_000_000, "payload_sent_total": 1_000_000, "payload_received_total": 1_000_000,
           "lost_sources": [{"source": 3}, {"source": 5}], "latency_train_p50_s": 0.25}
    assert one("cpu_share_over_cap_per_source", arm) == 1.0      # the median of the known values
    assert one("cpu_share_over_cap_min", arm) == 0.9
    assert one("wire_over_payload", arm) == 2.0
    assert one("lost_sources", arm) == "3, 5" and one("lost_sources", {"lost_sources": []}) == "none"
    assert cell(COLUMNS["bytes_sent_total"], 3_000_000) == "3.000"          # shown in MB
    assert cell(COLUMNS["latency_train_p50_s"], 0.25) == "250.0"            # shown in ms
    assert cell(COLUMNS["final_loss"], None) == "-" and cell(COLUMNS["final_loss"], None, "–") == "–"


def test_the_readme_lists_every_declaration():
    from testbed.generate import REPO, figures_table

    table = figures_table()
    assert table in (REPO / "README.md").read_text(), "run python -m testbed.generate"
    for d in DECLARED:
        assert f"| `{d.name}` |" in table, d.name
