"""The server answers the requests waiting together in passes (--server-batch,
--server-train): on the Server class in this process (``answer``, the very code the
serving loop runs on each sweep of its inbox), and once through the real serving loop
and its receiver thread over real ZeroMQ sockets, in this process too."""
import threading
import time

import numpy as np
import pytest
import torch
import zmq

from workloads import events, protocol, settings
from workloads.protocol import Message
from workloads.server import Request, Server, ghost_batchnorm
from workloads.trace import TraceWriter

from conftest import read_jsonl

pytestmark = pytest.mark.quick

BATCH = 8  # tests/conftest.py TINY
CUTS = {("none", "vgg11-slim"): (32, 8, 8), ("crbq", "vgg11-slim"): (4, 8, 8), ("none", "resnet18-slim"): (16, 32, 32)}
ATOL = 1e-6


def make(tmp_path, *extra, module="none", model="vgg11-slim", name="server") -> Server:
    args = settings.parse("server", "", ["--module", module, "--model", model, "--dataset", "synthetic",
                                         "--batch-size", str(BATCH), "--sources", "8", *map(str, extra)])
    return Server(args, TraceWriter(str(tmp_path / f"{name}.jsonl"), run="t", role="server"))


def request(identity: bytes, message: Message) -> Request:
    return Request(identity, [bytearray(bytes(f)) for f in protocol.encode(message)], time.perf_counter(), time.time())


def hello(server: Server, source: int) -> bytes:
    identity = f"source-{source}".encode()
    fields = {"source": source, "module": server.args.module, "model": server.args.model, "split": 2,
              "classes": 10, "cut": list(server.cut_shape)}
    assert decoded(server.respond(request(identity, Message("hello", fields)))[0]).op == "welcome"
    return identity


def decoded(frames) -> Message:
    return protocol.decode([bytes(f) for f in frames])


def train(seq: int, seed: int, sent_shape, n: int = BATCH, lr_scale: float = 1.0) -> Message:
    rng = np.random.default_rng(seed)
    maps = (rng.normal(size=(n, *sent_shape)) * (1 + seed) + seed).astype(np.float32)  # each source its own statistics
    return Message("train", {"seq": seq, "lr_scale": lr_scale, "want_grad": True},
                   {"maps": maps, "labels": rng.integers(0, 10, n).astype(np.uint8)})


def infer(seq: int, seed: int, sent_shape, n: int = BATCH) -> Message:
    maps = np.random.default_rng(100 + seed).normal(size=(n, *sent_shape)).astype(np.float32)
    return Message("infer", {"seq": seq}, {"maps": maps})


def replies(server: Server, requests) -> list[tuple[Message, dict]]:
    """Each request's reply and trace fields, in the order of ``requests``."""
    answered = {id(r): (decoded(out), traced) for r, out, traced in server.answer(list(requests))}
    return [answered[id(r)] for r in requests]


def parameters(server: Server) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in [*server.tail.named_parameters(prefix="tail"),
                                               *server.decompress.named_parameters(prefix="module")]}


def buffers(server: Server) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in [*server.tail.named_buffers(prefix="tail"),
                                               *server.decompress.named_buffers(prefix="module")]}


def close(a: dict, b: dict, atol=ATOL) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=1e-5) for k in a)


def test_merged_training_of_one_request_is_the_sequential_step(tmp_path):
    """Alone, a source gets the same gradient at the cut, the same loss, and leaves the same
    tail (weights and BatchNorm statistics) whichever mode the server trains in; in merged
    mode also when it is left alone in a pass (the other request of the pass refused)."""
    cut = CUTS["none", "vgg11-slim"]
    sequential = make(tmp_path, "--server-train", "sequential", name="sequential")
    merged = make(tmp_path, "--server-train", "merged", name="merged")
    for server in (sequential, merged):
        hello(server, 0)
        hello(server, 1)
    [(alone, _)] = replies(sequential, [request(b"source-0", train(1, 0, cut))])
    bad = train(7, 1, cut)  # out of order: refused, so the pass holds source 0's request alone
    (refused, _), (left, traced) = replies(merged, [request(b"source-1", bad), request(b"source-0", train(1, 0, cut))])
    assert refused.op == "error" and "expected seq 1, got 7" in refused.fields["reason"]
    assert left.op == alone.op == "grad" and traced["batch_requests"] == 1
    np.testing.assert_allclose(left.arrays["grad"], alone.arrays["grad"], atol=ATOL, rtol=0)
    assert left.fields["loss"] == alone.fields["loss"] and left.fields["correct"] == alone.fields["correct"]
    assert close(parameters(merged), parameters(sequential)) and close(buffers(merged), buffers(sequential))
    # and through the plain path: one request, one pass
    [(again, traced)] = replies(merged, [request(b"source-1", train(1, 1, cut))])
    [(again_alone, _)] = replies(sequential, [request(b"source-1", train(1, 1, cut))])
    np.testing.assert_allclose(again.arrays["grad"], again_alone.arrays["grad"], atol=ATOL, rtol=0)
    assert traced["batch_requests"] == 1 and close(parameters(merged), parameters(sequential))


@pytest.mark.parametrize("module, model", sorted(CUTS))
def test_two_merged_requests_each_get_the_gradient_they_would_get_alone(tmp_path, module, model):
    """Merged: each source's cut gradient and loss are what it gets alone against the same
    weights; the step is the sum of the two lone steps (the documented scaling: the summed
    gradient, the weight decay counted per request; one SGD step from the same weights);
    BatchNorm saw each request apart and took their statistics in order."""
    cut = CUTS[module, model]
    merged = make(tmp_path, "--server-train", "merged", module=module, model=model, name="merged")
    first = make(tmp_path, module=module, model=model, name="first")    # sequential, request 0 alone
    second = make(tmp_path, module=module, model=model, name="second")  # sequential, request 1 alone
    before = parameters(merged)
    assert close(before, parameters(first)) and close(before, parameters(second))  # one seed, one start
    for server in (merged, first, second):
        hello(server, 0)
        hello(server, 1)
    messages = [train(1, 0, cut), train(1, 1, cut)]
    together = replies(merged, [request(b"source-0", messages[0]), request(b"source-1", messages[1])])
    [(alone0, _)] = replies(first, [request(b"source-0", messages[0])])
    [(alone1, _)] = replies(second, [request(b"source-1", messages[1])])
    ids = {traced["batch_id"] for _, traced in together}
    assert len(ids) == 1 and all(t["batch_requests"] == 2 and t["batch_samples"] == 2 * BATCH for _, t in together)
    for (reply, _), alone in zip(together, (alone0, alone1)):
        assert reply.op == "grad"
        np.testing.assert_allclose(reply.arrays["grad"], alone.arrays["grad"], atol=ATOL, rtol=1e-4)
        assert reply.fields["loss"] == pytest.approx(alone.fields["loss"], abs=1e-5)
        assert reply.fields["correct"] == alone.fields["correct"]
    # one step on the summed gradient from the same weights: w0 - lr (g0 + g1 + 2 wd w0) = w_first + w_second - w0
    after, one, other = parameters(merged), parameters(first), parameters(second)
    assert close(after, {k: one[k] + other[k] - before[k] for k in before}, atol=1e-5)
    assert not close(after, one, atol=1e-5)
    # BatchNorm: the statistics of request 0, then those of request 1 (fresh weights, no step between)
    reference = make(tmp_path, module=module, model=model, name="reference")
    mixed = make(tmp_path, module=module, model=model, name="mixed")
    for server in (reference, mixed):
        server.decompress.train()
        server.tail.train()
    with torch.no_grad():
        restored = [reference.decompress.decode(m.arrays, reference.device, 0)[1] for m in messages]
        for x in restored:
            reference.tail(x)
        mixed.tail(torch.cat([mixed.decompress.decode(m.arrays, mixed.device, 0)[1] for m in messages]))
    assert close(buffers(merged), buffers(reference), atol=1e-5)
    assert not close(buffers(merged), buffers(mixed), atol=1e-5)  # one BatchNorm over both would differ


def test_ghost_batchnorm_is_each_chunk_alone_momentum_or_cumulative():
    torch.manual_seed(0)
    x = torch.randn(3 * 4, 5, 6, 6) * torch.tensor([1.0, 3.0, 0.5]).repeat_interleave(4).view(-1, 1, 1, 1)
    for momentum in (0.1, None):
        ghost, plain = torch.nn.BatchNorm2d(5, momentum=momentum), torch.nn.BatchNorm2d(5, momentum=momentum)
        with torch.no_grad():
            ghost.weight.uniform_()
            ghost.bias.uniform_()
        plain.load_state_dict(ghost.state_dict())
        with ghost_batchnorm(3, ghost):
            out = ghost(x)
        assert "forward" not in vars(ghost)  # put back
        alone = torch.cat([plain(chunk) for chunk in x.split(4)])
        assert torch.allclose(out, alone, atol=1e-5)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.allclose(getattr(ghost, name).float(), getattr(plain, name).float(), atol=1e-6), name
        ghost.eval()
        plain.eval()
        with ghost_batchnorm(3, ghost):
            assert torch.allclose(ghost(x), plain(x), atol=1e-5)  # eval mode: each sample alone


def test_requests_that_cannot_merge_are_answered_in_order_as_before(tmp_path):
    """One sweep: two steps of one size merge; a step of another size, another lr_scale,
    an inference request, a connection's second request (pipelined) and a ping are answered
    on their own, each connection's in the order it sent them."""
    cut = CUTS["none", "vgg11-slim"]
    server = make(tmp_path, "--server-train", "merged")
    ids = [hello(server, s) for s in range(5)]
    sweep = [request(ids[0], train(1, 0, cut)), request(ids[1], train(1, 1, cut, n=4)),
             request(ids[2], train(1, 2, cut)), request(ids[0], train(2, 3, cut)),
             request(ids[3], train(1, 4, cut, lr_scale=2.0)), request(ids[4], infer(1, 0, cut)),
             request(b"someone", Message("ping", {}))]
    got = replies(server, sweep)
    assert [m.op for m, _ in got] == ["grad"] * 5 + ["pred", "pong"]
    batches = [t["batch_requests"] for _, t in got]
    assert batches == [2, 1, 2, 1, 1, 1, 1]
    assert got[0][1]["batch_id"] == got[2][1]["batch_id"] < got[3][1]["batch_id"]  # source 0's second after its first
    assert got[1][0].arrays["grad"].shape == (4, *cut) and got[5][0].arrays["pred"].shape == (BATCH,)
    assert server.peers[ids[0]].seq == 2 and server.steps == 4  # a merged step, three steps alone


def test_the_sequential_default_answers_each_training_step_on_its_own(tmp_path):
    cut = CUTS["none", "vgg11-slim"]
    server = make(tmp_path)  # --server-train sequential, the default
    assert settings.option("server-train").default == "sequential"
    ids = [hello(server, s) for s in range(3)]
    got = replies(server, [request(i, train(1, s, cut)) for s, i in enumerate(ids)])
    assert [t["batch_requests"] for _, t in got] == [1, 1, 1] and server.steps == 3
    assert len({t["batch_id"] for _, t in got}) == 3


@pytest.mark.parametrize("calibrated", [False, True])
def test_inference_in_one_pass_predicts_what_one_at_a_time_does(tmp_path, calibrated):
    """Three sources' infer requests answered together give the predictions each gets alone;
    with --bn-batches, a source whose evaluation has its own calibrated statistics is never
    in a pass with the others."""
    cut = CUTS["none", "vgg11-slim"]
    one_by_one, together = make(tmp_path, name="one"), make(tmp_path, name="all")
    for server in (one_by_one, together):
        ids = [hello(server, s) for s in range(3)]
        for step in range(2):  # train a little, so that the running statistics mean something
            for source, identity in enumerate(ids):
                assert decoded(server.respond(request(identity, train(step + 1, 10 * step + source, cut)))[0]).op == "grad"
        if calibrated:  # source 0's next evaluation uses statistics of its own
            calibrate = Message("calibrate", {"seq": 3, "batch": 0}, {"maps": train(0, 42, cut).arrays["maps"]})
            assert decoded(server.respond(request(ids[0], calibrate))[0]).op == "calibrated"
    seqs = [4 if calibrated else 3, 3, 3]
    alone = [decoded(one_by_one.respond(request(i, infer(seqs[s], s, cut)))[0]) for s, i in enumerate(ids)]
    got = replies(together, [request(i, infer(seqs[s], s, cut)) for s, i in enumerate(ids)])
    for (reply, _), lone in zip(got, alone):
        np.testing.assert_array_equal(reply.arrays["pred"], lone.arrays["pred"])
    passes = [t["batch_requests"] for _, t in got]
    assert passes == ([1, 2, 2] if calibrated else [3, 3, 3])
    if calibrated:
        assert got[0][1]["batch_id"] != got[1][1]["batch_id"] == got[2][1]["batch_id"]


def test_bf16_precision_trains_and_answers_in_float32(tmp_path):
    cut = CUTS["none", "vgg11-slim"]
    server = make(tmp_path, "--server-precision", "bf16", "--server-train", "merged")
    ids = [hello(server, s) for s in range(2)]
    got = replies(server, [request(i, train(1, s, cut)) for s, i in enumerate(ids)])
    for reply, traced in got:
        assert reply.op == "grad" and reply.arrays["grad"].dtype == np.float32 and traced["batch_requests"] == 2
        assert np.isfinite(reply.arrays["grad"]).all() and np.abs(reply.arrays["grad"]).sum() > 0


class Gate:
    """Holds the serving loop before its next sweep of the inbox until opened, so that a
    test can have several requests waiting there at once."""

    def __init__(self, server: Server):
        self.open, self.waiting, self.receiver = threading.Event(), threading.Event(), None
        self.open.set()
        original = server._sweep

        def sweep(receiver):
            self.receiver = receiver
            if not self.open.is_set():
                self.waiting.set()
                self.open.wait()
            return original(receiver)
        server._sweep = sweep


def test_the_serving_loop_takes_the_waiting_requests_in_one_pass_and_traces_each(tmp_path):
    """The real loop on real sockets: four sources' training steps wait in the inbox together;
    with --server-batch 24 three are merged into one step (24 samples) and the fourth waits for
    the next sweep; every request has its own event, declared, with the pass it was part of,
    and its times still add up to its stay."""
    cut = CUTS["none", "vgg11-slim"]
    server = make(tmp_path, "--server-train", "merged", "--server-batch", 3 * BATCH)
    context = zmq.Context.instance()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    gate = Gate(server)
    loop = threading.Thread(target=server.serve, args=(router,), daemon=True)
    loop.start()
    dealers = []
    try:
        fields = {"module": "none", "model": "vgg11-slim", "split": 2, "classes": 10, "cut": list(cut)}
        for source in range(4):
            dealer = context.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(f"tcp://127.0.0.1:{port}")
            dealers.append(dealer)
            dealer.send_multipart(protocol.encode(Message("hello", {"source": source, **fields})))
            assert dealer.poll(20000) and protocol.decode(dealer.recv_multipart()).op == "welcome"
        gate.open.clear()
        assert gate.waiting.wait(10)
        for source, dealer in enumerate(dealers):
            dealer.send_multipart(protocol.encode(train(1, source, cut)))
        deadline = time.time() + 20
        while gate.receiver.inbox.qsize() < 4:
            assert time.time() < deadline, "the requests did not reach the inbox"
            time.sleep(0.01)
        gate.open.set()
        times = []
        for dealer in dealers:
            assert dealer.poll(60000), "no reply"
            reply = protocol.decode(dealer.recv_multipart())
            assert reply.op == "grad", reply.fields
            times.append(protocol.read_times(reply.fields))
    finally:
        server.stopping = True
        loop.join(10)
        for dealer in dealers:
            dealer.close(0)
        router.close(0)
        server.trace.close()
    assert not loop.is_alive()
    records = [e for e in read_jsonl(tmp_path / "server.jsonl") if e["event"] == events.REQUEST]
    assert [p for e in records for p in events.problems(events.ROLE_SERVER, e)] == []
    steps = [e for e in records if e["op"] == "grad"]
    assert sorted(e["batch_requests"] for e in steps) == [1, 3, 3, 3]
    merged = [e for e in steps if e["batch_requests"] == 3]
    assert len({e["batch_id"] for e in merged}) == 1 and {e["batch_samples"] for e in merged} == {3 * BATCH}
    compute = merged[0]["batch_compute_s"]
    assert all(e["batch_compute_s"] == compute and e["server_compute_s"] >= compute - 2e-6 for e in merged)
    shares = sum(e["duration_s"] - e["server_decode_s"] - e["server_encode_s"] for e in merged)
    assert shares == pytest.approx(compute, abs=0.05)  # the pass's compute, shared out by samples
    assert server.steps == 2
    for t in times:  # queue_s + server_s is still the whole stay, arrival to reply
        server_s = t["server_decode_s"] + t["server_compute_s"] + t["server_encode_s"]
        assert min(t[name] for name in protocol.SERVER_PARTS) >= 0
        assert t["replied_at"] - t["arrived_at"] == pytest.approx(t["queue_s"] + server_s, abs=0.02)
