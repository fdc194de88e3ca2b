"""entropic (paper 004): GDN, the learned factorized prior and its real range-coded
bytes, the decoder and prior sent once per source, and the rate moving with beta."""
import json

import numpy as np
import pytest
import torch

from workloads.compression import CompressionConfig, create_server, create_source
from workloads.compression.entropic import GDN, LaplacePrior, range_code, range_decode
from workloads.data import synthetic_dataset, to_tensor_batch
from workloads.models import build_split_model
from workloads.trace import TraceWriter

CPU = torch.device("cpu")


@pytest.mark.quick
def test_gdn_follows_its_formula_and_the_inverse_multiplies():
    torch.manual_seed(0)
    gdn, igdn = GDN(3), GDN(3, inverse=True)
    with torch.no_grad():
        gdn.beta.copy_(torch.tensor([1.0, 2.0, 0.5]))
        gdn.gamma.copy_(torch.rand(3, 3))
    igdn.load_state_dict(gdn.state_dict())
    x = torch.randn(2, 3, 4, 4)
    beta2, gamma2 = gdn.beta ** 2 + 1e-6, gdn.gamma ** 2
    norm = torch.sqrt(beta2.view(1, 3, 1, 1) + torch.einsum("ij,bjhw->bihw", gamma2, x ** 2))
    torch.testing.assert_close(gdn(x), x / norm)
    torch.testing.assert_close(igdn(x), x * norm)


@pytest.mark.quick
def test_real_bitstream_is_lossless_and_matches_the_prior_rate():
    prior = LaplacePrior(4)
    with torch.no_grad():
        prior.log_scale.copy_(torch.log(torch.tensor([0.5, 1.0, 2.0, 4.0])))
    values = torch.distributions.Laplace(0.0, torch.tensor([0.5, 1.0, 2.0, 4.0]).view(1, 4, 1, 1)) \
        .sample((64,)).squeeze(1).round().expand(64, 4, 4, 4).contiguous()
    loc, scale = (t.detach().numpy() for t in prior.params(values))
    data = range_code(values.numpy(), loc, scale)
    np.testing.assert_array_equal(range_decode(data, loc, scale).reshape(values.shape), values.numpy())
    ideal = prior.bits(values).item() / 8
    assert ideal * 0.98 <= data.nbytes <= ideal * 1.02 + 8


def distilled(beta, tmp_path):
    torch.manual_seed(0)
    data = synthetic_dataset(seed=4, train_size=128, test_size=0).train
    x, y = to_tensor_batch(data.images), torch.from_numpy(data.labels)
    model = build_split_model("vgg11-slim", 2, 10)
    config = CompressionConfig(beta=beta, model="vgg11-slim", distill_steps=24)  # 3 passes of 8 batches
    source = create_source("entropic", model.cut_shape, config)

    def batches():
        for _ in range(3):
            for i in range(0, 128, 16):
                yield x[i:i + 16], y[i:i + 16]
    path = tmp_path / f"{beta}.jsonl"
    with TraceWriter(str(path), run="t", role="source", source=0) as trace:
        source.prepare(model.head, batches, trace)
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return source, model, x, events


@pytest.fixture(scope="module")
def distillations(tmp_path_factory):
    """``distilled(beta)`` once per beta in this module; each call gets copies of its own."""
    import copy

    made = {}

    def get(beta):
        if beta not in made:
            made[beta] = distilled(beta, tmp_path_factory.mktemp("entropic"))
        return copy.deepcopy(made[beta])
    return get


def test_teacher_first_then_distillation_and_rate_falls_with_beta(distillations):
    sizes = {}
    for beta in (0.1, 30.0):
        source, model, x, events = distillations(beta)
        teacher = [e for e in events if e["stage"] == "teacher"]
        distill = [e for e in events if e["stage"] == "distill"]
        assert teacher and distill and events.index(teacher[-1]) < events.index(distill[0])
        assert teacher[-1]["loss"] < teacher[0]["loss"] and distill[-1]["distortion"] < distill[0]["distortion"]
        sent, side = source(model.head(x[:32]))
        first = source.encode(sent, side)
        assert any(k.startswith("decoder.") for k in first) and any(k.startswith("prior.") for k in first)
        second = source.encode(sent, side)
        # the decoder, the prior and the teacher's layers cross once; a training step's teacher logits every time
        assert set(second) == {"bits", "latent_shape", "teacher"} and "teacher_tail" in first
        server = create_server("entropic", model.cut_shape, CompressionConfig())
        server.decode(first, CPU, source=3)
        _, restored = server.decode(second, CPU, source=3)
        assert restored.shape == (32, *model.cut_shape)
        sizes[beta] = second["bits"].nbytes
    assert sizes[30.0] < sizes[0.1]


@pytest.mark.quick
def test_the_server_refuses_latents_before_the_decoder():
    server = create_server("entropic", (32, 8, 8), CompressionConfig())
    with pytest.raises(ValueError, match="no decoder received from source 0"):
        server.decode({"bits": np.zeros(4, np.uint8), "latent_shape": np.array([1, 16, 4, 4], "<i4")}, CPU)


def test_the_server_layers_start_from_the_teacher_and_learn_from_its_logits(tmp_path, distillations):
    """Paper 004: the student's layers after the bottleneck start from the teacher's, and
    fine-tuning adds the KL divergence to the teacher's class distribution."""
    from workloads import settings
    from workloads.protocol import Message
    from workloads.server import Laps, Server

    source, model, x, _ = distillations(0.1)  # any beta: the teacher and its logits are the point
    teacher = source._teacher[0]
    source.train()  # a training step: the teacher's logits go with it
    first = source.encode(*source(model.head(x[:16])))
    second = source.encode(*source(model.head(x[:16])))
    with torch.no_grad():
        np.testing.assert_allclose(first["teacher"], teacher(model.head(x[:16])).numpy(), rtol=1e-5, atol=1e-6)
    assert "teacher_tail" in first and "teacher_tail" not in second and second["teacher"].shape == (16, 10)
    assert source.coded_bytes(first) == first["bits"].nbytes  # the rate is the latent's alone

    args = settings.parse("server", "", ["--module", "entropic", "--model", "vgg11-slim", "--split", "2",
                                         "--batch-size", "16"])
    server = Server(args, TraceWriter(str(tmp_path / "server.jsonl"), run="t", role="server"))
    first["labels"] = np.arange(16, dtype=np.uint8) % 10
    server._train(Message("train", {"want_grad": False, "lr_scale": 1e-9}, first), 0, Laps())
    assert server.tail_from == 0
    mine, theirs = dict(server.tail.named_parameters()), dict(teacher.named_parameters())
    assert mine.keys() == theirs.keys()
    for name in mine:  # one step at a negligible lr: still the teacher's weights
        torch.testing.assert_close(mine[name].detach(), theirs[name], atol=1e-6, rtol=0)
    server._start_tail_from(np.zeros(3, np.float32), 1)  # a later source's teacher is ignored once training began
    assert server.tail_from == 0

    part = server.decompress
    logits = torch.randn(4, 10)
    part._teacher_logits = logits.clone()
    assert part.distill_loss(logits).item() == pytest.approx(0.0, abs=1e-6)
    part._teacher_logits = torch.zeros(4, 10)
    assert part.distill_loss(logits).item() > 0.01
    assert part.distill_loss(logits) is None  # each request's target serves its own step only
    with pytest.raises(ValueError, match="the teacher's logits must be 16 x 10"):
        part.decode({**second, "teacher": np.zeros((16, 3), np.float32)}, CPU, source=0)


def test_a_real_run_starts_the_server_from_the_teacher_and_distils_every_training_step(tmp_path, cli):
    """Through the source program's own training step (in-process): the teacher's layers cross
    once and start the server's, every training request carries its logits (the server
    reports the KL term), evaluations carry none."""
    from conftest import TINY, read_jsonl

    out = tmp_path / "run"
    result = cli("run", "--sources", 1, "--module", "entropic", "--batches", 2, "--epochs", 1,
                 "--pretrain-epochs", 1, "--distill-steps", 5, *TINY, "--backend", "inproc", "--out", out,
                 "--quiet")
    assert result.returncode == 0, result.stderr
    server = read_jsonl(out / "entropic" / "server.jsonl")
    assert [e["source"] for e in server if e["event"] == "tail_from"] == [0]
    steps = [e for e in read_jsonl(out / "entropic" / "source-0.jsonl") if e["event"] == "batch"]
    assert len(steps) == 2 and all(e["distill_loss"] > 0 for e in steps)
    arm = json.loads((out / "summary.json").read_text())["arms"]["entropic"]
    # the teacher one pass of 2 batches; the distillation whole passes until 5 steps: 3 passes
    assert arm["pretrain_samples_per_source"] == [(2 + 3 * 2) * 8]
    assert arm["eval_coded_bytes_per_sample"] < arm["bytes_per_sample_sent"]
