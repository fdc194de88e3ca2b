"""``testbed reproduce``: every paper experiment is a valid sweep at both scales, and the
claims of analysis/reproduce.py read a real sweep's measurements into sentences that say
whether the paper's ordering holds."""
from __future__ import annotations

import json

import pytest

from analysis.reproduce import CLAIMS, Sweep, reproduce
from testbed.reproduce import EXPERIMENTS, experiments
from testbed.sweep import check_trials, load_spec

NAMES = ["000-cdc", "002-deprune", "002-prune", "002-traffic", "003-duphil", "004-rate-accuracy"]


@pytest.mark.quick
def test_every_headline_has_an_experiment():
    assert experiments() == NAMES


@pytest.mark.quick
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", ["smoke", "paper"])
def test_each_experiment_expands_and_names_only_its_own_series(name, scale):
    spec = load_spec(EXPERIMENTS / f"{name}.toml", scale)
    series = {t.series for t in spec.trials}
    claims = spec.raw["reproduce"]["claims"]
    assert claims and all(c["kind"] in CLAIMS for c in claims)
    for claim in claims:
        named = [claim.get(k) for k in ("series", "numerator", "denominator")] + \
            ([claim["against"]] if isinstance(claim.get("against"), str) else claim.get("against", []))
        assert {n for n in named if n} <= series, (claim, series)
    for row in spec.raw["reproduce"].get("table", []):
        assert row["series"] in series
    for group in spec.raw["reproduce"].get("run_reports", {}).values():
        assert set(group) <= series
    if spec.backend == "inproc":
        check_trials(spec)  # every trial passes testbed run's own validation
    if scale == "paper":
        assert all(t.settings["dataset"] == "cifar10" for t in spec.trials)
    else:  # smoke: small model, synthetic data, 2 sources at most
        assert all(t.settings["dataset"] == "synthetic" and t.settings["sources"] <= 2 for t in spec.trials)
        assert all(t.settings["model"].endswith("-slim") or spec.backend == "local" for t in spec.trials)


MEDIUM = ["002-deprune", "003-duphil", "004-rate-accuracy"]


@pytest.mark.quick
@pytest.mark.parametrize("name", MEDIUM)
def test_the_medium_scale_has_two_seeds_on_a_small_model(name):
    """--scale medium: at most 30 minutes on 2 cores, long enough to tell the arms apart beyond
    the spread of two seeds."""
    spec = load_spec(EXPERIMENTS / f"{name}.toml", "medium")
    assert {t.settings["seed"] for t in spec.trials} == {0, 1}
    assert all(t.settings["dataset"] == "synthetic" and t.settings["model"].endswith("-slim") for t in spec.trials)
    smoke = load_spec(EXPERIMENTS / f"{name}.toml", "smoke")
    steps = {t.settings["batches"] * t.settings["epochs"] for t in spec.trials}
    assert min(steps) > max(t.settings["batches"] * t.settings["epochs"] for t in smoke.trials)


@pytest.fixture(scope="module")
def sweep_dir(tiny_sweep):
    """conftest's shared sweep: none, filter at budgets 2 and 8, prune on a schedule (3 epochs)."""
    return tiny_sweep[0]


def test_claims_read_the_measurements(sweep_dir):
    sweep = Sweep(sweep_dir)
    rows = {r["trial"]: r["metrics"] for r in json.loads((sweep_dir / "sweep.json").read_text())["trials"]}
    none, f2, f8 = rows["none"], rows["filter-budget-2"], rows["filter-budget-8"]
    assert [p["knob_value"] for p in sweep.points("filter")] == [2, 8]  # sorted by bytes
    assert sweep.curve("prune") and len(sweep.curve("prune")) == 3  # accuracy after each epoch

    claim = {"kind": "ratio", "metric": "bytes_sent_total", "numerator": "none", "denominator": "filter",
             "denominator_value": 8, "paper": 32, "unit": "×", "what": "traffic ratio"}
    verdict = CLAIMS["ratio"](sweep, claim)
    assert verdict.holds and verdict.measured == pytest.approx(none["bytes_sent_total"] / f8["bytes_sent_total"])
    assert verdict.statement == f"traffic ratio: {verdict.measured:.2f}×; paper: 32×"
    backwards = CLAIMS["ratio"](sweep, {**claim, "numerator": "filter", "numerator_value": 8, "denominator": "none",
                                        "denominator_value": None})
    assert backwards.holds is False and "the ordering does not hold" in backwards.statement

    easy = CLAIMS["same_accuracy_fewer_bytes"](sweep, {"series": "filter", "value": 2, "against": "none",
                                                       "tolerance": 1.0, "paper": 5.19})
    assert easy.holds and easy.statement.startswith("filter reached none's accuracy")
    assert easy.measured == pytest.approx(none["bytes_sent_total"] / f2["bytes_sent_total"])
    hard = CLAIMS["same_accuracy_fewer_bytes"](sweep, {"series": "filter", "value": 2, "against": "none",
                                                       "tolerance": -1.0})
    assert hard.holds is False and "did not reach none's accuracy" in hard.statement and "tolerance -1)" in hard.statement

    gain = CLAIMS["accuracy_gain"](sweep, {"series": "filter", "value": 8, "against": "filter", "against_value": 2})
    assert gain.measured == pytest.approx(100 * (f8["test_accuracy"] - f2["test_accuracy"]))

    # with a tolerance of 1 every accuracy counts as reached: at once, so no speed-up
    speed = CLAIMS["speedup_to_accuracy"](sweep, {"series": "prune", "against": "filter", "against_value": 8,
                                                  "phase": 2, "tolerance": 1.0})
    assert speed.measured == 1.0 and speed.holds is False and "1 epoch(s) after its transfer" in speed.statement
    at_rate = CLAIMS["accuracy_at_rate"](sweep, {"series": "filter", "against": "none", "tolerance": 1.0})
    assert at_rate.holds and at_rate.measured == pytest.approx(8 * f2["bytes_per_sample_sent"] / 1024)
    # in the paper's unit: the method's payload (maps and indices), without labels, header or framing
    paid = CLAIMS["accuracy_at_rate"](sweep, {"series": "filter", "against": "none", "tolerance": 1.0,
                                              "rate": "payload"})
    assert f2["coded_bytes_per_sample"] < f2["bytes_per_sample_sent"]
    assert paid.measured == pytest.approx(8 * f2["coded_bytes_per_sample"] / 1024)
    assert "payload bytes per sample" in paid.statement
    fewer = CLAIMS["same_accuracy_fewer_bytes"](sweep, {"series": "filter", "value": 2, "against": "none",
                                                        "tolerance": 1.0, "rate": "payload at inference"})
    assert fewer.measured == pytest.approx(none["eval_coded_bytes_per_sample"] / f2["eval_coded_bytes_per_sample"])
    assert "fewer payload bytes per sample at inference" in fewer.statement
    assert CLAIMS["monotone"](sweep, {"series": "filter", "tolerance": 1.0}).holds
    dominated = CLAIMS["dominates"](sweep, {"series": "filter", "against": ["none"], "tolerance": 1.0})
    assert dominated.holds and "1 of 1 none points" in dominated.statement


def test_the_reproduction_writes_the_paper_beside_the_measured(sweep_dir):
    spec = {"title": "A test", "paper": "002", "reference": "none",
            "claims": [{"kind": "ratio", "metric": "bytes_sent_total", "numerator": "none", "denominator": "filter",
                        "denominator_value": 2, "paper": 64},
                       {"kind": "ratio", "metric": "bytes_sent_total", "numerator": "none", "denominator": "crbq"}],
            "table": [{"series": "filter", "value": 2, "paper": {"accuracy": "80%"}}]}
    result = reproduce(sweep_dir, spec, scale="smoke", command="testbed reproduce x")
    text = result.markdown.read_text()
    assert "- **holds**: bytes_sent_total of none over filter" in text
    assert "- **cannot say**: no finished trial of series 'crbq'; the sweep has adaptive, filter, none, prune" in text
    assert ("| series | value | paper: accuracy | measured: stream bytes per sample | measured: payload bytes per "
            "sample | measured: payload bytes per sample at inference | measured: bpp (stream bytes per sample) | "
            "measured: accuracy") in text
    assert "Rates are compared as stream bytes per sample" in text
    assert result.table[0]["measured"]["loss vs none (points)"] is not None
    assert json.loads((sweep_dir / "reproduce.json").read_text())["verdicts"][0]["holds"] is True


@pytest.mark.quick
def test_an_unknown_experiment_is_one_line(cli):
    result = cli("reproduce", "002-nothing")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "002-nothing" in result.stderr


def test_the_sweep_report_draws_the_series_and_names_the_failed(sweep_dir, tmp_path):
    import shutil

    from analysis.sweep import SweepError, load_sweep, write_sweep_report

    copy = tmp_path / "sweep"
    shutil.copytree(sweep_dir, copy)
    data = json.loads((copy / "sweep.json").read_text())
    data["trials"].append({**data["trials"][0], "trial": "crbq", "series": "crbq", "module": "crbq",
                           "status": "failed", "error": "killed by SIGKILL"})
    (copy / "sweep.json").write_text(json.dumps(data))
    table = load_sweep(copy)
    assert list(table["trial"]) == ["none", "filter-budget-2", "filter-budget-8", "prune", "adaptive-seed-0",
                                    "adaptive-seed-1", "long", "crbq"]
    assert {"param.budget", "test_accuracy", "bytes_per_sample_sent"} <= set(table.columns)
    report = write_sweep_report(copy)
    drawn = ("rate_accuracy", "payload_rate_accuracy", "inference_rate_accuracy", "accuracy_vs_bytes",
             "time_to_accuracy")  # the rate against accuracy three ways: stream, payload in training, at inference
    assert sorted(p.name for p in report.figures) == sorted(f"{n}.{e}" for n in drawn for e in ("png", "svg"))
    text = report.markdown.read_text()
    assert "| filter | budget | 2 | 1 |" in text and "- `crbq` (failed): killed by SIGKILL" in text
    assert report.problems == ["trial long failed: killed by SIGKILL (left out of the figures)",
                               "trial crbq failed: killed by SIGKILL (left out of the figures)"]
    (copy / "sweep.json").write_text("{not json")
    with pytest.raises(SweepError, match="sweep.json is not valid JSON"):
        load_sweep(copy)
