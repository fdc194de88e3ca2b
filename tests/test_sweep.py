"""``testbed sweep``: specs as data expanded into trials, trials on a real local Ray, each
an ordinary run directory; a second invocation reruns nothing that finished; a trial
whose process is killed is a failed row and the sweep finishes; ``--sweep-bandwidth`` is
short for a spec."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import psutil
import pytest

from conftest import TINY_SWEEP
from testbed.spec import RunSpec
from testbed.sweep import SweepSpecError, bandwidth_sweep, load_spec, trial_settings

TINY = """
backend = "inproc"
[base]
sources = 1
model = "vgg11-slim"
dataset = "synthetic"
batches = 2
epochs = 1
eval-samples = 16
"""


def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.quick
def test_arms_knobs_and_grid_expand_into_named_trials(tmp_path):
    spec = load_spec(write(tmp_path, TINY + """
[grid]
seed = [0, 1]
[[arms]]
module = "none"
[[arms]]
module = "filter"
budget = [2, 8]
[[arms]]
label = "cdc, no guidance"
module = "cdc"
mask-number = [0, 4]
alpha = 1000000.0
"""))
    ids = [t.id for t in spec.trials]
    assert ids == ["none-seed-0", "none-seed-1", "filter-budget-2-seed-0", "filter-budget-2-seed-1",
                   "filter-budget-8-seed-0", "filter-budget-8-seed-1", "cdc-no-guidance-mask-number-0-seed-0",
                   "cdc-no-guidance-mask-number-0-seed-1", "cdc-no-guidance-mask-number-4-seed-0",
                   "cdc-no-guidance-mask-number-4-seed-1"]
    filter8 = spec.trials[5]
    assert filter8.settings["budget"] == 8 and filter8.settings["seed"] == 1 and filter8.settings["batches"] == 2
    assert (filter8.series, filter8.knob, filter8.knob_value) == ("filter", "budget", 8)
    cdc = spec.trials[-1]
    assert (cdc.series, cdc.knob, cdc.knob_value, cdc.settings["alpha"]) == ("cdc, no guidance", "mask_number", 4, 1e6)
    assert spec.trials[0].knob is None
    assert spec.vary == ["module", "seed", "budget", "alpha", "mask_number"]
    assert spec.backend == "inproc" and spec.cpus_per_trial == 1.0


@pytest.mark.quick
def test_a_scale_overrides_base_and_grid(tmp_path):
    text = TINY + """
[grid]
seed = [0, 1, 2]
[[arms]]
module = "none"
[scale.smoke]
epochs = 3
grid = { seed = [5] }
[scale.paper]
model = "vgg11"
"""
    smoke = load_spec(write(tmp_path, text), "smoke")
    assert [(t.settings["epochs"], t.seed, t.settings["model"]) for t in smoke.trials] == [(3, 5, "vgg11-slim")]
    paper = load_spec(write(tmp_path, text), "paper")
    assert [t.settings["model"] for t in paper.trials] == ["vgg11"] * 3
    assert [t.settings["epochs"] for t in load_spec(write(tmp_path, text)).trials] == [1, 1, 1]


@pytest.mark.quick
@pytest.mark.parametrize("text, message", [
    ('[[arms]]\nmodule = "none"\nbudjet = 4\n', "arm 1: unknown setting 'budjet' (did you mean budget or beta?)"),
    ('[[arms]]\nmodule = "gzip"\n', "trial gzip: unknown module 'gzip'"),
    ('[[arms]]\nmodule = "filter"\nbudget = "four"\n', "arm 1: --budget must be an integer, got 'four'"),
    ('[[arms]]\nmodule = "filter"\nbudget = 0\n', "trial filter: --budget must be"),
    ('[[arms]]\nbudget = 4\n', "arm 1 has no module"),
    ('[[arms]]\nmodule = "none"\n[[arms]]\nmodule = "none"\n', "two trials are both none: give the arms different labels"),
    ('[[arms]]\nmodule = "none"\nout = "x"\n', "arm 1: out is set by the sweep for every trial, not by the spec"),
    ('colour = 1\n---\n[[arms]]\nmodule = "none"\n', "unknown top-level key(s) colour"),
    ('[[arms]]\nmodule = "none"\n[scale.smoke]\nepochs = 1\n', "has no [scale.paper]; it has smoke"),
    ('[[arms]\nmodule = "none"\n', "is not valid TOML"),
    ('', "no arms: give at least one [[arms]] with a module"),
])
def test_a_bad_spec_is_one_line_naming_the_problem(tmp_path, text, message, cli):
    top, _, text = text.rpartition("---\n")  # what goes before [base]
    path = write(tmp_path, top + TINY + text)
    scale = ["--scale", "paper"] if "scale.smoke" in text else []
    result = cli("sweep", path, *scale, "--out", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"testbed: error: {path}"), result.stderr
    assert message in lines[0]
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


@pytest.mark.quick
def test_yaml_specs_read_like_toml(tmp_path):
    spec = load_spec(write(tmp_path, "backend: inproc\nbase: {sources: 1}\narms:\n  - {module: filter, budget: [2, 4]}\n",
                           "spec.yaml"))
    assert [t.id for t in spec.trials] == ["filter-budget-2", "filter-budget-4"]
    with pytest.raises(SweepSpecError, match="a .toml or .yaml file"):
        load_spec(write(tmp_path, "x", "spec.txt"))


@pytest.mark.quick
def test_a_trace_file_the_spec_names_is_read_beside_the_spec(tmp_path, monkeypatch):
    folder = tmp_path / "experiments"
    (folder / "traces").mkdir(parents=True)
    (folder / "traces" / "drop.csv").write_text("seconds,mbit_per_s\n0,20\n")
    spec = write(folder, 'backend = "local"\n[base]\nlink-trace = "traces/drop.csv"\n[[arms]]\nmodule = "filter"\n')
    monkeypatch.chdir(tmp_path)
    assert load_spec(spec).trials[0].settings["link_trace"] == str(folder / "traces" / "drop.csv")
    given = load_spec(spec, override={"link_trace": "mine.csv"}).trials[0].settings["link_trace"]
    assert given == "mine.csv"  # one given on the command line is the user's, from where they are


def test_a_sweep_on_local_ray_records_a_killed_trial_and_finishes(tiny_sweep):
    out, _, sweep, killed = tiny_sweep
    assert killed, sweep.stderr
    table = json.loads((out / "sweep.json").read_text())
    rows = {r["trial"]: r for r in table["trials"]}
    assert list(rows) == ["none", "filter-budget-2", "filter-budget-8", "prune", "adaptive-seed-0", "adaptive-seed-1",
                          "long"] and table["finished"]
    assert table["vary"] == ["batches", "epochs", "module", "budget", "schedule", "adapt", "target", "adapt_interval",
                             "seed"]
    assert rows["long"]["status"] == "failed" and rows["long"]["error"] == "killed by SIGKILL"
    assert sweep.returncode == 1 and "long (killed by SIGKILL)" in sweep.stderr  # the sweep finished, and says so
    assert "ray: local" in sweep.stdout  # the inproc backend's trials ran on Ray
    finished = [r for r in rows.values() if r["status"] == "ok"]
    assert len(finished) == 6  # every other trial finished
    for row in finished:
        summary = json.loads((out / row["run_dir"] / "summary.json").read_text())  # an ordinary run directory
        assert summary["arms"][row["module"]]["test_accuracy"] == row["metrics"]["test_accuracy"]
    assert rows["filter-budget-2"]["metrics"]["bytes_per_sample_sent"] < \
        rows["none"]["metrics"]["bytes_per_sample_sent"] / 10
    assert "trial,status,error" in (out / "sweep.csv").read_text().splitlines()[0]
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(out) in " ".join(p.info["cmdline"] or [])]


def test_a_second_invocation_reruns_nothing_that_finished(tiny_sweep, tmp_path, cli):
    out, spec, _, _ = tiny_sweep
    copy = tmp_path / "sweep"
    shutil.copytree(out, copy)  # the shared sweep stays as it is for the other tests
    spec = write(tmp_path, TINY_SWEEP)  # the same spec, the long arm left out
    rows = json.loads((copy / "sweep.json").read_text())["trials"]
    finished = [r["trial"] for r in rows if r["status"] == "ok"]
    stamps = {t: (copy / "trials" / t / "summary.json").stat().st_mtime_ns for t in finished}
    again = cli("sweep", spec, "--out", copy, "--cpus", "2")
    assert again.returncode == 0, again.stderr
    assert "6 trials, 6 finished before (kept), 0 to run" in again.stdout and "ray:" not in again.stdout
    assert stamps == {t: (copy / "trials" / t / "summary.json").stat().st_mtime_ns for t in stamps}
    assert [r["trial"] for r in json.loads((copy / "sweep.json").read_text())["trials"]] == finished


def test_a_sweep_whose_trials_adapt_draws_them_on_one_time_axis(tiny_sweep):
    out = tiny_sweep[0]
    report = (out / "report" / "runs" / "report.md").read_text()
    assert (out / "report" / "runs" / "adaptation.png").exists() and "adapted by threshold" in report
    assert "seed-1" not in report and "adaptive-seed-0" in report and "filter-budget-2" in report  # the first seed


@pytest.mark.quick
def test_sweep_bandwidth_is_short_for_a_spec_with_a_grid_of_bandwidth(tmp_path):
    run = RunSpec(sources=2, module="none,filter", model="vgg11-slim", medium="shared", budget=2,
                  sweep_bandwidth="1mbit,5mbit/20mbit", backend="local", out=str(tmp_path / "x"), quiet=True)
    short = bandwidth_sweep(run)
    spec = write(tmp_path, 'backend = "local"\nname = "bandwidth"\n[base]\nsources = 2\nmodel = "vgg11-slim"\n'
                 'medium = "shared"\nbudget = 2\n[grid]\nbandwidth = ["1mbit", "5mbit/20mbit"]\n'
                 '[[arms]]\nmodule = "none"\n[[arms]]\nmodule = "filter"\n')
    written = load_spec(spec)
    assert [(t.id, t.settings, t.series, t.knob) for t in short.trials] == \
        [(t.id, t.settings, t.series, t.knob) for t in written.trials]
    assert [t.id for t in short.trials] == ["none-bandwidth-1mbit", "none-bandwidth-5mbit-20mbit",
                                            "filter-bandwidth-1mbit", "filter-bandwidth-5mbit-20mbit"]
    assert (short.name, short.backend, short.vary, short.path) == ("bandwidth", "local", ["module", "bandwidth"], None)
    assert short.cpus_per_trial == written.cpus_per_trial


@pytest.mark.quick
def test_trials_one_after_another_keep_their_port_and_side_by_side_get_their_own(tmp_path):
    short = bandwidth_sweep(RunSpec(sweep_bandwidth="1mbit,5mbit", backend="local", port=6000))
    assert [trial_settings(short, t, i, "here")["port"] for i, t in enumerate(short.trials)] == [6000] * 4
    assert [trial_settings(short, t, i, "ray")["port"] for i, t in enumerate(short.trials)] == [6000, 6001, 6002, 6003]


@pytest.mark.quick
def test_a_point_of_a_grid_is_named_by_its_knob_and_the_grids_values(tmp_path):
    from analysis.sweep import SeriesError, Sweep

    rows = [{"trial": f"filter-budget-{b}-bandwidth-{r}", "status": "ok", "series": "filter", "module": "filter",
             "knob": "budget", "knob_value": b, "seed": 0, "params": {"module": "filter", "budget": b, "bandwidth": r},
             "metrics": {"test_accuracy": 0.5, "bytes_per_sample_sent": 100 * b, "samples_per_s_per_source": 1.0}}
            for b in (2, 4) for r in ("1mbit", "5mbit")]
    (tmp_path / "sweep.json").write_text(json.dumps({"sweep": "x", "vary": ["budget", "bandwidth"], "trials": rows}))
    sweep = Sweep(tmp_path)
    assert sweep.grid == ["bandwidth"] and len(sweep.points("filter")) == 4  # the rates are not averaged together
    assert sweep.point("filter", 4, bandwidth="5mbit")["trials"] == ["filter-budget-4-bandwidth-5mbit"]
    with pytest.raises(SeriesError, match="has 2 points: name its bandwidth"):
        sweep.point("filter", 4)
    with pytest.raises(SeriesError, match="has 4 points: name its budget and bandwidth"):
        sweep.point("filter")
