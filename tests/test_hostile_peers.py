"""Only the run's own sources take part: a real two-source run trains while a hostile
client on loopback throws a bounded stream of bad messages at the server."""
import io
import json
import pickle
import re
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest
import torch
import zmq

from workloads import protocol
from workloads.protocol import Message

from conftest import TINY, events_so_far, free_port, read_jsonl, wait_for
from frames import array, coded, field, frame, json_field, v2_frame, varint

SETTINGS = {"module": "filter", "model": "vgg11-slim", "split": 2, "classes": 10, "cut": [32, 8, 8]}
RUN = ["--module", "filter", "--model", "vgg11-slim", "--batch-size", "8", "--dataset", "synthetic", "--seed", "0"]
SOURCE_RUN = RUN + ["--sources", "2", "--eval-samples", "16", "--batches", "3", "--epochs", "8"]
assert set(TINY) <= set(SOURCE_RUN)
# A source started with the run's keys (until workloads/source.py hands --keys to its
# Connection itself, this passes them in; afterwards it changes nothing).
KEYED_SOURCE = ("import functools, sys; from workloads import source, transport; "
                "source.Connection = functools.partial(transport.Connection, keys=sys.argv.pop(1)); "
                "sys.exit(source.main(sys.argv[1:]))")


def hostile_messages(max_request: int):
    """(name, frames, reason): a few hundred malformed, truncated, oversized, out-of-order
    and hostile messages, each with the reason the server's error reply must give (a regular
    expression naming the check the message is there to reach; None: no reply, ever)."""
    out = []

    def add(name, reason, *frames):
        out.append((name, list(frames), reason))

    fields = [field("seq", varint(1)), field("lr_scale", struct.pack("<d", 1.0))]
    header = frame("train", [coded("maps", "<f4", 8, 4, 8, 8), coded("index", "|u1", 4), coded("labels", "|u1", 8)],
                   fields)
    good = bytes(protocol.encode(Message("train", {"seq": 1, "lr_scale": 1.0}, {
        "maps": np.ones((8, 4, 8, 8), np.float32), "index": np.arange(4, dtype=np.uint8),
        "labels": np.zeros(8, np.uint8)}))[0])
    assert good.startswith(header)  # the layout the frames below are built on
    inside = "^the frame ends inside its header: "

    def encoded(op, fields):
        return bytes(protocol.encode(Message(op, fields))[0])

    # -- sessions: only the run's own sources take part ---------------------------------------
    for source in (0, 1, 2):  # ids in use
        add("hello", f"^source {source} has already said hello$", encoded("hello", {"source": source, **SETTINGS}))
    for source in (-1, 3, 10 ** 9, "0", None, True):  # ids out of range, not ints
        add("hello", r"^hello needs a source id in 0\.\.2 ", encoded("hello", {"source": source, **SETTINGS}))
    add("hello", "^settings differ from the server's", encoded("hello", {"source": 0, **SETTINGS, "model": "vgg11"}))
    for _ in range(3):  # the hello/bye trick
        add("hello", "^source 1 has already said hello$", encoded("hello", {"source": 1, **SETTINGS}))
        add("bye", "^bye before hello$", encoded("bye", {"source": 1}))
    for seq in (1, 2, 5, 0, -3, 2 ** 70):  # out of order / before hello
        add("train", "^train before hello$", encoded("train", {"seq": seq}))
    for op in ("welcome", "grad", "pred", "pong", "error", "calibrate", "infer"):  # not from a stranger
        add("ops", f"^{op} before hello$", frame(op, fields=[field("seq", varint(1))]))
    # -- the version byte: protocol-2 frames, and otherwise valid hellos of other versions -----
    v2 = {"v": 2, "op": "hello", "source": 0, **SETTINGS}
    add("version", f"^protocol version {len(json.dumps(v2)) % 256}, expected 3$", v2_frame(v2))
    add("version", r"^protocol version \d+, expected 3$",
        v2_frame({"v": 2, "op": "train", "arrays": "maps <f4 999999999999"}, b"\0" * 64))
    add("version", "^protocol version 255, expected 3$", struct.pack("<I", 2 ** 32 - 1) + b"{}")
    for version in (2, 4, 0, 255):
        add("version", f"^protocol version {version}, expected 3$",
            frame("hello", fields=[json_field({"source": 0, **SETTINGS})], version=version))
    # -- the fixed bytes and the arrays' descriptors -------------------------------------------
    for op in (len(protocol.OPS), 0x7F, 0xFF):  # no such op ("shutdown", "__import__")
        add("ops", f"^unknown op code {op}$", frame(op))
    for cut in sorted({*range(len(header)), *range(len(header), len(good), max(1, len(good) // 40))}):  # truncated
        add("truncated", "has no header" if cut < 4 else inside if cut < len(header)
            else r"^array '(maps|index|labels)' .* needs \d+ bytes at offset \d+, the frame has", good[:cut])
    rng = np.random.default_rng(0)
    for size in (1, 3, 4, 17, 100, 1000, 5000):  # noise
        noise = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        add("noise", "has no header" if size < 4 else "^protocol version" if noise[0] != 3 else "", noise)
    for dims in ((999999999999, 999999999999), (2 ** 32, 2 ** 32, 8), (10 ** 12,), (2 ** 63 - 1,), (2 ** 62,) * 8,
                 (17,)):  # huge counts (the last: 68 bytes, where 64 follow)
        add("huge", r"^array 'maps' <f4\(.*\) needs \d+",  # (the server cuts a reason at 300 characters)
            frame(arrays=[coded("maps", "<f4", *dims)], body=b"\0" * 64))
    add("huge", "^dimension 0 of array 'maps' is a varint of more than 9 bytes$",
        frame(arrays=[coded("maps", "<f4")[:-1] + b"\1" + b"\xff" * 10], body=b"\0" * 64))
    add("huge", "^array 'maps' has 9 dimensions, at most 8$", frame(arrays=[coded("maps", "<f4", *[1] * 9)]))
    # dtypes outside the allowed set (|O <f8 <c8 |V8 |S4 <M8 have no code: any code past the table's)
    for code in (len(protocol.DTYPES), len(protocol.DTYPES) + 1, ord("O"), 0x7F, 0x80, 0xFF):
        add("dtype", f"^array 'x': dtype code {code}, not one of 0..{len(protocol.DTYPES) - 1} ",
            frame(arrays=[array("x", code, 1)], body=b"\0" * 8))
    payload = pickle.dumps(Exception("pwned"))
    add("pickle", "^protocol version 128, expected 3$", payload)  # a pickle for the frame
    # a pickle where the arrays go: bytes, never unpickled (a valid train message, refused as a stranger's)
    add("pickle", "^train before hello$",
        frame(arrays=[array("x", "|u1", len(payload))], fields=[field("seq", varint(1))], body=payload))
    add("pickle", "^the JSON fields are not JSON", frame(fields=[json_field(b"\x80\x04" + payload[2:])]))
    add("pickle", "^the JSON fields are not JSON", frame(fields=[json_field(payload)]))
    many = [array(f"a{i}", "|u1", 1) for i in range(protocol.MAX_ARRAYS + 1)]
    add("arrays", f"^{len(many)} arrays, at most {protocol.MAX_ARRAYS} may cross$",
        frame(arrays=many, body=b"\0" * len(many)))
    add("arrays", f"^255 arrays, at most {protocol.MAX_ARRAYS} may cross$", bytes((protocol.VERSION, 2, 255, 0)))
    add("names", "is not 1-64 of", frame(arrays=[array("x;import os", "|u1", 1)], body=b"\0"))
    add("names", "is not 1-64 of", frame(arrays=[array("x" * 65, "|u1", 1)], body=b"\0"))
    add("names", "^array 0: unknown name code 255$", frame(arrays=[b"\xff" + coded("maps", "|u1", 1)[1:]], body=b"\0"))
    add("names", "^array 'maps' is named twice$", frame(arrays=[coded("maps", "|u1", 1)] * 2, body=b"\0\0"))
    add("smuggled", f"^the frame has {len(payload)} bytes after its last array$",
        frame(arrays=[array("x", "|u1", 1)], body=b"\0" + payload))
    padded = frame(arrays=[array("x", "|u1", 1), array("y", "<i8", 1)])
    padding = -(len(padded) + 1) % 8
    assert padding  # x's byte leaves room before y
    add("smuggled", "^padding before array 'y' is not zero$", padded + b"\0" + b"\7" * padding + b"\0" * 8)
    add("frames", "^a message is one frame, got 2$", good, good)
    add("frames", "^a message is one frame, got 20$", *[good] * 20)
    # -- fields -------------------------------------------------------------------------------
    for depth in (50000, 65000):  # nesting the JSON parser must survive
        add("nesting", "^the JSON fields are not JSON", frame(fields=[json_field(b"[" * depth)]))
    add("nesting", "^the JSON fields are not JSON", frame(fields=[json_field(b'{"a":' * 12000)]))
    # headers claiming more than the frame holds, or more than a header may be
    add("header", "^JSON fields of 4294967295 bytes: the header exceeds 65536$",
        frame(fields=[field(None, varint(2 ** 32 - 1)) + b"{}"]))
    add("header", inside + "the JSON fields needs 60000 bytes at offset 8, the frame has 10$",
        frame(fields=[field(None, varint(60000)) + b"{}"]))
    add("header", "^JSON fields of 70007 bytes: the header exceeds 65536$",
        frame(fields=[json_field(b" " * 70000 + b'{"a":1}')]))
    add("header", "^header of 65544 bytes exceeds 65536$",  # a JSON object of 64 KiB, after 8 bytes
        frame(fields=[json_field(b" " * (protocol.MAX_HEADER_BYTES - 7) + b'{"a":1}')]))
    add("header", inside + "the name of array 0 needs 1 bytes", bytes((protocol.VERSION, 2, 16, 0)))
    add("header", inside + "a field code needs 1 bytes", bytes((protocol.VERSION, 2, 0, 255)))
    add("header", inside + "the name of array 0 needs 64 bytes", frame(arrays=[bytes((64,)) + b"abc"]))
    add("header", inside + "field 'times' needs 28 bytes", frame(fields=[field("times", b"\0" * 27)]))
    add("fields", f"^unknown field code {len(protocol.FIELDS)}$", frame(fields=[bytes((len(protocol.FIELDS),))]))
    add("fields", r"^field code 1 \(seq\) occurs twice$", frame(fields=[field("seq", b"\1"), field("seq", b"\2")]))
    add("fields", r"^fields \['seq'\] cross twice", frame(fields=[field("seq", b"\1"), json_field({"seq": 2})]))
    add("fields", "^field 'want_grad' is a bool, not 2$", frame(fields=[field("want_grad", b"\2")]))
    add("fields", "^the JSON fields are not a non-empty JSON object$", frame(fields=[json_field([1, 2])]))
    while len(out) < 300:  # random bit flips in a real message: refused, for whatever reason
        flipped = bytearray(good)
        for at in rng.integers(0, 120, 3):
            flipped[at] ^= 1 << int(rng.integers(0, 8))
        add("flip", "", bytes(flipped))
    # a message larger than the largest request: dropped by libzmq (ZMQ_MAXMSGSIZE), no reply, ever
    size = max_request + 1024
    add("oversized", None, frame(arrays=[coded("maps", "|u1", size)], body=b"\0" * size))
    return out


def attack(port: int, max_request: int, wait_ms: int, deadline_s: float = 60.0, together: int = 1):
    """Send the hostile stream; returns (messages sent, replies, error replies, wrong replies:
    (name, what came back, the reason expected) for each answer that is not an error giving
    the reason its message expects, or to a message that expects none).

    ``together``: how many messages go out (each on a fresh connection) before their
    replies are awaited, together: each message is awaited as long as when sent alone
    (``wait_ms``; the oversized one 300 ms), but a stream that gets no answer (CURVE)
    waits once per group instead of once per message."""
    ctx = zmq.Context.instance()
    sent = replies = errors = 0
    wrong = []
    started = time.time()
    stream = hostile_messages(max_request)
    sockets = []  # the last 20 or so connections stay open while the next ones arrive
    try:
        for first in range(0, len(stream), together):
            if time.time() - started > deadline_s:
                break
            waiting = {}  # socket -> (name, the reason its reply must give; None: no reply)
            for name, frames, reason in stream[first:first + together]:
                sock = ctx.socket(zmq.DEALER)  # a fresh connection each time: no stale replies to mix up
                sock.setsockopt(zmq.LINGER, 0)
                # a DEALER with no peer blocks on send: with CURVE a refused handshake drops the
                # connection, so a send may find none; it counts as sent and unanswered
                sock.setsockopt(zmq.SNDTIMEO, 1000)
                sock.connect(f"tcp://127.0.0.1:{port}")
                sockets.append(sock)
                sent += 1
                try:
                    sock.send_multipart(frames)
                except zmq.Again:
                    continue
                waiting[sock] = (name, reason)
            poller = zmq.Poller()
            for sock in waiting:
                poller.register(sock, zmq.POLLIN)
            wait = max([300 if reason is None else wait_ms for _, reason in waiting.values()], default=0)
            end = time.monotonic() + wait / 1000
            while waiting and time.monotonic() < end:  # until each has its reply or the wait is over
                for sock, _ in poller.poll(max(1, round((end - time.monotonic()) * 1000))):
                    name, reason = waiting.pop(sock)
                    poller.unregister(sock)
                    replies += 1
                    reply = protocol.decode(sock.recv_multipart())
                    errors += reply.op == "error"
                    said = reply.fields.get("reason") if reply.op == "error" else f"a {reply.op!r} reply"
                    if reason is None or not isinstance(said, str) or not re.search(reason, said):
                        wrong.append((name, said, reason))
            while len(sockets) > 20:
                sockets.pop(0).close(0)
    finally:
        for sock in sockets:
            sock.close(0)
    return sent, replies, errors, wrong


def start(cmd, **kwargs):
    return subprocess.Popen([sys.executable, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def run_fleet(tmp_path, name, keys=None, hostile=None):
    """A real server and two sources; ``hostile(port, max_request)`` runs in a thread once
    both sources said hello. Returns the sources' batch events, the server's trace, the
    hostile's result and the server's peak RSS (MB) while it ran.

    The two sources are a 2-source run (their shards, their bytes); the server admits one
    more id, which the test itself takes (started with the server, the sources wait for it
    as they would for any server) and gives back (bye) only once the hostile stream is
    over, so the server is there for all of it however fast the sources are."""
    from workloads.transport import Connection

    port, folder = free_port(), tmp_path / name
    folder.mkdir()
    keyed = ["--keys", str(keys)] if keys else []
    server = start(["-m", "workloads.server", *RUN, "--sources", "3", "--port", str(port), "--expect-sources", "3",
                    "--bind", "127.0.0.1", "--trace", str(folder / "server.jsonl"), "--threads", "1", *keyed])
    sources = []
    for sid in range(2):
        args = [*SOURCE_RUN, "--source-id", str(sid), "--server", f"tcp://127.0.0.1:{port}", "--threads", "1",
                "--trace", str(folder / f"source-{sid}.jsonl"), *keyed]
        sources.append(start(["-c", KEYED_SOURCE, str(keys), *args] if keys else ["-m", "workloads.source", *args]))
    gatekeeper = Connection(f"tcp://127.0.0.1:{port}", 60, keys=str(keys) if keys else "")
    peak, result = [0.0], {}
    try:
        assert gatekeeper.request(Message("hello", {"source": 2, **SETTINGS})).reply.op == "welcome"
        trace = folder / "server.jsonl"
        deadline = time.time() + 120
        seen = []  # the server's trace so far (it is writing it)

        def three_hellos():
            seen[:] = events_so_far(trace)
            return sum(e["event"] == "hello" for e in seen) >= 3
        wait_for(three_hellos, server, patience_s=120)
        max_request = next(e for e in seen if e["event"] == "listening")["max_request"]
        watcher = psutil.Process(server.pid)
        thread = None
        if hostile:
            thread = threading.Thread(target=lambda: result.update(out=hostile(port, max_request)), daemon=True)
            thread.start()
        while any(p.poll() is None for p in sources) or (thread and thread.is_alive()):
            try:
                peak[0] = max(peak[0], watcher.memory_info().rss / 2 ** 20)
            except psutil.NoSuchProcess:
                pass
            assert time.time() < deadline + 120, "the run did not finish"
            time.sleep(0.02)
        codes = [p.wait(60) for p in sources]
        assert codes == [0, 0], [p.stderr.read() for p in sources]
        assert gatekeeper.request(Message("bye", {"source": 2})).reply.op == "bye"
        assert server.wait(10) == 0, server.stderr.read()
    finally:
        gatekeeper.close()
        for proc in (server, *sources):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    batches = [[e for e in read_jsonl(folder / f"source-{sid}.jsonl") if e["event"] == "batch"] for sid in range(2)]
    return batches, read_jsonl(folder / "server.jsonl"), result.get("out"), peak[0], folder


def same_traffic(calm, stormy, extra=0):
    """Message by message the same bytes (``extra``: what CURVE adds per message). A reply's
    header holds the loss, whose digits depend on how the server interleaved the two
    sources (two undisturbed runs differ there too): its length may vary by a few bytes."""
    for a, b in zip(calm, stormy, strict=True):
        assert [e["bytes_sent"] + extra for e in a] == [e["bytes_sent"] for e in b]
        assert [e["payload_sent"] for e in a] == [e["payload_sent"] for e in b]
        assert [e["payload_received"] for e in a] == [e["payload_received"] for e in b]
        assert all(abs(x["bytes_received"] + extra - y["bytes_received"]) <= 4 for x, y in zip(a, b, strict=True))
    assert bytes_per_sample(stormy) == pytest.approx(bytes_per_sample(calm) + 2 * extra / 8, abs=1.0)


def bytes_per_sample(batches):
    events = [e for per_source in batches for e in per_source]
    return sum(e["bytes_sent"] + e["bytes_received"] for e in events) / sum(e["samples"] for e in events)


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    """The same fleet with nobody else on the port (plaintext): what both attacks are compared with."""
    return run_fleet(tmp_path_factory.mktemp("undisturbed"), "calm")


def test_a_hostile_client_does_not_disturb_a_real_run(tmp_path, undisturbed):
    calm, _, _, calm_peak, _ = undisturbed
    stormy, server_trace, (sent, replies, errors, wrong), peak, _ = run_fleet(
        tmp_path, "stormy", hostile=lambda port, largest: attack(port, largest, wait_ms=5000))
    same_traffic(calm, stormy)
    assert sent >= 300 and replies == errors == sent - 1  # every bad message got an error, the oversized none
    assert not wrong, "\n".join(f"{name}: {said!r}, expected {reason!r}" for name, said, reason in wrong)
    hellos = [e["peer"] for e in server_trace if e["event"] == "hello"]
    assert sorted(hellos) == [0, 1, 2]  # nobody else ever took part (2: the test itself)
    end = server_trace[-1]
    assert end["event"] == "end" and end["status"] == "ok"
    print(f"\nhostile: {sent} messages, {replies} error replies; server peak RSS {peak:.0f} MB (undisturbed: {calm_peak:.0f} MB) "
          f"(end event: {end['peak_rss_mb']} MB); bytes per sample {bytes_per_sample(calm):.2f} undisturbed, "
          f"{bytes_per_sample(stormy):.2f} under attack")


def test_with_curve_a_client_without_the_key_gets_no_answer_and_the_run_is_unaffected(tmp_path, undisturbed):
    from testbed.keys import make_run_keys

    keys = make_run_keys(tmp_path / "run")
    plain, _, _, _, _ = undisturbed
    # 20 strangers at a time, each awaited 200 ms: no answer is awaited one stranger after another
    stormy, server_trace, (sent, replies, errors, wrong), peak, folder = run_fleet(
        tmp_path, "curve", keys=keys,
        hostile=lambda port, largest: attack(port, largest, wait_ms=200, deadline_s=20, together=20))
    assert replies == 0 and sent >= 300 and not wrong  # the whole stream went out, and none of it was answered
    assert not [e for e in server_trace if e["event"] == "error"]  # the loop never saw the hostile client
    same_traffic(plain, stormy, extra=protocol.CURVE_FRAME_BYTES)  # each message: one long frame, 33 bytes more
    logged = "".join(p.read_text() for p in folder.iterdir())
    for path in keys.iterdir():
        for line in path.read_text().splitlines():
            if "key = " in line:
                assert line.split("=", 1)[1].strip().strip('"') not in logged
    print(f"\ncurve: {sent} hostile messages, {replies} answers; server peak RSS {peak:.0f} MB")


# -- every count from the wire is checked before anything is allocated ------------------------
def server_part(module, split=2, **knobs):
    from workloads.compression import CompressionConfig, create_server, get
    from workloads.models import build_split_model

    model = build_split_model("vgg11-slim", get(module).split_for(split), 10)
    part = create_server(module, model.cut_shape, CompressionConfig(**knobs))
    part.max_batch = 8
    return part


def refused(part, arrays, match, source=0):
    """``part`` refuses ``arrays`` with ``match``, having allocated next to nothing for them
    (numpy and Python report their allocations to tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            part.decode(arrays, torch.device("cpu"), source)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak / 2 ** 20:.1f} MB allocated before the refusal"


@pytest.mark.quick
def test_mcr2_rows_and_model_are_checked():
    part = server_part("mcr2")
    model = {"model.kept": np.arange(64, dtype="<u2"), "model.low": np.zeros(64, np.int32),
             "model.pmf": np.full((64, 2), 0.5, np.float32)}
    refused(part, {**model, "bits": np.zeros(4, np.uint8), "rows": np.array([2 ** 31 - 1], "<i4")}, "0..8")
    refused(part, {**model, "bits": np.zeros(10 ** 6, np.uint8), "rows": np.array([1], "<i4")}, "bytes of bitstream")
    wide = {**model, "model.pmf": np.full((64, 10 ** 5), 1e-5, np.float32)}
    refused(part, {**wide, "bits": np.zeros(4, np.uint8), "rows": np.array([1], "<i4")}, "malformed")
    signed = {**model, "model.kept": np.arange(64, dtype="<i8") - 1}
    refused(part, {**signed, "bits": np.zeros(4, np.uint8), "rows": np.array([1], "<i4")}, "malformed")


@pytest.mark.quick
def test_entropic_latent_count_is_checked():
    part = server_part("entropic")
    from workloads.compression.shipping import state_arrays
    from workloads.compression.entropic import LaplacePrior

    shipped = {**state_arrays(part.template, "decoder."), **state_arrays(LaplacePrior(16), "prior.")}
    refused(part, {**shipped, "bits": np.zeros(4, np.uint8), "latent_shape": np.array([10 ** 9, 16, 4, 4], "<i4")},
            "0..8")
    refused(part, {**shipped, "bits": np.zeros(10 ** 6, np.uint8), "latent_shape": np.array([1, 16, 4, 4], "<i4")},
            "bytes of bitstream")
    refused(part, {**shipped, "bits": np.zeros(4, np.uint8), "latent_shape": np.array([1, 16, 4000, 4000], "<i4")},
            "does not fit")


@pytest.mark.quick
def test_cdc_latent_count_is_checked():
    from workloads.compression.cdc import _decoder
    from workloads.compression.shipping import state_arrays

    part = server_part("cdc")
    shipped = state_arrays(_decoder(), "decoder.")
    mask = np.array([2], np.uint8)
    refused(part, {**shipped, "codes": np.zeros(4, np.uint8), "latent_shape": np.array([10 ** 9, 16, 8, 8], "<i4"),
                   "mask_number": mask}, "0..8")
    refused(part, {**shipped, "codes": np.zeros(4, np.uint8), "latent_shape": np.array([1, 8, 30000, 30000], "<i4"),
                   "mask_number": mask}, "is not")


@pytest.mark.quick
def test_coded_images_are_checked_before_they_are_decoded():
    from PIL import Image

    part = server_part("jpeg")
    refused(part, {"data": np.zeros(0, np.uint8), "lengths": np.zeros(9, np.uint32)}, "0..8")
    refused(part, {"data": np.zeros(10 ** 5, np.uint8), "lengths": np.array([10 ** 5], np.uint32)}, "at most")
    big = io.BytesIO()
    Image.new("RGB", (4000, 30)).save(big, format="JPEG")  # a small file that would decode to a large image
    data = np.frombuffer(big.getvalue(), np.uint8)
    if data.size <= part.largest_file():
        refused(part, {"data": data, "lengths": np.array([data.size], np.uint32)}, "not a valid JPEG")
