"""analysis on real run directories made by `testbed run`."""
import json
import shutil

import nbformat
import pytest
from nbclient import NotebookClient

from analysis import RunDirError, load_runs, metrics, write_report
from analysis.load import BATCH_COLUMNS, EVAL_COLUMNS, SOURCE_COLUMNS

from conftest import REPO, run_testbed

NOTEBOOKS = sorted((REPO / "analysis" / "notebooks").glob("*.ipynb"))


def test_analysis_imports_nothing_of_the_programs():
    for path in (REPO / "analysis").glob("*.py"):
        text = path.read_text()
        assert "import testbed" not in text and "from testbed" not in text
        assert "import workloads" not in text and "from workloads" not in text


def test_schema_and_metrics_agree_with_the_summary(tiny_run):
    out, _ = tiny_run
    runs = load_runs([out])
    assert runs.problems == []
    assert list(runs.batches.columns) == BATCH_COLUMNS and list(runs.evals.columns) == EVAL_COLUMNS
    assert list(runs.sources.columns) == SOURCE_COLUMNS
    assert runs.labels == ["none", "filter"]
    assert len(runs.batches) == 2 * 2 * 3 * 2  # arms x sources x batches x epochs
    summary = json.loads((out / "summary.json").read_text())
    cumulative = metrics.cumulative_bytes(runs.batches).groupby("label").last()
    for arm in ("none", "filter"):
        assert cumulative.loc[arm, "mb_sent"] * 1e6 == pytest.approx(summary["arms"][arm]["bytes_sent_total"])
    rates = metrics.samples_per_second(runs.batches)
    for arm in ("none", "filter"):
        expected = summary["arms"][arm]["samples_per_s_per_source"]
        assert rates[rates["label"] == arm]["samples_per_s"].round(3).tolist() == pytest.approx(expected, abs=1e-3)
    table = metrics.arm_table(runs).set_index("label")
    assert table.loc["filter", "traffic_ratio"] == pytest.approx(summary["comparison"]["traffic_ratio"], rel=1e-3)
    assert table.loc["filter", "throughput_ratio"] == pytest.approx(summary["comparison"]["throughput_ratio"], rel=1e-2)
    samples = metrics.samples_over_time(runs.batches).groupby(["label", "source"])["samples_done"].last()
    assert set(samples) == {8 * 3 * 2}
    curves = metrics.accuracy_curves(runs)
    assert curves.groupby("label")["epoch"].apply(list).to_dict() == {"filter": [0, 1], "none": [0, 1]}
    assert (curves.groupby("label")["mb_total"].diff().dropna() > 0).all()


def test_report_writes_every_figure_and_the_table(tiny_run, tmp_path):
    out, _ = tiny_run
    result = run_testbed("report", out, "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    for name in ("traffic", "throughput", "summary", "accuracy"):
        for ext in ("png", "svg"):
            path = tmp_path / "report" / f"{name}.{ext}"
            assert path.stat().st_size > 5000, path
    assert (tmp_path / "report" / "traffic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| filter | 2 |" in markdown and "![Data traffic](traffic.png)" in markdown


def test_runs_of_different_settings_are_drawn_together(tiny_run, tmp_path):
    out, _ = tiny_run
    other = tmp_path / "other"
    shutil.copytree(out, other)
    runs = load_runs([out, other])
    assert runs.labels == ["none (run)", "filter (run)", "none (other)", "filter (other)"]
    table = metrics.arm_table(runs).set_index("label")
    assert table.loc["filter (other)", "traffic_ratio"] > 7  # against the none arm of its own run
    report = write_report([out, other], tmp_path / "both")
    assert len(report.figures) == 8


def test_a_partial_run_is_drawn_with_clear_warnings(tiny_run, tmp_path):
    out, _ = tiny_run
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    (partial / "summary.json").unlink()
    (partial / "filter" / "source-1.jsonl").unlink()
    trace = partial / "none" / "source-0.jsonl"
    lines = trace.read_text().splitlines()
    trace.write_text("\n".join(lines[:-3] + [lines[-3][:25]]) + "\n")  # died while writing
    result = run_testbed("report", partial)
    assert result.returncode == 0, result.stderr
    assert "summary.json is missing" in result.stderr
    assert "source-1.jsonl" in result.stderr and "1 of 2 source traces are missing" in result.stderr
    assert "is not a complete JSON event" in result.stderr and "no end event" in result.stderr
    assert "Traceback" not in result.stderr
    assert (partial / "report" / "traffic.png").exists() and (partial / "report" / "accuracy.png").exists()


def test_a_missing_or_empty_directory_is_a_one_line_error(tmp_path):
    result = run_testbed("report", tmp_path / "nothing")
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "is not a run directory" in result.stderr
    with pytest.raises(RunDirError, match="holds no traces"):
        load_runs([tmp_path])


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_run_headless(notebook, tiny_run, monkeypatch):
    out, _ = tiny_run
    monkeypatch.setenv("SPLITTEST_RUN_DIR", str(out))
    monkeypatch.setenv("SPLITTEST_RUN_DIRS", str(out))
    nb = nbformat.read(notebook, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "commit notebooks without outputs"
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "the notebook drew no figure"


def test_at_least_two_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"traffic_and_throughput", "compare_runs"}
