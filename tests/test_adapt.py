"""Adaptation policies (issue 13, first step): the level for the next interval from the
measured ones; the same measurements give the same decisions."""
import pytest

from workloads.adapt import Measurement, create_policy

LEVELS = [260, 1030, 4100, 8200]  # bytes per sample of budgets 1, 4, 16, 32 (vgg11-slim at split 2)


def interval(mbit: float, level_bytes: float, samples: int = 160, compute_per_sample: float = 0.005) -> Measurement:
    """An interval on a link of ``mbit`` Mbit/s at a level costing ``level_bytes`` per sample."""
    sent = int(level_bytes * samples)
    return Measurement(bytes=sent, network_s=8 * sent / (mbit * 1e6), compute_s=compute_per_sample * samples,
                       samples=samples)


def drop_trace():
    """20 Mbit/s, 2 Mbit/s, back to 20: the issue's test link, 6 intervals each."""
    return [20.0] * 6 + [2.0] * 6 + [20.0] * 6


def run(policy_name, **options):
    policy = create_policy(policy_name, LEVELS, target=100.0, **options)
    decisions = []
    for mbit in drop_trace():
        measured = interval(mbit, LEVELS[policy.level])
        decisions.append(policy.decide(measured))
    return decisions


def test_harmonic_picks_the_least_compression_that_meets_the_target():
    levels = [d.level for d in run("harmonic", window=1)]
    # 20 Mbit/s: all 32 maps (8200 B) allow 1/(5 ms + 3.3 ms) = 121 samples/s. 2 Mbit/s: budget 16 allows
    # 1/(5 ms + 16.4 ms) = 47, budget 4 1/(5 ms + 4.1 ms) = 110: budget 4, level 1
    assert levels[:6] == [3] * 6 and levels[6:12] == [1] * 6 and levels[12:] == [3] * 6
    assert "Mbit/s (harmonic mean of 1)" in run("harmonic", window=1)[6].reason


def test_harmonic_mean_weighs_the_slow_interval_more():
    policy = create_policy("harmonic", LEVELS, target=100.0, window=2)
    policy.decide(interval(20.0, LEVELS[3]))
    decision = policy.decide(interval(2.0, LEVELS[3]))
    assert "bandwidth 3.64 Mbit/s" in decision.reason  # 2 / (1/20 + 1/2), not the arithmetic 11


def test_threshold_steps_with_hysteresis_and_dwell():
    decisions = run("threshold", hysteresis=0.1, dwell=2)
    levels = [d.level for d in decisions]
    assert levels[6] == 2 and levels[7] == 2 and levels[8] == 1  # one step at a time, two intervals apart
    assert max(levels[12:]) > levels[11]  # back up when the link returns
    assert all(abs(a - b) <= 1 for a, b in zip(levels, levels[1:]))
    assert "more compression" in decisions[6].reason and "holding" in decisions[7].reason


@pytest.mark.parametrize("name", ["threshold", "harmonic"])
def test_the_same_measurements_give_the_same_decisions(name):
    assert run(name) == run(name)


def test_bad_policies_are_one_line():
    with pytest.raises(ValueError, match="unknown adaptation policy 'pid'; known: harmonic, threshold"):
        create_policy("pid", LEVELS, 100.0)
    with pytest.raises(ValueError, match="the target must be positive"):
        create_policy("threshold", LEVELS, 0)
