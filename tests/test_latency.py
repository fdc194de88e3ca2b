"""Every request's round trip, split into parts and traced: a real server and a real
source process (the parts' structure, not their speed), and two clients whose requests
reach the server together (the second one's queue_s covers the first one's service)."""
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import read_jsonl
from test_server import ask, connect, hello, start_server, stop, train_message
from workloads import protocol

EPS = 1e-3      # what the sums may exceed by (rounding to microseconds, clock granularity)
ROUNDED = 1e-5  # a difference of values each rounded to 6 decimals
SOURCE_PARTS = ("compute_s", "encode_s", "rtt_s", "decode_s")
SERVER = protocol.SERVER_PARTS + ("server_s",)
EPOCHS, BATCHES, BATCH, EVAL = 2, 3, 4, 10


def run_source(tmp_path, port):
    trace = tmp_path / "source.jsonl"
    result = subprocess.run([sys.executable, "-m", "workloads.source", "--module", "filter", "--model", "vgg11-slim",
                             "--dataset", "synthetic", "--batch-size", str(BATCH), "--eval-samples", str(EVAL),
                             "--batches", str(BATCHES), "--epochs", str(EPOCHS), "--sources", "2", "--source-id", "0",
                             "--server", f"tcp://127.0.0.1:{port}", "--trace", str(trace), "--threads", "1"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return read_jsonl(trace)


def check_parts(event):
    """The invariants of one request's parts (batch or infer)."""
    for name in ("latency_s", *SOURCE_PARTS, *SERVER, "network_s"):
        assert isinstance(event[name], float) and event[name] >= 0, (name, event)
    for name in ("net_up_s", "net_down_s"):  # two wall clocks (here one host's): granularity only
        assert isinstance(event[name], float) and event[name] >= -EPS, (name, event)
    assert sum(event[name] for name in SOURCE_PARTS) + event.get("backward_s", 0) <= event["latency_s"] + EPS
    assert event["queue_s"] + event["server_s"] <= event["rtt_s"] + EPS
    assert math.isclose(event["network_s"], event["rtt_s"] - event["server_s"] - event["queue_s"], abs_tol=ROUNDED)
    assert math.isclose(event["server_s"], event["server_decode_s"] + event["server_compute_s"]
                        + event["server_encode_s"], abs_tol=ROUNDED)


def test_every_training_step_and_inference_request_is_traced_in_parts(tmp_path, port):
    server, server_trace = start_server(tmp_path, port, "--expect-sources", 1)
    try:
        events = run_source(tmp_path, port)
        assert server.wait(30) == 0, server.stderr.read()
    finally:
        stop(server)
    batches = [e for e in events if e["event"] == "batch"]
    infers = [e for e in events if e["event"] == "infer"]
    evals = [e for e in events if e["event"] == "eval"]
    assert len(batches) == EPOCHS * BATCHES
    for event in batches:
        check_parts(event)
        assert event["backward_s"] >= 0
        assert event["rtt_s"] == event["wait_s"] and event["latency_s"] == event["duration_s"]
    # one infer event per split-inference request; together they are the epoch's eval
    requests_per_eval = -(-EVAL // BATCH)
    assert len(infers) == EPOCHS * requests_per_eval and len(evals) == EPOCHS
    for event in infers:
        check_parts(event)
        assert "backward_s" not in event
    for ev in evals:
        mine = [e for e in infers if e["epoch"] == ev["epoch"]]
        assert [e["samples"] for e in mine] == [BATCH] * (EVAL // BATCH) + [EVAL % BATCH] * (EVAL % BATCH > 0)
        assert sum(e["samples"] for e in mine) == ev["samples"]
        assert sum(e["bytes_sent"] for e in mine) == ev["bytes_sent"]
        assert sum(e["bytes_received"] for e in mine) == ev["bytes_received"]
    # what the source traces from the reply is what the server traced for that request
    served = [e for e in read_jsonl(server_trace) if e["event"] == "request" and e["op"] in ("grad", "pred")]
    answered = [e for e in events if e["event"] in ("batch", "infer")]
    assert [e["op"] for e in served] == ["grad" if e["event"] == "batch" else "pred" for e in answered]
    for mine, theirs in zip(answered, served, strict=True):
        assert {name: mine[name] for name in protocol.SERVER_PARTS} == {name: theirs[name] for name in protocol.SERVER_PARTS}
        assert math.isclose(mine["server_s"], theirs["server_s"], abs_tol=ROUNDED)
        assert theirs["duration_s"] >= theirs["server_s"]
    connected = next(e for e in events if e["event"] == "connected")
    assert "times" not in connected  # the exchange's, not one of the reply's fields


def wait_until_stopped(pid, timeout_s=30) -> None:
    """Until every thread of ``pid`` is stopped (state T in /proc): none reads a socket any more."""
    deadline = time.time() + timeout_s
    while True:
        states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0]
                  for task in Path(f"/proc/{pid}/task").iterdir()]
        if all(state in ("T", "t") for state in states):
            return
        assert time.time() < deadline, f"the server's threads did not stop: {states}"
        time.sleep(0.01)


def queued_at(port) -> int:
    """Bytes the kernel holds, not yet read, on the TCP connections accepted at ``port``."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == "01":  # local port, ESTABLISHED
            total += int(fields[4].split(":")[1], 16)  # rx_queue
    return total


def test_requests_that_arrive_together_queue_behind_each_other(tmp_path, port):
    """Two sources send while the server is stopped (SIGSTOP): when it goes on, both requests
    are there at once, and the one served second waited for the first."""
    batch = 1  # two requests of 33 kB fit in the receive buffers (tcp_rmem: 128 kB by default) at once
    server, _ = start_server(tmp_path, port, "--batch-size", batch)
    first, second = connect(port), connect(port)
    try:
        assert ask(first, hello(0)).op == "welcome" and ask(second, hello(1)).op == "welcome"
        message = train_message(1, batch)
        message.arrays["labels"] %= 10
        frames = protocol.encode(message)
        os.kill(server.pid, signal.SIGSTOP)
        wait_until_stopped(server.pid)  # kill() returns before a thread running elsewhere has stopped
        try:
            first.send_multipart(frames)
            second.send_multipart(frames)
            deadline = time.time() + 30
            while queued_at(port) < 2 * protocol.stream_bytes(frames):
                assert time.time() < deadline, "the requests did not reach the server's host"
                time.sleep(0.01)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        replies = []
        for sock in (first, second):
            assert sock.poll(60000), "no reply"
            reply = protocol.decode(sock.recv_multipart())
            assert reply.op == "grad", reply.fields
            replies.append(protocol.read_times(reply.fields))
    finally:
        first.close()
        second.close()
        stop(server)
    a, b = sorted(replies, key=lambda times: times["arrived_at"])
    for times in (a, b):
        assert all(times[name] >= 0 for name in protocol.SERVER_PARTS) and times["replied_at"] >= times["arrived_at"]
    served_a = a["server_decode_s"] + a["server_compute_s"] + a["server_encode_s"]
    assert b["arrived_at"] < a["replied_at"]  # both were in before the first was answered ...
    assert b["queue_s"] > 0  # ... so the second waited, at least until the first was done:
    assert b["queue_s"] >= a["queue_s"] + served_a - (b["arrived_at"] - a["arrived_at"]) - ROUNDED


@pytest.mark.quick
def test_the_servers_times_cross_in_one_field_whose_width_does_not_depend_on_the_digits():
    small = dict.fromkeys(protocol.SERVER_PARTS, 0.0) | {"arrived_at": 1.7e9, "replied_at": 1.7e9}
    large = dict.fromkeys(protocol.SERVER_PARTS, 9.123456789) | {"arrived_at": 1799999999.99, "replied_at": 1.8e9 - 1e-7}
    assert len(protocol.times_field(small)) == len(protocol.times_field(large))
    fields = {"loss": 1.0, "times": protocol.times_field(large)}
    times = protocol.read_times(fields)
    assert fields == {"loss": 1.0} and list(times) == list(protocol.SERVER_TIMES)
    assert times["queue_s"] == 9.123457 and protocol.read_times({}) == {}
    for bad in ("1 2 3", "0 0 0 0 0 nan", "a b c d e f", 7, ["0"] * 6):
        with pytest.raises(protocol.ProtocolError, match="times must be 6 numbers"):
            protocol.read_times({"times": bad})
