"""`testbed run` as a user runs it: real processes, real CPU caps. What a command only
says (a bad option, a port in use) is asked of the CLI in this process (the ``cli``
fixture); what the process itself does (Ctrl-C, cgroups, the process tree) runs it for real."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from analysis.caveats import NO_LINK, caveats
from analysis.summary import format_table
from conftest import REPO, TINY, cgroup_roots, cgroups_of, read_jsonl, workload_programs

SUMMARY_KEYS = {"module", "sources", "cpu_cap", "bytes_sent_total", "bytes_received_total",
                "samples_per_s_per_source", "cpu_share_per_source", "duration_s", "final_loss", "test_accuracy",
                "startup_s_per_source", "peak_rss_mb_per_source"}


def leftover_programs(marker):
    """Programs still running whose command line names ``marker`` (a test's folder)."""
    marker = str(marker)
    return [p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and any(a in ("workloads.server", "workloads.source", "testbed.launcher")
                                         for a in p.info["cmdline"])
            and any(marker in a for a in p.info["cmdline"])]


def test_two_arms_end_to_end(tiny_run):
    out, result = tiny_run
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == {"none", "filter"}
    for arm in summary["arms"].values():
        assert SUMMARY_KEYS <= set(arm)
        assert len(arm["samples_per_s_per_source"]) == 2 and all(v > 0 for v in arm["samples_per_s_per_source"])
        assert all(0 < share <= 0.44 for share in arm["cpu_share_per_source"])
    none, filt = summary["arms"]["none"], summary["arms"]["filter"]
    # vgg11-slim cuts 32 maps of 8x8: 8 samples x 32 x 8 x 8 float32 per step and direction.
    steps = 2 * 3 * 2  # sources x batches x epochs
    assert none["payload_sent_total"] == steps * (8 * 32 * 8 * 8 * 4 + 8)
    assert filt["payload_received_total"] == steps * 8 * 4 * 8 * 8 * 4
    # 4 of 32 maps: the ratio is at most 8, less only the headers.
    assert 7.5 < summary["comparison"]["traffic_ratio"] <= 8.0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "ok" and manifest["cap"]["method"] in ("cgroup-v1", "cgroup-v2", "psutil")
    if cgroup_roots():  # where the host lets a run make cgroups, it caps with them (v1 or v2)
        assert manifest["cap"]["method"].startswith("cgroup"), manifest["cap"]
    assert manifest["versions"]["torch"] and manifest["host"]["cores"] == os.cpu_count()
    events = read_jsonl(out / "filter" / "source-0.jsonl")
    batches = [e for e in events if e["event"] == "batch"]
    assert [b["warmup"] for b in batches] == [True] + [False] * 5
    assert (out / "report" / "report.md").exists()  # every run directory holds its report
    assert "filter vs none: traffic ratio" in result.stdout
    detail = manifest["cap"]["detail"]
    if manifest["cap"]["method"].startswith("cgroup"):
        assert not Path(detail.rsplit(" under ", 1)[1]).exists()  # this run's cgroups are gone
    assert leftover_programs(out) == []


def test_filter_learns_to_concentrate_on_the_budget_and_loss_falls(tmp_path, cli):
    # learning, not caps: in process (tests/test_inproc.py: the same bytes and losses as a fleet)
    out = tmp_path / "run"
    result = cli("run", "--sources", 2, "--backend", "inproc", "--module", "filter", "--budget", 4, "--epochs", 3,
                 "--batches", 32, "--model", "vgg11-slim", "--eval-samples", 64, "--dataset", "synthetic",
                 "--out", out, "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    # loopback and the synthetic set at difficulty 0, learnt: the table and the report say what that means
    table = format_table(json.loads((out / "summary.json").read_text())).splitlines()
    report = (out / "report" / "report.md").read_text()
    for caveat in (NO_LINK, "the synthetic set at difficulty 0 saturates: every arm reaches 1.000 test accuracy"):
        assert sum(line.startswith(f"note: {caveat}") for line in table) == 1, table
        assert sum(line.startswith(f"- {caveat}") for line in report.splitlines()) == 1, report
    for source in range(2):
        events = read_jsonl(out / "filter" / f"source-{source}.jsonl")
        batches = [e for e in events if e["event"] == "batch"]
        first = sum(b["loss"] for b in batches[:32]) / 32
        last = sum(b["loss"] for b in batches[-32:]) / 32
        assert last < 0.8 * first
        assert batches[-1]["filter_topb_share"] > 0.9  # the mass sits on the 4 maps that are sent
        assert 3.0 < batches[-1]["filter_sum"] < 5.5
        f = [e for e in events if e["event"] == "eval"][-1]["filter"]
        assert sum(v > 0.5 for v in f) == 4


@pytest.mark.quick
def test_caveats_name_a_missing_link_and_a_saturated_synthetic_set_only_where_they_apply():
    def arm(accuracy=1.0, link=None, synthetic=True, difficulty=0.0):
        return {"test_accuracy": accuracy, "link": link,
                "data": {"origin": "x", "synthetic": synthetic, "difficulty": difficulty if synthetic else None}}
    [no_link, saturated] = caveats({"none": arm(), "filter": arm(0.996)})
    assert no_link == NO_LINK and "every arm reaches 1.000 / 0.996 test accuracy (none, filter)" in saturated
    assert caveats({"none": arm(link="65mbit shared"), "filter": arm()})[0].startswith("the synthetic set")
    assert caveats({"none": arm(), "filter": arm(0.5)}) == [NO_LINK]           # not learnt: it separates them
    assert caveats({"none": arm(difficulty=0.5)}) == [NO_LINK]                 # a harder set
    assert caveats({"none": arm(synthetic=False, link="lte")}) == []           # real data on a link
    assert caveats({}) == []


@pytest.mark.parametrize("module, budgets", [("deprune", [4, 4, 4, 32]), ("prune", [32, 32, 8, 4])])
def test_budget_schedules_show_in_the_trace(tmp_path, cli, module, budgets):
    out = tmp_path / "run"
    result = cli("run", "--sources", 1, "--backend", "inproc", "--module", module, "--epochs", 4, "--batches", 2,
                 *TINY, "--out", out, "--quiet", "--no-report")
    assert result.returncode == 0, result.stderr
    batches = [e for e in read_jsonl(out / module / "source-0.jsonl") if e["event"] == "batch"]
    assert [b["budget"] for b in batches[::2]] == budgets
    boosted = [b["lr_scale"] for b in batches[::2]]
    assert boosted == [1.0, 1.0, 1.0, 2.0] if module == "deprune" else boosted == [1.0, 1.0, 2.0, 2.0]
    # bytes follow the budget: 4 maps cost an eighth of 32
    sizes = {b["budget"]: b["payload_received"] for b in batches}
    assert sizes[32] == 8 * sizes[4]


@pytest.mark.quick
@pytest.mark.parametrize("args, message", [
    (["--sources", "0"], "--sources must be at least 1, got 0"),
    (["--cpu", "-1"], "--cpu must be positive, got -1.0"),
    (["--module", "gzip"], "unknown module 'gzip'; known: cdc, crbq, deprune, entropic, filter, jpeg, mcr2, none, prune, raw, webp"),
    (["--model", "resnet"], "unknown model 'resnet'; known: resnet18, resnet18-slim, vgg11, vgg11-slim"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'; known: cifar10, cifar100, folder, synthetic"),
    (["--data-dir", "/nonexistent/cifar"], "data folder /nonexistent/cifar does not exist"),
    (["--schedule", "4-2"], "--schedule: bad schedule entry '4-2'"),
    (["--quality", "101"], "--quality must be between 1 and 100, got 101"),
    (["--batches", "many"], "--batches must be an integer, got 'many'"),
    (["--module", "mcr2", "--keep-neurons", "65"], "--keep-neurons must be between 0 (all) and --latent-dim (64), got 65"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, cli, args, message):
    result = cli("run", *args, "--out", tmp_path / "run")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not (tmp_path / "run").exists() and leftover_programs(tmp_path) == []


@pytest.mark.quick
def test_unreadable_data_folder_and_port_in_use(tmp_path, cli):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    result = cli("run", "--data-dir", not_a_folder, "--out", tmp_path / "run")
    assert result.returncode == 2 and "is not a readable directory" in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("run", "--port", port, "--out", tmp_path / "run")
    assert result.returncode == 2 and f"port {port} is in use" in result.stderr
    assert not (tmp_path / "run").exists()


def test_ctrl_c_stops_every_process_and_removes_the_cgroups(tmp_path, port):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "testbed.cli", "run", "--sources", "2", "--cpu", "0.4",
                             "--batches", "50", "--epochs", "5", *TINY, "--out", str(out), "--port", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Ctrl-C once both sources run, each joined to its cgroups before its program runs (a forked
    # source is in the process table a moment before it has joined). A source has no SIGTERM
    # handler: stopped while it imports torch or while it trains, it ends the same way, so there
    # is no need to wait for its first batch.
    deadline = time.time() + 120
    sources, made, members = [], [], set()
    while True:
        assert time.time() < deadline and proc.poll() is None, \
            f"the sources {sources} never ran in the run's cgroups {made} (members {sorted(members)})"
        sources = [child.pid for role, child in workload_programs(proc.pid) if role == "source"]
        made = cgroups_of(proc.pid)  # v1 or v2, wherever cpucap made them
        members = {int(pid) for group in made for procs in Path(group).rglob("cgroup.procs")
                   for pid in procs.read_text().split()}
        # the host lets a run make cgroups: the running sources are in some
        if len(sources) == 2 and (not cgroup_roots() or set(sources) <= members):
            break
        time.sleep(0.05)  # polling the process table: starting a source leaves no other sign
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert leftover_programs(out) == [] and cgroups_of(proc.pid) == []
    assert not [group for group in made if os.path.exists(group)]
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"


def test_every_baseline_module_runs_and_traces_its_bytes(tmp_path, cli):
    # bytes, not caps: in process, whose bytes are a plaintext fleet's (tests/test_inproc.py). An arm runs
    # in a process of its own, one arm after another: two runs side by side share the arms out, four in
    # a `testbed run` of their own while this process runs the other four
    run = ["run", "--sources", "1", "--backend", "inproc", "--batches", "2", "--distill-steps", "2",
           "--phase1-steps", "2", "--epochs", "1", *map(str, TINY), "--quiet", "--no-report"]
    groups = {tmp_path / "here": "none,raw,jpeg,webp", tmp_path / "aside": "crbq,cdc,mcr2,entropic"}
    aside = subprocess.Popen([sys.executable, "-m", "testbed.cli", *run, "--module", groups[tmp_path / "aside"],
                              "--out", str(tmp_path / "aside")], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        result = cli(*run, "--module", groups[tmp_path / "here"], "--out", tmp_path / "here")
        _, err = aside.communicate(timeout=600)
    finally:
        if aside.poll() is None:
            aside.terminate()
            aside.communicate(timeout=60)
    assert result.returncode == 0, result.stderr
    assert aside.returncode == 0, err
    arms, folder = {}, {}  # every arm's summary and its folder, from whichever run ran it
    for out, modules in groups.items():
        summary = json.loads((out / "summary.json").read_text())["arms"]
        assert list(summary) == modules.split(",")
        arms.update(summary)
        folder.update((name, out / name) for name in summary)
    assert {name: arm["split"] for name, arm in arms.items()} == {"none": 2, "raw": 0, "jpeg": 0, "webp": 0, "crbq": 2,
                                                                  "cdc": 0, "mcr2": 2, "entropic": 2}
    per_sample = {name: arm["bytes_per_sample_sent"] for name, arm in arms.items()}
    assert 3072 < per_sample["raw"] < 3072 + 40  # one byte per pixel, plus the header shared by 8 samples
    assert per_sample["jpeg"] < per_sample["raw"] and per_sample["webp"] < per_sample["raw"]
    # 32 maps / 8 = 4 maps of 8x8, float32 in training (quantized to a byte each after it, as paper 004 does)
    assert 4 * 4 * 64 < per_sample["crbq"] < 4 * 4 * 64 + 40
    # cdc: 16 x 8 x 8 latent values (one per pixel) of 3 bits (m = 2) = 384 bytes a sample; the decoder once,
    # in the first message
    cdc = [e for e in read_jsonl(folder["cdc"] / "source-0.jsonl") if e["event"] == "batch"]
    assert cdc[0]["bytes_sent"] > 20_000 and 384 < cdc[1]["bytes_sent"] / 8 < 384 + 40
    for name, arm in arms.items():
        assert arm["test_accuracy"] is not None and arm["samples_total"] == 16
        # no gradient comes back to these: a header-only reply (the server's timings included, 143 bytes
        # in plaintext, 176 with CURVE's 33; entropic's also names its distillation loss) shared by 8 samples
        assert arm["bytes_per_sample_received"] < ({"entropic": 22}.get(name, 19)
                                                   if name in ("raw", "jpeg", "webp", "cdc", "mcr2", "entropic")
                                                   else 1e9)
    # entropic: the decoder and prior cross once, then a range-coded latent of 16 x 4 x 4 values
    entropic = [e for e in read_jsonl(folder["entropic"] / "source-0.jsonl") if e["event"] == "batch"]
    assert entropic[0]["bytes_sent"] > 10 * entropic[1]["bytes_sent"] and entropic[1]["bytes_sent"] / 8 < 16 * 16
    # mcr2: a range-coded latent of 64 rounded values, a few bytes a sample after the model crossed once
    mcr2 = [e for e in read_jsonl(folder["mcr2"] / "source-0.jsonl") if e["event"] == "batch"]
    assert mcr2[0]["bytes_sent"] > mcr2[1]["bytes_sent"] and mcr2[1]["bytes_sent"] / 8 < 64
