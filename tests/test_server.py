"""The real server program over real ZeroMQ sockets."""
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from workloads import protocol
from workloads.protocol import Message

from conftest import read_jsonl

HELLO = {"module": "filter", "model": "vgg11-slim", "split": 2, "classes": 10, "cut": [32, 8, 8]}


@pytest.fixture
def server(tmp_path, port):
    trace = tmp_path / "server.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "workloads.server", "--module", "filter", "--model", "vgg11-slim",
                             "--dataset", "synthetic", "--port", str(port), "--trace", str(trace)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (trace.exists() and "listening" in trace.read_text()):
        assert proc.poll() is None and time.time() < deadline, "server did not start"
        time.sleep(0.1)
    yield proc, port, trace
    proc.terminate()
    proc.wait(10)


def connect(port):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


def ask(sock, frames):
    sock.send_multipart(frames)
    assert sock.poll(20000), "no reply"
    return protocol.decode(sock.recv_multipart())


def train_message(seq, batch=4):
    return Message("train", {"seq": seq, "lr_scale": 1.0, "want_grad": True}, {
        "maps": np.random.default_rng(seq).normal(size=(batch, 2, 8, 8)).astype(np.float32),
        "index": np.array([0, 7], np.uint8), "labels": np.arange(batch, dtype=np.uint8)})


def test_a_training_step_returns_the_gradient_of_the_sent_maps(server):
    _, port, _ = server
    sock = connect(port)
    assert ask(sock, protocol.encode(Message("hello", {"source": 0, **HELLO}))).op == "welcome"
    reply = ask(sock, protocol.encode(train_message(1)))
    assert reply.op == "grad" and reply.arrays["grad"].shape == (4, 2, 8, 8)
    assert np.abs(reply.arrays["grad"]).sum() > 0 and reply.fields["loss"] > 0
    sock.close()


def test_bad_messages_get_an_error_reply_and_the_server_keeps_serving(server):
    proc, port, trace = server
    sock = connect(port)
    assert "before hello" in ask(sock, protocol.encode(train_message(1))).fields["reason"]
    assert "not JSON" in ask(sock, [b"\x80garbage"]).fields["reason"]
    wrong = ask(sock, protocol.encode(Message("hello", {"source": 0, **HELLO, "split": 3})))
    assert wrong.op == "error" and "split=3" in wrong.fields["reason"]
    assert ask(sock, protocol.encode(Message("hello", {"source": 0, **HELLO}))).op == "welcome"
    out_of_order = ask(sock, protocol.encode(train_message(5)))
    assert out_of_order.op == "error" and "expected seq 1, got 5" in out_of_order.fields["reason"]
    bad_labels = train_message(1)
    bad_labels.arrays["labels"] = np.array([0, 1, 2, 99], np.uint8)
    assert "labels must lie in 0..9" in ask(sock, protocol.encode(bad_labels)).fields["reason"]
    assert ask(sock, protocol.encode(train_message(1))).op == "grad"  # still serving, seq not consumed by errors
    assert proc.poll() is None
    errors = [e for e in read_jsonl(trace) if e["event"] == "error"]
    assert len(errors) == 5
    sock.close()


def test_a_silent_source_does_not_stall_the_others(server):
    _, port, _ = server
    silent, busy = connect(port), connect(port)
    assert ask(silent, protocol.encode(Message("hello", {"source": 0, **HELLO}))).op == "welcome"
    silent.send_multipart(protocol.encode(Message("hello", {"source": 0, **HELLO}))[:1])  # and then nothing
    assert ask(busy, protocol.encode(Message("hello", {"source": 1, **HELLO}))).op == "welcome"
    for seq in range(1, 4):
        assert ask(busy, protocol.encode(train_message(seq))).op == "grad"
    silent.close()
    busy.close()


def test_the_port_in_use_is_a_one_line_error(server, tmp_path):
    _, port, _ = server
    result = subprocess.run([sys.executable, "-m", "workloads.server", "--port", str(port), "--dataset", "synthetic"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"server: cannot listen on port {port}: Address already in use"]
