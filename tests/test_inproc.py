"""The in-process backend (``testbed run --backend inproc``): real runs, no mocks.

One source, one seed: the in-process run and the local fleet (plaintext, as the
in-process transport counts bytes) send and receive the same bytes in every step and
train to the same losses. Several sources take turns and every one of them finishes."""
import json
import signal
import subprocess
import sys

import numpy as np
import psutil
import pytest

from conftest import REPO, TINY, free_port, read_jsonl
from workloads import protocol
from workloads.protocol import Message
from workloads.transport import InProcessConnection, ServerError

ARMS = ("none", "filter")
RUN = ["--batches", 3, "--epochs", 2, "--seed", 7, *TINY, "--quiet", "--no-report"]


def batches(folder, source=0):
    return [e for e in read_jsonl(folder / f"source-{source}.jsonl") if e["event"] == "batch"]


def in_this_process(*args) -> int:
    """``testbed`` in this process (as the ``cli`` fixture runs it, for a module's fixture):
    its exit status; the SIGTERM handler it installs is put back afterwards."""
    from testbed.cli import main

    previous = signal.getsignal(signal.SIGTERM)
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:  # argparse's errors
        return exc.code
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """The same one-source run on the local backend (plaintext) and in process, side by side:
    neither run's bytes nor losses depend on what else the machine does."""
    root = tmp_path_factory.mktemp("inproc")
    local, inproc = root / "local", root / "inproc"
    arms = ",".join(ARMS)
    # a whole core for the source (its torch threads, 1, are the in-process run's too): the fleet's
    # bytes and losses, not its cap, are compared
    fleet = subprocess.Popen([sys.executable, "-m", "testbed.cli", "run", "--sources", "1", "--cpu", "1", "--module",
                              arms, *map(str, RUN), "--insecure", "--out", str(local), "--port", str(free_port())],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        code = in_this_process("run", "--sources", 1, "--cpu", 1, "--module", arms, *RUN, "--backend", "inproc",
                               "--out", inproc)
        _, err = fleet.communicate(timeout=600)
    finally:
        if fleet.poll() is None:
            fleet.terminate()  # the testbed stops its fleet on SIGTERM
            fleet.communicate(timeout=60)
    assert fleet.returncode == 0, err
    assert code == 0, "the in-process run failed (its error is in the captured stderr)"
    return local, inproc


@pytest.mark.parametrize("module", ARMS)
def test_one_source_in_process_matches_the_local_fleet_byte_for_byte_and_loss_for_loss(both, module):
    local, inproc = (folder / module for folder in both)
    a, b = batches(local), batches(inproc)
    assert len(a) == len(b) == 3 * 2
    for x, y in zip(a, b):
        assert (x["epoch"], x["batch"]) == (y["epoch"], y["batch"])
        assert (x["bytes_sent"], x["bytes_received"]) == (y["bytes_sent"], y["bytes_received"])
        assert (x["payload_sent"], x["payload_received"]) == (y["payload_sent"], y["payload_received"])
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-5)
    evals = [[(e["accuracy"], e["bytes_sent"], e["bytes_received"]) for e in read_jsonl(f / "source-0.jsonl")
              if e["event"] == "eval"] for f in (local, inproc)]
    assert evals[0] == evals[1]


def test_the_summaries_agree_on_bytes_per_sample_and_the_manifest_names_the_backend(both):
    local, inproc = (json.loads((folder / "summary.json").read_text()) for folder in both)
    for module in ARMS:
        for key in ("bytes_per_sample_sent", "bytes_per_sample_received", "bytes_sent_total",
                    "bytes_received_total", "samples_total"):
            assert inproc["arms"][module][key] == local["arms"][module][key], (module, key)
        assert inproc["arms"][module]["final_loss"] == pytest.approx(local["arms"][module]["final_loss"], abs=1e-5)
        assert inproc["arms"][module]["cap_method"] == "none"
    manifest = json.loads((both[1] / "manifest.json").read_text())
    assert manifest["backend"] == "inproc" and manifest["status"] == "ok"
    # each arm's process forked from the run's one warm parent (it imported once), stopped with the run
    launched = (both[1] / "logs" / "launcher.log").read_text()
    assert launched.count("workloads.inprocess imported in") == 1, launched
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(both[1]) in " ".join(p.info["cmdline"] or [])]


def test_two_sources_take_turns_and_both_finish(tmp_path, cli):
    out = tmp_path / "run"
    result = cli("run", "--sources", 2, "--module", "filter", *RUN, "--backend", "inproc", "--out", out)
    assert result.returncode == 0, result.stderr
    arm = json.loads((out / "summary.json").read_text())["arms"]["filter"]
    assert arm["sources"] == 2 and arm["status_per_source"] in (["ok", "ok"], {"0": "ok", "1": "ok"})
    assert arm["samples_total"] == 2 * 3 * 2 * 8
    for i in (0, 1):
        assert [e["event"] for e in read_jsonl(out / "filter" / f"source-{i}.jsonl")][-1] == "end"
        assert len(batches(out / "filter", i)) == 6
    # one request each, by source id: the server's training requests alternate 0, 1, 0, 1, ...
    peers = [e["peer"] for e in read_jsonl(out / "filter" / "server.jsonl")
             if e["event"] == "request" and e["op"] == "grad"]
    assert peers == [0, 1] * 6
    served = [e for e in read_jsonl(out / "filter" / "server.jsonl") if e["event"] == "end"][-1]
    assert served["status"] == "ok" and set(served["served"]) == {"0", "1"}


@pytest.mark.quick
def test_links_and_drops_are_refused_with_the_inproc_backend(tmp_path, cli):
    for extra in (["--bandwidth", "5mbit"], ["--link-trace", tmp_path / "x.csv"], ["--drop", "0@1"]):
        result = cli("run", "--sources", 1, "--backend", "inproc", *extra, "--out", tmp_path / "never")
        assert result.returncode == 2
        assert "cannot be used with --backend inproc" in result.stderr and len(result.stderr.splitlines()) == 1
        assert not (tmp_path / "never").exists()


def test_a_failing_arm_names_its_error(tmp_path, cli):
    import torch
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: --device cuda is no error here")
    out = tmp_path / "run"  # only the server finds out that there is no CUDA: the arm fails and says why
    result = cli("run", "--sources", 1, "--module", "none", *RUN, "--backend", "inproc", "--device", "cuda",
                 "--out", out)
    assert result.returncode == 1
    assert "the in-process arm exited with status 2: --device cuda asked for, but CUDA is not available" \
        in result.stderr


@pytest.mark.quick
def test_the_in_process_connection_counts_plaintext_bytes_and_raises_a_refusal():
    def echo(frames):
        message = protocol.decode(frames)
        times = protocol.times_field(dict.fromkeys(protocol.SERVER_TIMES, 0.0))
        return protocol.encode(Message("pong", {"seq": message.fields["seq"], "times": times}))

    connection = InProcessConnection(echo)
    request = Message("ping", {"seq": 1}, {"x": np.zeros(300, "<f4")})
    exchange = connection.request(request)
    assert exchange.bytes_sent == protocol.stream_bytes(protocol.encode(request), curve=False)
    assert exchange.payload_sent == 1200 and exchange.reply.op == "pong" and exchange.server["queue_s"] == 0.0
    refuse = InProcessConnection(lambda frames: protocol.encode(Message("error", {"reason": "no"})))
    with pytest.raises(ServerError, match="no"):
        refuse.request(request)
