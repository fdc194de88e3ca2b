"""The offload server. Its protocol rules on ``Server.respond`` in this process (the very
code the serving loop runs for each request, without a process to start); the real
server program over real ZeroMQ sockets for what needs them (the serving loop and its
receiver thread, the frame size limit, the bind, CURVE): one plaintext server for the
module, one per key layout for CURVE, all started at once."""
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from workloads import protocol, settings
from workloads.protocol import Message
from workloads.server import Request, Server
from workloads.trace import TraceWriter

from conftest import free_port, read_jsonl, wait_for

HELLO = {"module": "filter", "model": "vgg11-slim", "split": 2, "classes": 10, "cut": [32, 8, 8]}
pytestmark = pytest.mark.quick  # every test here is fast (one set of servers for the module): the quick tier
# a frame whose header is right up to its one field, the JSON object, which is not JSON (workloads/protocol.py)
GARBAGE = bytes((protocol.VERSION, protocol.OPS.index("train"), 0, 1, 0, 8)) + b"\x80garbage"

SERVER_ARGS = ["--module", "filter", "--model", "vgg11-slim", "--dataset", "synthetic", "--sources", "2",
               "--batch-size", "4"]


def launch(folder, port, *extra, name="server", stderr=subprocess.PIPE):
    """The server program as a process (not waited for); its trace goes to ``folder/name.jsonl``."""
    trace = folder / f"{name}.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "workloads.server", *SERVER_ARGS, "--port", str(port),
                             "--trace", str(trace), *map(str, extra)], stderr=stderr, text=True)
    return proc, trace


def wait_listening(proc, trace, timeout_s=120):
    """Until the server's trace has its ``listening`` event."""
    deadline = time.time() + timeout_s
    while not (trace.exists() and "listening" in trace.read_text()):
        assert proc.poll() is None and time.time() < deadline, "server did not start: " + (
            proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        time.sleep(0.05)


def start_server(tmp_path, port, *extra, name="server"):
    proc, trace = launch(tmp_path, port, *extra, name=name)
    wait_listening(proc, trace)
    return proc, trace


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
    proc.wait(10)


def connect(port):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    return sock


def ask(sock, frames, wait_ms=20000):
    sock.send_multipart(frames)
    assert sock.poll(wait_ms), "no reply"
    return protocol.decode(sock.recv_multipart())


def hello(source, **changes):
    return protocol.encode(Message("hello", {"source": source, **HELLO, **changes}))


def train_message(seq, batch=4):
    return Message("train", {"seq": seq, "lr_scale": 1.0, "want_grad": True}, {
        "maps": np.random.default_rng(seq).normal(size=(batch, 2, 8, 8)).astype(np.float32),
        "index": np.array([0, 7], np.uint8), "labels": np.arange(batch, dtype=np.uint8)})


# -- the protocol's rules, on the server's respond() in this process ----------------------------
class Inline:
    """A Server in this process; ``ask(connection, frames)`` answers a request as the serving
    loop does (``respond``: the reply frames, decoded here). ``connection`` stands for the
    ROUTER's identity of a peer's connection."""

    def __init__(self, tmp_path, *extra):
        self.trace_path = tmp_path / "server.jsonl"
        self.server = Server(settings.parse("server", "", [*SERVER_ARGS, *map(str, extra)]),
                             TraceWriter(str(self.trace_path), run="t", role="server"))

    def ask(self, connection: bytes, frames) -> Message:
        request = Request(connection, [bytearray(bytes(f)) for f in frames], time.perf_counter(), time.time())
        out, _ = self.server.respond(request)
        return protocol.decode([bytes(f) for f in out])

    def events(self, kind):
        return [e for e in read_jsonl(self.trace_path) if e["event"] == kind]

    def finished(self) -> int:
        """Sources whose bye counted: the serving loop ends at --expect-sources of them."""
        return sum(peer.done for peer in self.server.peers.values())


@pytest.fixture
def inline(tmp_path):
    made = []

    def make(*extra):
        made.append(Inline(tmp_path, *extra))
        return made[-1]
    yield make
    for one in made:
        one.server.trace.close()


def test_bad_messages_get_an_error_reply_and_the_server_keeps_serving(inline):
    server = inline()
    me = b"a"
    assert "before hello" in server.ask(me, protocol.encode(train_message(1))).fields["reason"]
    assert "not JSON" in server.ask(me, [GARBAGE]).fields["reason"]
    wrong = server.ask(me, hello(0, split=3))
    assert wrong.op == "error" and "split=3" in wrong.fields["reason"]
    assert server.ask(me, hello(0)).op == "welcome"
    out_of_order = server.ask(me, protocol.encode(train_message(5)))
    assert out_of_order.op == "error" and "expected seq 1, got 5" in out_of_order.fields["reason"]
    bad_labels = train_message(1)
    bad_labels.arrays["labels"] = np.array([0, 1, 2, 99], np.uint8)
    assert "labels must lie in 0..9" in server.ask(me, protocol.encode(bad_labels)).fields["reason"]
    assert server.ask(me, protocol.encode(train_message(1))).op == "grad"  # still serving, seq not consumed by errors
    assert len(server.events("error")) == 5


def test_source_ids_are_0_to_sources_minus_1(inline):
    server = inline()
    for bad in (2, -1, 99, True, "0"):
        reply = server.ask(b"a", hello(bad))
        assert reply.op == "error" and "source id in 0..1 (--sources 2)" in reply.fields["reason"]
    assert server.ask(b"a", hello(1)).op == "welcome"


def test_a_second_hello_for_an_id_in_use_is_refused(inline):
    server = inline()
    first, other = b"first", b"other"
    assert server.ask(first, hello(0)).op == "welcome"
    taken = server.ask(other, hello(0))
    assert taken.op == "error" and "source 0 has already said hello" in taken.fields["reason"]
    again = server.ask(first, hello(1))  # the same connection, another id: still one source per connection
    assert again.op == "error" and "already said hello as source 0" in again.fields["reason"]
    again = server.ask(first, hello(0))
    assert again.op == "error"
    assert server.ask(first, protocol.encode(train_message(1))).op == "grad"  # the first one's state is intact


def test_bye_counts_only_from_the_connection_that_said_hello(inline):
    server = inline("--expect-sources", "1")
    real, intruder = b"real", b"intruder"
    assert server.ask(real, hello(0)).op == "welcome"
    refused = server.ask(intruder, protocol.encode(Message("bye", {"source": 0})))
    assert refused.op == "error" and "bye before hello" in refused.fields["reason"]
    assert server.ask(intruder, hello(1)).op == "welcome"
    wrong = server.ask(intruder, protocol.encode(Message("bye", {"source": 0})))
    assert wrong.op == "error" and "bye for source 0" in wrong.fields["reason"]
    assert server.finished() == 0  # nobody finished yet: the loop (--expect-sources 1) goes on
    assert server.ask(real, protocol.encode(Message("bye", {"source": 0}))).op == "bye"
    assert server.finished() == 1 and [e["peer"] for e in server.events("bye")] == [0]


def test_replies_echo_the_seq_and_the_source_checks_it(inline):
    import threading

    from workloads.transport import Connection

    server = inline()
    assert server.ask(b"a", hello(0)).op == "welcome"
    assert server.ask(b"a", protocol.encode(train_message(1))).fields["seq"] == 1
    error = server.ask(b"a", protocol.encode(train_message(7)))
    assert error.op == "error" and error.fields["seq"] == 7
    # a reply carrying another seq than the request's is a ProtocolError at the source
    router = zmq.Context.instance().socket(zmq.ROUTER)
    fake = router.bind_to_random_port("tcp://127.0.0.1")
    connection = Connection(f"tcp://127.0.0.1:{fake}", 10)
    try:
        done = []

        def answer(seq):
            assert router.poll(10000)
            identity, _ = router.recv_multipart()
            router.send_multipart([identity] + protocol.encode(Message("grad", {"seq": seq})))

        for seq, expect_error in ((5, False), (4, True)):
            thread = threading.Thread(target=answer, args=(seq,))
            thread.start()
            if expect_error:
                with pytest.raises(protocol.ProtocolError, match="seq 5 carries seq 4"):
                    connection.request(Message("train", {"seq": 5}))
            else:
                done.append(connection.request(Message("train", {"seq": 5})).reply.fields["seq"])
            thread.join()
        assert done == [5]
    finally:
        connection.close()
        router.close(0)


def test_ping_says_nothing_about_the_run(inline):
    pong = inline().ask(b"anyone", protocol.encode(Message("ping", {})))
    assert pong.op == "pong" and not {"module", "model", "split", "cut"} & set(pong.fields)


# -- the real program over real sockets ---------------------------------------------------------
@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Three real servers started together: ``plain`` (--sources 8, bound to 127.0.0.1; each
    test says hello with ids of its own), ``keys`` (CURVE, a local run's key folder) and
    ``chart`` (CURVE, the chart's Secret layout). Each: (process, port, trace, stderr log,
    key folder); a test that reads a server's whole log stops that server first."""
    from testbed.keys import make_run_keys

    folder = tmp_path_factory.mktemp("servers")
    keys = {"plain": None, "keys": make_run_keys(folder / "run"), "chart": chart_keys(folder / "chart-keys")}
    started = {}
    try:
        for name, key_folder in keys.items():
            port, log = free_port(), folder / f"{name}.log"
            extra = ["--sources", "8", "--bind", "127.0.0.1"] if name == "plain" else ["--keys", key_folder]
            with open(log, "w") as err:
                proc, trace = launch(folder, port, *extra, name=name, stderr=err)
            started[name] = (proc, port, trace, log, key_folder)
        for proc, _, trace, log, _ in started.values():
            wait_listening(proc, trace)
        yield started
    finally:
        for proc, *_ in started.values():
            stop(proc)


def errors_in(trace):
    return [e for e in read_jsonl(trace) if e["event"] == "error"]


def test_a_training_step_returns_the_gradient_of_the_sent_maps(servers):
    proc, port, trace, _, _ = servers["plain"]
    sock = connect(port)
    known = len(errors_in(trace))
    assert "not JSON" in ask(sock, [GARBAGE]).fields["reason"]  # the loop answers an error ...
    assert ask(sock, protocol.encode(Message("hello", {"source": 0, **HELLO}))).op == "welcome"  # ... and goes on
    reply = ask(sock, protocol.encode(train_message(1)))
    assert reply.op == "grad" and reply.arrays["grad"].shape == (4, 2, 8, 8)
    assert np.abs(reply.arrays["grad"]).sum() > 0 and reply.fields["loss"] > 0
    assert len(errors_in(trace)) == known + 1 and proc.poll() is None
    def served():  # the loop traces a request once its reply is on its way: perhaps after we read it
        return [e["op"] for e in read_jsonl(trace) if e["event"] == "request" and e["peer"] == 0]
    wait_for(lambda: len(served()) >= 2, proc)
    assert served() == ["welcome", "grad"]  # the loop traces what it served
    sock.close()


def test_a_silent_source_does_not_stall_the_others(servers):
    _, port, _, _, _ = servers["plain"]
    silent, busy = connect(port), connect(port)
    assert ask(silent, protocol.encode(Message("hello", {"source": 1, **HELLO}))).op == "welcome"
    silent.send_multipart(protocol.encode(Message("hello", {"source": 1, **HELLO}))[:1])  # and then nothing
    assert ask(busy, protocol.encode(Message("hello", {"source": 2, **HELLO}))).op == "welcome"
    for seq in range(1, 4):
        assert ask(busy, protocol.encode(train_message(seq))).op == "grad"
    silent.close()
    busy.close()


def test_the_port_in_use_is_a_one_line_error(servers, program):
    _, port, _, _, _ = servers["plain"]
    result = program("server", "--port", port, "--dataset", "synthetic", "--bind", "127.0.0.1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"server: cannot listen on port {port}: Address already in use"]


def test_bind_chooses_the_interface(servers):
    _, port, _, _, _ = servers["plain"]  # --bind 127.0.0.1
    listening = [line.split()[1] for line in open("/proc/net/tcp").read().splitlines()[1:] if line.split()[3] == "0A"]
    assert f"0100007F:{port:04X}" in listening and f"00000000:{port:04X}" not in listening


def test_a_frame_beyond_the_largest_legitimate_request_is_never_taken_in(servers):
    proc, port, trace, _, _ = servers["plain"]
    listening = next(e for e in read_jsonl(trace) if e["event"] == "listening")
    largest = listening["max_request"]
    # filter, vgg11-slim at 4 samples: 4 x 32 x 8 x 8 float32 and the index, with room for headers
    assert 32 * 1024 < largest < 200 * 1024
    known = len(errors_in(trace))
    hostile, real = connect(port), connect(port)
    hostile.send(b"\0" * (largest + 64))
    assert not hostile.poll(2000), "an oversized frame got an answer"
    assert ask(real, hello(3)).op == "welcome"
    assert ask(real, protocol.encode(train_message(1))).op == "grad"
    assert proc.poll() is None
    assert len(errors_in(trace)) == known  # the loop never saw it
    hostile.close()
    real.close()


def test_the_largest_request_of_every_module_fits_a_real_first_message():
    """Each module's server part says how large a request can be; its real first message
    (one-time shipments included) fits, at a cut and batch size like the benchmark's."""
    import torch

    from workloads.compression import CompressionConfig, available, create_server, create_source, get
    from workloads.models import build_split_model
    from workloads.server import largest_request

    for module in available():
        model = build_split_model("vgg11-slim", get(module).split_for(2), 10)
        config = CompressionConfig()
        source, part = create_source(module, model.cut_shape, config), create_server(module, model.cut_shape, config)
        batch = 8
        head_out = model.head(torch.randn(batch, 3, 32, 32))
        if module == "mcr2":
            source.low, source.pmf = np.zeros(source.dim, np.int32), np.full((source.dim, 2), 0.5, np.float32)
        arrays = source.encode(*source(head_out))
        payload = sum(a.nbytes for a in arrays.values())
        assert payload <= part.largest_request(batch), module
        assert largest_request(part, batch) < 64 * 1024 * 1024, module


def test_the_server_socket_has_the_size_limit_and_heartbeats():
    from argparse import Namespace

    from workloads.server import listen

    sock = zmq.Context.instance().socket(zmq.ROUTER)
    try:
        auth = listen(sock, Namespace(keys="", bind="127.0.0.1", port=0, heartbeat_timeout=12.5), 123456)
        assert auth is None
        assert sock.getsockopt(zmq.MAXMSGSIZE) == protocol.frame_bytes(123456)
        # --heartbeat-timeout (raised by the local backend on a slow emulated link)
        assert (sock.getsockopt(zmq.HEARTBEAT_IVL), sock.getsockopt(zmq.HEARTBEAT_TIMEOUT),
                sock.getsockopt(zmq.HEARTBEAT_TTL)) == (1000, 12500, 12500)
    finally:
        sock.close(0)


# -- CURVE -----------------------------------------------------------------------------------
def test_with_keys_only_the_runs_sources_get_an_answer_and_keys_never_reach_traces_or_logs(servers, tmp_path):
    from testbed.keys import make_run_keys
    from workloads.transport import Connection, ServerGone, ServerTimeout

    proc, port, trace, log, keys = servers["keys"]  # a local run's keys: make_run_keys
    assert oct(keys.stat().st_mode)[-3:] == "700" and all(oct(p.stat().st_mode)[-3:] == "600" for p in keys.iterdir())
    other = make_run_keys(tmp_path / "other")
    try:
        plain = connect(port)  # no CURVE at all
        plain.send_multipart(hello(0))
        intruder = zmq.Context.instance().socket(zmq.DEALER)  # CURVE, but another run's key pair
        intruder.setsockopt(zmq.LINGER, 0)
        from workloads import security
        security.connect_securely(intruder, security.load(other, "source"))
        intruder.connect(f"tcp://127.0.0.1:{port}")
        intruder.send_multipart(hello(0))
        outsider = Connection(f"tcp://127.0.0.1:{port}", 2, keys=str(other))
        with pytest.raises((ServerTimeout, ServerGone)):
            outsider.request(Message("ping", {}))
        outsider.close()
        assert not plain.poll(1000) and not intruder.poll(100)
        assert [e for e in read_jsonl(trace) if e["event"] in ("error", "request", "hello")] == []
        mine = Connection(f"tcp://127.0.0.1:{port}", 20, keys=str(keys))
        exchange = mine.request(Message("hello", {"source": 0, **HELLO}))
        assert exchange.reply.op == "welcome" and mine.curve
        assert exchange.bytes_sent == protocol.stream_bytes(protocol.encode(Message("hello", {"source": 0, **HELLO})),
                                                            curve=True)
        assert mine.request(train_message(1)).reply.op == "grad"
        mine.close()
        plain.close()
        intruder.close()
    finally:
        stop(proc)
    logged = trace.read_text() + log.read_text()
    requests = [e for e in read_jsonl(trace) if e["event"] == "request"]
    assert [e["op"] for e in requests] == ["welcome", "grad"]
    for folder in (keys, other):
        for path in folder.iterdir():
            for line in path.read_text().splitlines():
                if "key" in line and "=" in line:
                    secret = line.split("=", 1)[1].strip().strip('"')
                    assert secret not in logged


def test_bad_key_folders_are_one_line_errors_that_show_no_key(tmp_path, port, program):
    from testbed.keys import make_run_keys

    keys = make_run_keys(tmp_path / "run")
    (keys / "source.key").unlink()
    result = program("server", "--dataset", "synthetic", "--port", port, "--keys", keys)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"server: --keys {keys}: no source.key there"]


# -- CURVE: the chart's layout (two files holding only the Z85 secret keys) -------------------
def chart_keys(folder, newline="\n"):
    """A key folder as the chart's Secret mounts it: ``randAlphaNum 40`` per role."""
    import secrets
    import string

    folder.mkdir(mode=0o700)
    alphanumeric = string.ascii_letters + string.digits
    for name in ("server", "source"):
        (folder / f"{name}-secret").write_text("".join(secrets.choice(alphanumeric) for _ in range(40)) + newline)
        (folder / f"{name}-secret").chmod(0o400)
    return folder


def test_security_load_reads_the_charts_layout_and_derives_the_public_keys(tmp_path):
    from workloads import security

    for newline in ("", "\n"):
        folder = chart_keys(tmp_path / f"keys{len(newline)}", newline)
        server_secret, source_secret = ((folder / f"{n}-secret").read_text().strip().encode()
                                        for n in ("server", "source"))
        server, source = security.load(folder, "server"), security.load(folder, "source")
        assert (server.secret, server.public, server.peer_public) == (
            server_secret, zmq.curve_public(server_secret), zmq.curve_public(source_secret))
        assert (source.secret, source.public, source.peer_public) == (
            source_secret, zmq.curve_public(source_secret), zmq.curve_public(server_secret))
        assert repr(server) == "Keys(<redacted>)" and server_secret.decode() not in repr(server)


def test_the_charts_layout_runs_encrypted_and_only_its_sources_get_an_answer(servers, tmp_path):
    from testbed.keys import make_run_keys
    from workloads.transport import Connection, ServerGone, ServerTimeout

    proc, port, trace, log, keys = servers["chart"]  # keys: chart_keys(), the Secret's layout
    try:
        for stranger in (chart_keys(tmp_path / "other-release"), make_run_keys(tmp_path / "local-run")):
            outsider = Connection(f"tcp://127.0.0.1:{port}", 2, keys=str(stranger))
            with pytest.raises((ServerTimeout, ServerGone)):
                outsider.request(Message("ping", {}))
            outsider.close()
        mine = Connection(f"tcp://127.0.0.1:{port}", 20, keys=str(keys))
        assert mine.request(Message("hello", {"source": 0, **HELLO})).reply.op == "welcome" and mine.curve
        mine.close()
    finally:
        stop(proc)
    events = read_jsonl(trace)
    assert [e for e in events if e["event"] == "listening"][0]["curve"] is True
    assert [e["op"] for e in events if e["event"] == "request"] == ["welcome"]
    logged = trace.read_text() + log.read_text()
    for path in keys.iterdir():
        assert path.read_text().strip() not in logged


@pytest.mark.parametrize("content, problem", [
    (None, "no source-secret there"),
    ("", "source-secret is not a Z85 secret key (40 characters)"),
    ("short", "source-secret is not a Z85 secret key (40 characters)"),
    ("abc def " * 5, "source-secret is not a Z85 secret key (40 characters)"),  # a space is no Z85 digit
    ("é" * 40, "source-secret is not a Z85 secret key (40 characters)"),
    ("#" * 40, "source-secret is not a Z85 secret key (40 characters)"),  # Z85 digits, but every group > 2^32
])
def test_bad_chart_key_files_are_errors_that_name_the_file_never_its_content(tmp_path, content, problem):
    from workloads import security

    folder = chart_keys(tmp_path / "keys")
    (folder / "source-secret").chmod(0o600)
    if content is None:
        (folder / "source-secret").unlink()
    else:
        (folder / "source-secret").write_text(content)
    for role in ("server", "source"):
        with pytest.raises(security.KeysError) as caught:
            security.load(folder, role)
        assert str(caught.value) == f"--keys {folder}: {problem}"
        error = caught.value  # nothing chained that could carry the content into a traceback
        assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
        if content and content != "short":
            assert content[:5] not in str(caught.value)


def test_a_bad_chart_key_file_is_a_one_line_server_error(tmp_path, port, program):
    folder = chart_keys(tmp_path / "keys")
    (folder / "server-secret").chmod(0o600)
    secret = "#" * 35 + "Z" * 5
    (folder / "server-secret").write_text(secret)
    result = program("server", "--dataset", "synthetic", "--port", port, "--keys", folder)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"server: --keys {folder}: server-secret is not a Z85 secret key (40 characters)"]
    assert secret not in result.stdout + result.stderr
