"""BatchNorm and frozen parts (workloads/batchnorm.py): what a module froze stays frozen in
training, and precise statistics before evaluation (--bn-batches), recomputed apart from
training's, at the source and at the server, from the same batches."""
import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from workloads import batchnorm, settings
from workloads.models import build_split_model
from workloads.protocol import Message, ProtocolError
from workloads.server import Laps, Server
from workloads.trace import TraceWriter

from conftest import TINY, read_jsonl


def batchnorm_means(module):
    return [m.running_mean.clone() for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.quick
def test_a_frozen_head_keeps_its_batchnorm_statistics_and_a_trainable_one_learns_them():
    torch.manual_seed(0)
    frozen = build_split_model("vgg11-slim", 2, 10).head
    for p in frozen.parameters():
        p.requires_grad_(False)  # as mcr2 and entropic do after pre-training at the source
    before = batchnorm_means(frozen)
    assert before, "the head has BatchNorm layers"
    batchnorm.train_mode(frozen)
    frozen(torch.randn(8, 3, 32, 32))
    assert all(torch.equal(a, b) for a, b in zip(before, batchnorm_means(frozen)))
    assert not frozen.training

    trainable = build_split_model("vgg11-slim", 2, 10).head
    before = batchnorm_means(trainable)
    batchnorm.train_mode(trainable)
    trainable(torch.randn(8, 3, 32, 32))
    assert not any(torch.equal(a, b) for a, b in zip(before, batchnorm_means(trainable)))


@pytest.mark.quick
def test_a_frozen_part_keeps_its_statistics_in_a_calibration_too():
    """mcr2 and entropic freeze the head after pre-training: the server trained on what the
    head gives with its own statistics, so an evaluation must see the same."""
    torch.manual_seed(0)
    head = build_split_model("vgg11-slim", 2, 10).head
    head(torch.randn(16, 3, 32, 32))  # statistics of their own
    for p in head.parameters():
        p.requires_grad_(False)
    head.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = head(x)
        assert batchnorm.fresh(head) == {}
        stats = batchnorm.fresh(head)
        with batchnorm.using(stats, head, accumulate=True):
            head(torch.randn(16, 3, 32, 32) * 3)
        with batchnorm.using(stats, head):
            torch.testing.assert_close(head(x), expected)


@pytest.mark.quick
def test_the_statistics_come_back_when_the_model_fails_inside():
    model = _model()
    model(torch.randn(2, 3, 6, 6))
    own = model[1].running_mean
    with pytest.raises(RuntimeError), torch.no_grad(), batchnorm.using(batchnorm.fresh(model), model,
                                                                          accumulate=True):
        model(torch.randn(2, 5, 6, 6))  # the wrong channels
    assert model[1].running_mean is own and model[1].momentum == pytest.approx(0.1)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))


@pytest.mark.quick
def test_the_statistics_are_the_plain_average_over_the_batches_and_training_keeps_its_own():
    model = _model()
    model(torch.randn(2, 3, 6, 6))  # the lazy layer
    bn = model[1]
    bn.running_mean.fill_(5.0)
    own = copy.deepcopy(bn.state_dict())
    batches = [torch.randn(8, 3, 6, 6) * (i + 1) + i for i in range(3)]
    model.eval()
    stats = batchnorm.fresh(model)
    with torch.no_grad(), batchnorm.using(stats, model, accumulate=True):
        for x in batches:
            model(x)
    assert not bn.training and bn.momentum == pytest.approx(0.1)  # the layer as it was
    for key, value in own.items():
        torch.testing.assert_close(bn.state_dict()[key], value)  # training's statistics untouched
    with torch.no_grad():
        means = torch.stack([model[0](x).mean(dim=(0, 2, 3)) for x in batches])
        variances = torch.stack([model[0](x).var(dim=(0, 2, 3), unbiased=True) for x in batches])
    mean, var, count = stats["0.1"]
    torch.testing.assert_close(mean, means.mean(0))
    torch.testing.assert_close(var, variances.mean(0))
    assert int(count) == 3

    x = torch.randn(4, 3, 6, 6)
    expected = copy.deepcopy(model)
    expected[1].running_mean.copy_(mean)
    expected[1].running_var.copy_(var)
    with torch.no_grad(), batchnorm.using(stats, model):
        torch.testing.assert_close(model(x), expected(x))
    with torch.no_grad():
        assert not torch.allclose(model(x), expected(x))  # and without them, training's again


def _server(tmp_path):
    args = settings.parse("server", "", ["--module", "none", "--model", "vgg11-slim", "--split", "2",
                                         "--batch-size", "4"])
    return Server(args, TraceWriter(str(tmp_path / "server.jsonl"), run="t", role="server"))


def _maps(seed):
    return {"maps": np.random.default_rng(seed).normal(size=(4, 32, 8, 8)).astype(np.float32)}


@pytest.mark.quick
def test_the_server_calibrates_per_source_and_a_training_step_of_that_source_drops_it(tmp_path):
    server = _server(tmp_path)
    logits = []
    server.tail.register_forward_hook(lambda module, inputs, output: logits.append(output.detach().clone()))
    infer = Message("infer", {}, _maps(9))
    server._infer(infer, 0, Laps())
    first = logits.pop()
    layers = {name: tensor.clone() for name, tensor in server.tail.state_dict().items() if "running" in name}
    for batch in range(3):
        shifted = {k: v * 10 + 3 for k, v in _maps(batch).items()}
        assert server._calibrate(Message("calibrate", {"batch": batch}, shifted), 0, Laps()).op == "calibrated"
    for name, tensor in server.tail.state_dict().items():
        if "running" in name:
            torch.testing.assert_close(tensor, layers[name])  # training's statistics untouched
    stats, batches = server.calibrated[0]
    assert set(server.calibrated) == {0} and batches == 3 and all(int(n) == 3 for _, _, n in stats.values())
    logits.clear()  # the calibration's own forwards
    server._infer(infer, 0, Laps())
    server._infer(infer, 1, Laps())  # source 1 has not calibrated: training's statistics
    calibrated, own = logits
    assert torch.equal(own, first) and not torch.allclose(calibrated, own)

    train = Message("train", {"want_grad": False, "lr_scale": 1.0}, {**_maps(5), "labels": np.arange(4, dtype=np.uint8)})
    server._train(train, 1, Laps())
    assert set(server.calibrated) == {0}  # another source's step leaves it
    server._train(train, 0, Laps())
    assert not server.calibrated


@pytest.mark.quick
@pytest.mark.parametrize("batches, problem", [([1], "calibrate batch 1, expected 0"),
                                              ([0, 2], "calibrate batch 2, expected 1"),
                                              ([None], "calibrate needs a batch number, got None"),
                                              ([True], "calibrate needs a batch number, got True"),
                                              ([-1], "calibrate needs a batch number, got -1")])
def test_a_calibration_out_of_order_is_refused(tmp_path, batches, problem):
    server = _server(tmp_path)
    *good, bad = batches
    for batch in good:
        server._calibrate(Message("calibrate", {"batch": batch}, _maps(0)), 0, Laps())
    fields = {} if bad is None else {"batch": bad}
    with pytest.raises(ProtocolError, match=problem):
        server._calibrate(Message("calibrate", fields, _maps(0)), 0, Laps())


def test_a_run_that_calibrates_trains_exactly_as_one_that_does_not(tmp_path, cli):
    """In-process, the real source and server: the calibration draws nothing from the data
    order and changes no weight or running statistic, so every training step's loss is
    the same with and without it; its bytes are in the evaluation's."""
    arms = {}
    for bn in (0, 2):
        out = tmp_path / f"bn{bn}"
        result = cli("run", "--sources", 1, "--module", "none", "--batches", 3, "--epochs", 2, *TINY,
                     "--bn-batches", bn, "--backend", "inproc", "--out", out, "--quiet", "--no-report")
        assert result.returncode == 0, result.stderr
        arms[bn] = read_jsonl(out / "none" / "source-0.jsonl")
    losses = {bn: [e["loss"] for e in events if e["event"] == "batch"] for bn, events in arms.items()}
    assert len(losses[0]) == 6 and losses[0] == losses[2]
    assert not [e for e in arms[0] if e["event"] == "calibrate"]
    calibrations = [e for e in arms[2] if e["event"] == "calibrate"]
    assert [(e["epoch"], e["batch"], e["samples"]) for e in calibrations] == [(0, 0, 8), (0, 1, 8), (1, 0, 8), (1, 1, 8)]
    assert all(e["bytes_sent"] > 8 * 32 * 8 * 8 * 4 for e in calibrations)  # a batch of 8 float32 cuts
    evals = {bn: [e for e in events if e["event"] == "eval"] for bn, events in arms.items()}
    for epoch, (plain, calibrated) in enumerate(zip(evals[0], evals[2])):
        extra = sum(e["bytes_sent"] for e in calibrations if e["epoch"] == epoch)
        assert calibrated["bytes_sent"] == plain["bytes_sent"] + extra
        assert calibrated["coded_sent"] == plain["coded_sent"]  # the payload at inference is the test set's
    summary = json.loads((tmp_path / "bn2" / "summary.json").read_text())["arms"]["none"]
    assert summary["eval_bytes_sent_total"] == sum(e["bytes_sent"] for e in evals[2])
    server = read_jsonl(tmp_path / "bn2" / "none" / "server.jsonl")
    assert sum(e.get("op") == "calibrated" for e in server if e["event"] == "request") == 4
