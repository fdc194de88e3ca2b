"""Every arm gets what its paper gives it: a module's learning-rate scale applies to its own
server-side parameters only, the method's payload is counted apart from the stream, and
every deviation from a paper is declared in the module's registry entry."""
import numpy as np
import pytest
import torch

from workloads import settings
from workloads.compression import CompressionConfig, available, create_source, get
from workloads.models import build_split_model
from workloads.protocol import Message
from workloads.server import Laps, Server
from workloads.trace import TraceWriter

pytestmark = pytest.mark.quick  # every test here is fast: the quick tier (-m quick)


def _server(tmp_path, module: str, lr: float = 0.01) -> Server:
    args = settings.parse("server", "", ["--module", module, "--model", "vgg11-slim", "--split", "2",
                                         "--lr", str(lr), "--batch-size", "4"])
    return Server(args, TraceWriter(str(tmp_path / "server.jsonl"), run="t", role="server"))


def test_a_module_lr_scale_slows_its_own_decoder_and_never_the_shared_tail(tmp_path):
    """entropic's decoder arrives with the first message and trains at its module's lr
    scale; the tail, which every arm shares, trains at the run's lr (times the source's boost)."""
    server = _server(tmp_path, "entropic", lr=0.01)
    assert get("entropic").server_lr_scale == pytest.approx(0.1)
    model = build_split_model("vgg11-slim", 2, 10)
    source = create_source("entropic", model.cut_shape, CompressionConfig(model="vgg11-slim"))
    with torch.no_grad():
        arrays = source.encode(*source(model.head(torch.randn(4, 3, 32, 32))))
    arrays["labels"] = np.arange(4, dtype=np.uint8)
    server._train(Message("train", {"lr_scale": 2.0, "want_grad": False}, arrays), 0, Laps())
    tail = {id(p) for p in server.tail.parameters()}
    decoder = {id(p) for p in server.decompress.parameters() if p.requires_grad}  # the prior stays the source's
    seen_tail = seen_decoder = 0
    for group in server.optimizer.param_groups:
        for p in group["params"]:
            if id(p) in tail:
                seen_tail += 1
                assert group["lr"] == pytest.approx(0.01 * 2.0)
            else:
                assert id(p) in decoder
                seen_decoder += 1
                assert group["lr"] == pytest.approx(0.01 * 2.0 * 0.1)
    assert seen_tail == len(tail) and seen_decoder == len(decoder) > 0


def test_every_declared_deviation_is_shown_by_testbed_modules_and_the_readme():
    """A researcher sees, for every arm of a plot, how it differs from the paper it names."""
    import re
    from pathlib import Path

    from testbed.cli import modules_table

    def words(text):
        return re.sub(r"\s+", " ", text)

    printed = words(modules_table())
    readme = words((Path(__file__).parents[1] / "README.md").read_text())
    declared = [(name, d) for name in available() for d in get(name).deviations]
    assert {name for name, _ in declared} >= {"entropic", "mcr2", "cdc", "crbq"}
    for name, d in declared:
        for text in (d.paper, d.ours, d.why):
            assert words(text) in printed, (name, text)
            assert words(text) in readme, (name, text)


@pytest.mark.parametrize("module", available())
def test_every_module_names_arrays_it_really_sends_as_its_payload(module):
    """The payload (the rate in the paper's unit) is counted from arrays the module really
    sends, in training and in inference; a misspelt name would count nothing."""
    model = build_split_model("vgg11-slim", get(module).split_for(2), 10)
    source = create_source(module, model.cut_shape, CompressionConfig(model="vgg11-slim"))
    if module == "mcr2":  # its entropy model comes from phase 1
        source.low, source.pmf = np.zeros(source.dim, np.int32), np.full((source.dim, 2), 0.5, np.float32)
    x = torch.randn(4, 3, 32, 32)
    sent_names = set()
    for training in (True, False):
        source.train(training)
        with torch.set_grad_enabled(training):
            arrays = source.encode(*source(model.head(x)))
        sent_names |= set(arrays)
        assert source.coded_bytes(arrays) > 0, (module, training)
        assert source.coded_bytes(arrays) <= sum(a.nbytes for a in arrays.values())
        assert "labels" not in source.coded_arrays and not any(n.startswith("decoder.") for n in source.coded_arrays)
    assert set(source.coded_arrays) <= sent_names, module
