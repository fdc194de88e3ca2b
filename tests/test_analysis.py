"""analysis on real run directories made by `testbed run`."""
import json
import shutil

import nbformat
import pytest
from nbclient import NotebookClient

from analysis import RunDirError, load_runs, metrics, write_report
from analysis.load import BATCH_COLUMNS, EVAL_COLUMNS, SOURCE_COLUMNS

from conftest import REPO, read_jsonl, run_testbed

NOTEBOOKS = sorted((REPO / "analysis" / "notebooks").glob("*.ipynb"))


def test_analysis_imports_nothing_of_the_programs():
    for path in (REPO / "analysis").rglob("*.py"):
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
    # no link: no throughput-vs-bandwidth or link-trace figure; the latency figure where traced
    expected = {"traffic", "throughput", "summary", "accuracy"}
    if runs.batches["latency_s"].notna().any():
        expected.add("latency")
    assert {p.stem for p in report.figures} == expected and len(report.figures) == 2 * len(expected)


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
def test_notebooks_run_headless(notebook, tiny_run, monkeypatch, request):
    out, _ = tiny_run
    monkeypatch.setenv("SPLITTEST_RUN_DIR", str(out))
    monkeypatch.setenv("SPLITTEST_RUN_DIRS", str(out))
    if notebook.stem == "sweep":  # the shared sweep (conftest), not one of the notebook's own
        monkeypatch.setenv("SPLITTEST_SWEEP_DIR", str(request.getfixturevalue("tiny_sweep")[0]))
    nb = nbformat.read(notebook, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "commit notebooks without outputs"
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "the notebook drew no figure"


@pytest.mark.quick
def test_the_sweep_notebooks_own_sweep_is_a_valid_spec(tmp_path):
    """Left without SPLITTEST_SWEEP_DIR, the sweep notebook runs `testbed sweep` on a spec of its
    own (the test above gives it the shared sweep): that spec expands and passes testbed run's checks."""
    from testbed.sweep import check_trials, load_spec

    first = next(c.source for c in nbformat.read(REPO / "analysis" / "notebooks" / "sweep.ipynb", as_version=4).cells
                 if c.cell_type == "code")
    (tmp_path / "spec.toml").write_text(first.split('write_text("""', 1)[1].split('""")', 1)[0])
    spec = load_spec(tmp_path / "spec.toml")
    check_trials(spec)
    assert len(spec.trials) == 6 and '"testbed.cli", "sweep"' in first


def test_at_least_two_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"traffic_and_throughput", "compare_runs", "sweep"}


# -- one implementation of every figure: summary.json, the printed table, report.md ------------

from analysis.figures import cell, comparison_of, shown  # noqa: E402
from analysis.summary import ROWS, SummaryError, compare, format_table, summarise_arm, table_cells  # noqa: E402


def _report_rows(markdown: str) -> dict[str, dict[str, str]]:
    """report.md's (first) table: arm -> {column title: cell}."""
    text = markdown.splitlines()
    first = next(i for i, line in enumerate(text) if line.startswith("|"))
    lines = [line for line in text[first:first + next(i for i, line in enumerate(text[first:] + [""])
                                                      if not line.startswith("|"))]]
    titles = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(titles, cells))
    return rows


def test_report_and_summary_show_the_same_figures(tiny_run):
    """report.md's numbers (from the traces, through metrics.arm_table) are summary.json's, each
    taken and written as its declaration says; so are the printed table's."""
    out, result = tiny_run
    summary = json.loads((out / "summary.json").read_text())
    markdown = (out / "report" / "report.md").read_text()
    shown_cells = _report_rows(markdown)
    assert set(shown_cells) == {"none", "filter"}
    for name in ("none", "filter"):
        arm = summary["arms"][name]
        ratios = comparison_of(summary, name) or metrics.comparison(arm, arm)  # the baseline against itself
        assert list(shown_cells[name]) == ["arm"] + [d.title for d in shown("report")]
        for declared in shown("report"):
            value = declared.one(arm, ratios)
            assert value is not None, (name, declared.name)
            assert shown_cells[name][declared.title] == cell(declared, value, "–"), (name, declared.name)
        assert f"- {name}: {arm['bound_by']}: {arm['bound_reason']}" in markdown
    # the table printed at the end of `testbed run` shows summary.json's figures too
    printed = result.stdout.splitlines()
    header = next(i for i, line in enumerate(printed) if line.split() == ["none", "filter"])
    for row, declared in enumerate(ROWS):
        line = printed[header + 1 + row]
        assert line.startswith(declared.title)
        cells = line[len(declared.title):].split()
        none, filt = table_cells(summary["arms"]["none"])[row], table_cells(summary["arms"]["filter"])[row]
        assert none == cell(declared, declared.one(summary["arms"]["none"]))
        assert " ".join(cells) == f"{none} {filt}", declared.title
    assert format_table(summary).splitlines()[:len(ROWS) + 1] == printed[header:header + len(ROWS) + 1]


def test_the_summary_of_an_arm_is_what_the_loader_and_metrics_compute(tiny_run):
    out, _ = tiny_run
    summary = json.loads((out / "summary.json").read_text())
    figures = metrics.arm_figures(load_runs([out]))
    for name, arm in summary["arms"].items():
        for key, value in figures[name].items():
            if key not in ("run", "arm", "label"):
                assert arm[key] == value, (name, key)
        again = summarise_arm(out / name, name, 2, 0.4, arm["cap_method"])
        assert again == arm
    assert compare(summary["arms"]) == summary["comparison"]


def test_duration_and_final_loss_follow_their_definitions_on_a_real_run(tiny_run):
    out, _ = tiny_run
    summary = json.loads((out / "summary.json").read_text())
    for name in ("none", "filter"):
        traces = [read_jsonl(out / name / f"source-{i}.jsonl") for i in range(2)]
        created = min(e["process_created"] for t in traces for e in t if e["event"] == "start")
        ended = max(e["t"] for t in traces for e in t if e["event"] == "end")
        arm = summary["arms"][name]
        assert arm["duration_s"] == pytest.approx(ended - created, abs=1e-3)
        batches = [e for t in traces for e in t if e["event"] == "batch"]
        last = max(b["epoch"] for b in batches)
        pooled = [(b["loss"], b["samples"]) for b in batches if b["epoch"] == last]
        assert arm["final_loss"] == pytest.approx(sum(l * n for l, n in pooled) / sum(n for _, n in pooled), abs=1e-6)
        assert all("wait_s" in b and "cpu_s" in b for b in batches)
        assert all(0 <= b["wait_s"] <= b["duration_s"] for b in batches)
        assert [b["cpu_s"] for b in traces[0] if b["event"] == "batch"] == sorted(
            b["cpu_s"] for b in traces[0] if b["event"] == "batch")


def test_new_figures_appear_in_summary_table_and_report(tiny_run):
    out, result = tiny_run
    summary = json.loads((out / "summary.json").read_text())
    for arm in summary["arms"].values():
        assert len(arm["pretrain_s_per_source"]) == 2 and all(v >= 0 for v in arm["pretrain_s_per_source"])
        assert 0 <= arm["pretrain_share"] < 1 and isinstance(arm["server_lr_scale"], float)
        assert arm["status_per_source"] == ["ok", "ok"]
        assert all(v > 0 for v in arm["cpu_share_computing_per_source"])
        computing = arm["cpu_share_computing_per_source"]
        assert arm["cpu_share_over_cap_per_source"] == [round(v / 0.4, 4) for v in computing]
        assert all(0 <= v <= 1 for v in arm["reply_wait_share_per_source"])
        assert 0 < arm["server_busy_fraction"] <= 1
        assert arm["bound_by"] in (metrics.HOST, metrics.CAP, metrics.SERVER, metrics.ROUND_TRIP)
        assert arm["bound_reason"] and "\n" not in arm["bound_reason"]
        assert arm["cpu_share_per_source"] == arm["cpu_share_lifetime_per_source"]
    for row in ("pre-training (s, max)", "server lr scale", "waiting for replies", "server busy", "bound by",
                "CPU share / cap computing (min)"):
        assert row in result.stdout
    markdown = (out / "report" / "report.md").read_text()
    for title in ("pre-training (s, max)", "server lr scale", "server busy", "bound by"):
        assert f"| {title} |" in markdown or f" {title} |" in markdown


# -- hand-made traces with known figures ------------------------------------------------------

def _write(path, events):
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def write_arm(folder, *, cap_fields=True, wait=0.5, request_s=0.5, lr_scale=None, pretrain=0.0,
              status=("ok", "ok")):
    """An arm of 2 sources whose figures are known by hand.

    Source i starts its process at 100 + i; the server listens at 95 (earlier: no part of the
    duration) and ends at 140 (later). Each source: epoch 0 of batches ending at base, +1, +2
    (base = created + 10; the first is the warm-up, 2 s), an evaluation (3 s of CPU), epoch 1
    ending at base + 10, +11, +12 (samples 8, 8, 4; losses 1, 2, 4, plus i); each measured
    step lasts 0.8 s and waits ``wait`` s; a step costs 0.2 s of CPU; ends at created + 27.
    Server: 4 requests ending at 110..113, ``request_s`` s each."""
    folder.mkdir(parents=True)
    listening = {"t": 95.0, "role": "server", "event": "listening", "module": "none", "split": 2}
    if lr_scale is not None:
        listening["lr_scale"] = lr_scale
    server = [listening] + [{"t": 110.0 + k, "role": "server", "event": "request", "op": "grad",
                             "duration_s": request_s} for k in range(4)]
    _write(folder / "server.jsonl", server + [{"t": 140.0, "role": "server", "event": "end", "status": "ok",
                                                  "served": {"0": 2, "1": 2}}])
    for i in range(2):
        created = 100.0 + i
        base = created + 10
        events = [{"t": created + 1, "role": "source", "event": "start", "module": "none", "split": 2,
                   "process_created": created},
                  {"t": created + 1.5, "role": "source", "event": "data", "origin": "hand-made", "synthetic": True},
                  {"t": created + 2, "role": "source", "event": "prepared", "duration_s": pretrain}]
        cpu = 5.0
        ends = [(0, 0, base), (0, 1, base + 1), (0, 2, base + 2), (1, 0, base + 10), (1, 1, base + 11),
                (1, 2, base + 12)]
        samples = [8, 8, 8, 8, 8, 4]
        losses = [9.0, 9.0, 9.0, 1.0 + i, 2.0 + i, 4.0 + i]
        for j, (epoch, batch, t) in enumerate(ends):
            if j == 3:
                events.append({"t": base + 5, "role": "source", "event": "eval", "epoch": 0, "samples": 16,
                               "accuracy": 0.5, "bytes_sent": 100, "bytes_received": 10})
                cpu += 3.0  # the evaluation's CPU: outside the training window
            cpu += 0.2
            batch_event = {"t": t, "role": "source", "event": "batch", "epoch": epoch, "batch": batch,
                           "samples": samples[j], "warmup": j == 0, "duration_s": 2.0 if j == 0 else 0.8,
                           "bytes_sent": 1000, "bytes_received": 500, "payload_sent": 990,
                           "payload_received": 490, "loss": losses[j], "budget": 32}
            if cap_fields:
                batch_event.update(wait_s=1.0 if j == 0 else wait, cpu_s=round(cpu, 6))
            events.append(batch_event)
        events.append({"t": base + 15, "role": "source", "event": "eval", "epoch": 1, "samples": 16,
                       "accuracy": 0.6 + 0.1 * i, "bytes_sent": 100, "bytes_received": 10})
        end = {"t": created + 27, "role": "source", "event": "end", "status": status[i], "cpu_share": 0.3,
               "peak_rss_mb": 500.0}
        if status[i] != "ok":
            end["error"] = "server went away"
        if status[i] != "no end event":
            events.append(end)
        _write(folder / f"source-{i}.jsonl", events)
    return folder


def test_hand_made_arm_gives_the_figures_of_the_definitions(tmp_path):
    arm = summarise_arm(write_arm(tmp_path / "none", pretrain=7.0, lr_scale=0.5), "none", 2, 0.4, "test")
    assert arm["duration_s"] == 28.0  # first source process start (100) to the last source end (128)
    # pooled over the last epoch's 40 samples: (8*1 + 8*2 + 4*4 + 8*2 + 8*3 + 4*5) / 40
    assert arm["final_loss"] == 2.5
    assert arm["samples_per_s_per_source"] == [9.0, 9.0]  # 36 samples in 4 s of measured steps
    assert arm["samples_total"] == 2 * 44 and arm["bytes_sent_total"] == 12 * 1000
    # 4 pairs of steps inside an epoch: 0.8 s CPU over 4 x (1 s - 0.5 s waited); the eval's CPU is left out
    assert arm["cpu_share_computing_per_source"] == [0.4, 0.4]
    assert arm["cpu_share_over_cap_per_source"] == [1.0, 1.0]
    assert arm["cpu_share_lifetime_per_source"] == [0.3, 0.3]
    assert arm["reply_wait_share_per_source"] == [0.625, 0.625]  # 2.5 s waited in 4 s of steps
    assert arm["server_busy_fraction"] == pytest.approx(2.0 / 3.5, abs=1e-4)  # 4 x 0.5 s from 109.5 to 113
    assert arm["pretrain_s_per_source"] == [7.0, 7.0] and arm["pretrain_share"] == pytest.approx(7.0 / 28, abs=1e-4)
    assert arm["server_lr_scale"] == 0.5
    assert arm["test_accuracy"] == pytest.approx(0.65) and arm["startup_s_per_source"] == [10.0, 10.0]
    assert arm["eval_bytes_sent_total"] == 400 and arm["budgets"] == [32] and arm["split"] == 2
    assert arm["status_per_source"] == ["ok", "ok"]
    json.dumps(arm, allow_nan=False)  # plain JSON


def test_pooled_final_loss_weights_by_samples():
    import pandas as pd
    batches = pd.DataFrame({"label": ["a"] * 4, "epoch": [0, 1, 1, 1], "samples": [8, 2, 2, 12],
                            "loss": [100.0, 1.0, 1.0, 4.0]})
    assert metrics.pooled_final_loss(batches)["a"] == pytest.approx((2 + 2 + 48) / 16)  # not the mean of 1, 1, 4


def test_the_servers_busy_window_is_its_training_window(tmp_path):
    """Hello (before the sources' edge pre-training) and the last evaluation lie outside it."""
    folder = write_arm(tmp_path / "none")
    with open(folder / "server.jsonl", "a") as f:
        for event in ({"t": 96.0, "role": "server", "event": "request", "op": "welcome", "duration_s": 0.01},
                      {"t": 120.0, "role": "server", "event": "request", "op": "pred", "duration_s": 0.2}):
            f.write(json.dumps(event) + "\n")
    arm = summarise_arm(folder, "none", 2, 0.4, "test")
    assert arm["server_busy_fraction"] == pytest.approx(2.0 / 3.5, abs=1e-4)  # as without them


def test_server_lr_scale_is_unknown_and_old_traces_leave_new_figures_empty(tmp_path):
    arm = summarise_arm(write_arm(tmp_path / "none", cap_fields=False), "none", 2, 0.4, "test")
    assert arm["server_lr_scale"] is None  # traces written before it was recorded do not say
    assert arm["cpu_share_computing_per_source"] == [None, None] and arm["reply_wait_share_per_source"] == [None, None]
    assert arm["bound_by"] is None and "not known" in arm["bound_reason"]
    assert arm["samples_per_s_per_source"] == [9.0, 9.0]
    from analysis.load import load_arm
    batches = load_arm(tmp_path / "none").batches
    assert list(batches.columns) == BATCH_COLUMNS and batches["wait_s"].isna().all()
    assert "-" in table_cells(arm)


@pytest.mark.parametrize("cap, wait, request_s, expected", [
    (0.5, 0.5, 0.9, metrics.HOST),        # 0.4 CPU of a 0.5 cap while computing: 80% < 90%
    (0.2, 0.1, 0.9, metrics.CAP),         # 0.22 of 0.2 (111%) and waited 12.5% of each step
    (0.4, 0.5, 0.9, metrics.SERVER),      # 100% of the cap, waited 62.5%, server busy 92%
    (0.4, 0.5, 0.2, metrics.ROUND_TRIP),  # 100% of the cap, waited 62.5%, server busy 25%
])
def test_bound_by_on_hand_made_traces(tmp_path, cap, wait, request_s, expected):
    arm = summarise_arm(write_arm(tmp_path / "none", wait=wait, request_s=request_s), "none", 2, cap, "test")
    assert arm["bound_by"] == expected
    assert f"{arm['reply_wait_share_per_source'][0]:.0%}" in arm["bound_reason"]


@pytest.mark.parametrize("over_cap, wait, busy, expected", [
    ([0.6, 0.95], [0.9, 0.9], 0.99, metrics.HOST),   # median 78% < 90%: host, whatever else holds
    ([0.95, 1.4], [0.2, 0.4], 0.99, metrics.CAP),
    ([0.95, 1.4], [0.6, 0.9], 0.85, metrics.SERVER),
    ([0.95, 1.4], [0.6, 0.9], 0.5, metrics.ROUND_TRIP),
    ([0.95, 1.4], [0.6, 0.9], None, metrics.ROUND_TRIP),
    ([None, None], [0.6, 0.9], 0.9, metrics.SERVER),      # uncapped (--cap-method none): the waits tell
    ([None, None], [0.2, 0.3], 0.9, metrics.UNCAPPED),
    ([0.95, 1.4], [None, None], 0.9, None),                # no reply waits traced: not known
])
def test_bound_by_rule(over_cap, wait, busy, expected):
    name, reason = metrics.bound_by(over_cap, wait, busy)
    assert name == expected and reason and "\n" not in reason


@pytest.mark.parametrize("status, message", [(("ok", "error"), "ended with status error: server went away"),
                                             (("no end event", "ok"), "no 'end' event")])
def test_a_source_that_did_not_end_well_fails_the_summary(tmp_path, status, message):
    folder = write_arm(tmp_path / "none", status=status)
    with pytest.raises(SummaryError, match=message) as caught:
        summarise_arm(folder, "none", 2, 0.4, "test")
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)
    assert "source-" in str(caught.value)
    lenient = summarise_arm(folder, "none", 2, 0.4, "test", strict=False)
    assert lenient["status_per_source"] == list(status)
    with pytest.raises(SummaryError, match="source-2.jsonl"):
        summarise_arm(write_arm(tmp_path / "other"), "none", 3, 0.4, "test")


def test_testbed_fails_in_one_line_when_a_source_did_not_end_ok(tmp_path, capsys):
    """`testbed run`'s summary step, behind a backend that leaves a failed source's trace."""
    from testbed.backend import ArmResult, Backend
    from testbed.errors import Exit, exit_status
    from testbed.runner import run
    from testbed.spec import RunSpec

    class FailedSourceBackend(Backend):
        name = "hand-made"

        def run_arm(self, module, folder, run_id):
            write_arm(folder, status=("ok", "error"))
            return ArmResult(module, folder, "test", "none")

    spec = RunSpec(sources=2, cpu=0.4, modules=("none",), model="vgg11-slim", batches=3, epochs=2,
                   out=str(tmp_path / "run"))
    assert exit_status(lambda: run(spec, lambda *a, **k: None, FailedSourceBackend())) == Exit.FAILED
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("testbed: error: ") and "source-1.jsonl" in err
    assert "ended with status error" in err
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "failed"


# -- a lost source -------------------------------------------------------------------------

def write_arm_with_a_lost_source(folder):
    """``write_arm`` whose source 1 was killed (by --drop) after its third batch (epoch 0,
    batch 2, at t=113): its trace stops there, without an end event, and the testbed traced
    its loss at t=114 in testbed.jsonl."""
    write_arm(folder, status=("ok", "no end event"))
    kept = [e for e in read_jsonl(folder / "source-1.jsonl") if e["t"] <= 113.0]
    _write(folder / "source-1.jsonl", kept + [{"t": 113.5, "role": "source", "event": "drop", "after_s": 12.5}])
    _write(folder / "testbed.jsonl", [{"t": 114.0, "run": "r/none", "role": "testbed", "source": 1, "event": "lost",
                                       "cause": "killed by SIGKILL", "signal": "SIGKILL", "exit_status": None,
                                       "injected": True}])
    return folder


def test_an_arm_with_a_lost_source_is_summarised_over_what_was_done(tmp_path):
    arm = write_arm_with_a_lost_source(tmp_path / "run" / "none")
    summary = summarise_arm(arm, "none", 2, 0.5, "cgroup-v1")  # strict, as testbed runs it
    assert summary["status_per_source"] == ["ok", "lost"]
    assert summary["lost_sources"] == [{"source": 1, "cause": "killed by SIGKILL", "injected": True, "last_epoch": 0,
                                        "last_batch": 2, "batches_done": 3, "t": 14.0}]
    assert summary["partial"] is True
    assert "1 of 2 sources lost: source 1 (killed by SIGKILL, injected) after 3 batches" in summary["partial_note"]
    assert summary["samples_total"] == 44 + 24  # source 0's six batches, source 1's three
    assert summary["duration_s"] == 27.0  # to the last end event (source 0's)
    table = format_table({"arms": {"none": summary}, "comparison": None})
    assert [line for line in table.splitlines() if line.startswith("lost sources")][0].split()[-1] == "1"
    assert f"none: {summary['partial_note']}" in table

    (tmp_path / "run" / "summary.json").write_text(json.dumps({"arms": {"none": summary}}))
    report = write_report([tmp_path / "run"], tmp_path / "report")
    text = report.markdown.read_text()
    assert text.splitlines()[[l.startswith("| arm |") for l in text.splitlines()].index(True)].endswith(
        "| lost sources |")
    assert [l for l in text.splitlines() if l.startswith("| none |")][0].endswith("| 1 |")
    assert f"- none: {summary['partial_note']}" in text
    assert (tmp_path / "report" / "throughput.png").exists()
    lost = metrics.lost_sources(load_runs([tmp_path / "run"]))
    assert lost[["source", "last_t", "samples_done"]].values.tolist() == [[1, 13.0, 24]]  # where the x goes


def test_an_arm_without_lost_sources_is_not_partial(tmp_path):
    summary = summarise_arm(write_arm(tmp_path / "none"), "none", 2, 0.5, "cgroup-v1")
    assert summary["lost_sources"] == [] and summary["partial"] is False and summary["partial_note"] is None
