"""mcr2 (paper 003, DuPHiL): the coding rates, Fisher's discriminative power, the real
range coder and the entropy model sent once per source."""
import json
import math

import numpy as np
import pytest
import torch

from workloads.compression import CompressionConfig, create_server, create_source
from workloads.compression.mcr2 import (coding_rate, fisher_power, fit_model, latent_bits, mcr2_loss,
                                        range_decode, range_encode)
from workloads.data import synthetic_dataset, to_tensor_batch
from workloads.models import build_split_model
from workloads.trace import TraceWriter

CPU = torch.device("cpu")


@pytest.mark.quick
def test_coding_rate_of_identical_unit_vectors_matches_the_paper():
    u = torch.nn.functional.normalize(torch.randn(1, 128, dtype=torch.float64), dim=1)
    for m in (1, 7, 50):  # m identical unit vectors in d = 128 with eps^2 = 0.5
        assert coding_rate(u.repeat(m, 1), 0.5).item() == pytest.approx(0.5 * math.log(1 + 128 / 0.5), abs=1e-6)
    assert 0.5 * math.log(1 + 128 / 0.5) == pytest.approx(2.774, abs=1e-3)


@pytest.mark.quick
def test_mcr2_prefers_compact_classes_in_distinct_directions():
    torch.manual_seed(0)
    labels = torch.arange(200) % 4
    directions = torch.nn.functional.normalize(torch.randn(4, 32), dim=1)
    good = directions[labels] + 0.05 * torch.randn(200, 32)
    collapsed = directions[0].repeat(200, 1) + 0.05 * torch.randn(200, 32)
    loss_good, rate, class_rate = mcr2_loss(good, labels, 4)
    assert loss_good < mcr2_loss(collapsed, labels, 4)[0]
    assert loss_good == pytest.approx((-rate + class_rate).item())


@pytest.mark.quick
def test_fisher_power_ranks_the_discriminative_neuron_first():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    values = np.stack([labels * 3.0 + rng.normal(0, 1, 600), rng.normal(0, 1, 600)], axis=1)
    power = fisher_power(values, labels)
    assert power[0] > 10 * power[1]


@pytest.mark.quick
def test_range_coding_is_lossless_and_close_to_the_model_entropy():
    rng = np.random.default_rng(1)
    training = rng.integers(-3, 4, size=(2000, 16)) * (rng.random((2000, 16)) < 0.6)
    low, pmf = fit_model(training)
    codes = training[:300]
    data = range_encode(codes, low, pmf)
    np.testing.assert_array_equal(range_decode(data, 300, low, pmf), codes)
    ideal = latent_bits(codes, low, pmf) / 8
    assert ideal <= data.nbytes <= ideal * 1.01 + 8  # real bytes, within a word or so of the ideal


@pytest.mark.quick
def test_a_stream_that_does_not_decode_is_a_value_error():
    low, pmf = fit_model(np.random.default_rng(2).integers(0, 3, size=(100, 4)))
    server = create_server("mcr2", (128, 8, 8), CompressionConfig(latent_dim=4))
    model = {"model.kept": np.arange(4, dtype="<u2"), "model.low": low, "model.pmf": pmf}
    with pytest.raises(ValueError, match="no entropy model received from source 0"):
        server.decode({"bits": np.zeros(4, np.uint8), "rows": np.array([1], "<i4")}, CPU, source=0)
    with pytest.raises(ValueError, match="whole 32-bit words|does not decode"):
        server.decode({**model, "bits": np.zeros(3, np.uint8), "rows": np.array([2], "<i4")}, CPU, source=0)


@pytest.fixture(scope="module")
def phase1(tmp_path_factory):
    """One phase 1 (the slow part of mcr2), shared by the tests below: a source (keep all)
    trained for 100 steps (half the default --phase1-steps: the held-out nearest-mean accuracy
    below is 0.75 after it, 0.91 after 200) on 256 synthetic samples at difficulty 0.6, the
    split model whose head it trained, the data and the phase's trace."""
    torch.manual_seed(0)
    data = synthetic_dataset(seed=1, train_size=256, test_size=256, difficulty=0.6)
    x, y = to_tensor_batch(data.train.images), torch.from_numpy(data.train.labels)
    model = build_split_model("vgg11-slim", 2, 10)
    source = create_source("mcr2", model.cut_shape, CompressionConfig(phase1_steps=100))

    def batches():
        for i in range(0, 256, 16):
            yield x[i:i + 16], y[i:i + 16]
    trace_path = tmp_path_factory.mktemp("mcr2") / "phase1.jsonl"
    with TraceWriter(str(trace_path), run="t", role="source", source=0) as trace:
        source.prepare(model.head, batches, trace)
    return model, source, data, batches, trace_path


def test_phase_1_learns_then_fewer_kept_neurons_cost_fewer_bytes(phase1, tmp_path):
    import copy

    trained_model, trained, data, batches, trace_path = phase1
    losses = [e for e in map(json.loads, trace_path.read_text().splitlines()) if e["event"] == "pretrain"]
    assert len(losses) >= 40 and np.mean([e["loss"] for e in losses[-5:]]) < np.mean([e["loss"] for e in losses[:5]])
    x = to_tensor_batch(data.train.images[:32])
    sizes = {}
    for keep in (0, 16, 4):
        model = copy.deepcopy(trained_model)  # the shared one stays as phase 1 left it
        if keep == 0:
            source = copy.deepcopy(trained)
        else:  # the trained encoder, one more step (--phase1-steps 1), then its own ranking and entropy model
            source = create_source("mcr2", model.cut_shape, CompressionConfig(keep_neurons=keep, phase1_steps=1))
            source.load_state_dict(trained.state_dict())
            with TraceWriter(str(tmp_path / f"{keep}.jsonl"), run="t", role="source", source=0) as trace:
                source.prepare(model.head, batches, trace)
            assert len(source.kept) == keep
        server = create_server("mcr2", model.cut_shape, CompressionConfig())
        sent, side = source(model.head(x))
        first = source.encode(sent, side)
        assert "model.pmf" in first and "model.pmf" not in source.encode(sent, side)  # the model crosses once
        _, restored = server.decode(first, CPU, source=5)
        assert restored.shape == (32, *model.cut_shape)
        sizes[keep] = source.encode(sent, side)["bits"].nbytes
    assert sizes[4] < sizes[16] < sizes[0]


def test_the_frozen_latent_separates_classes_it_never_saw(phase1):
    """After phase 1 the rounded latent of held-out samples must carry the class: a
    nearest-class-mean rule on it (fitted on the training shard) is far above chance. With
    phase 1 stepping on 8 batches for 40 steps it was not (the server learnt 25% from it
    on the synthetic set at difficulty 0.6, against none's 97%)."""
    model, source, data, _, _ = phase1
    x, y = to_tensor_batch(data.train.images), torch.from_numpy(data.train.labels)
    model.head.eval()
    source.eval()
    with torch.no_grad():
        train = source.latent(model.head(x), noisy=False)  # what crosses: the rounded latent
        test = source.latent(model.head(to_tensor_batch(data.test.images)), noisy=False)
    means = torch.stack([train[y == c].mean(0) for c in range(10)])
    predicted = torch.cdist(test, means).argmin(1).numpy()
    accuracy = (predicted == data.test.labels).mean()
    assert accuracy > 0.6, accuracy  # chance is 0.1; 0.43 with the old phase 1
