import json
import socket
import threading
import time

import numpy as np
import pytest
import zmq

from workloads import protocol, security
from workloads.protocol import Message, ProtocolError

from frames import array, coded, field, frame, json_field, v2_frame, varint

pytestmark = pytest.mark.quick  # every test here is fast: the quick tier (-m quick)


def sample_message():
    return Message("train", {"seq": 3, "epoch": 1}, {
        "maps": np.arange(2 * 4 * 8 * 8, dtype=np.float32).reshape(2, 4, 8, 8),
        "index": np.array([1, 5, 9, 77], dtype=np.uint8),
        "labels": np.array([3, 7], dtype=np.uint8),
    })


def test_round_trip_keeps_fields_and_arrays_exactly():
    message = sample_message()
    back = protocol.decode([bytes(f) for f in protocol.encode(message)])
    assert back.op == "train" and back.fields == {"seq": 3, "epoch": 1}
    for name, array in message.arrays.items():
        assert back.arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(back.arrays[name], array)


def test_a_message_is_one_frame_with_aligned_arrays_decoded_without_a_copy():
    message = Message("grad", {"seq": 1}, {"a": np.arange(3, dtype=np.uint8), "b": np.arange(5, dtype=np.int64),
                                           "c": np.zeros((0, 2), np.float32)})
    frames = protocol.encode(message)
    assert len(frames) == 1
    raw = bytes(frames[0])
    header = frame("grad", [array("a", "|u1", 3), array("b", "<i8", 5), array("c", "<f4", 0, 2)],
                   [field("seq", b"\x01")])
    assert raw.startswith(header)
    start_b = -(-(len(header) + 3) // 8) * 8  # b starts at the next multiple of 8 after a
    assert len(raw) == start_b + 40 and raw[len(header) + 3:start_b] == bytes(start_b - len(header) - 3)
    buffer = np.frombuffer(raw, np.uint8)
    back = protocol.decode([raw])
    assert np.shares_memory(back.arrays["b"], buffer) and back.arrays["b"].tolist() == list(range(5))
    assert back.arrays["c"].shape == (0, 2)


def test_byte_counts_are_the_frame_plus_zmtp_framing_and_curve():
    frames = protocol.encode(sample_message())
    assert protocol.payload_bytes(frames) == 2 * 4 * 8 * 8 * 4 + 4 + 2
    size = len(bytes(frames[0]))
    assert protocol.stream_bytes(frames) == size + 9
    assert protocol.stream_bytes(frames, curve=True) == size + 33 + 9
    # ZMTP 3: short frames (<= 255 bytes) carry 2 bytes of framing, long ones 9;
    # CURVE adds 33 bytes to the frame before that framing.
    assert protocol.stream_bytes([b"x" * 255]) == 257 and protocol.stream_bytes([b"x" * 256]) == 265
    assert protocol.stream_bytes([b"x" * 222], True) == 257 and protocol.stream_bytes([b"x" * 223], True) == 265


class Relay:
    """A TCP relay on loopback that counts every byte crossing it in each direction."""

    def __init__(self, target: int):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port, self.target = self.listener.getsockname()[1], target
        self.up = self.down = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        a, _ = self.listener.accept()
        b = socket.create_connection(("127.0.0.1", self.target))
        threading.Thread(target=self._pump, args=(a, b, "up"), daemon=True).start()
        threading.Thread(target=self._pump, args=(b, a, "down"), daemon=True).start()

    def _pump(self, src, dst, direction):
        while True:
            try:
                data = src.recv(1 << 20)
            except OSError:
                data = b""
            if not data:
                dst.close()
                return
            setattr(self, direction, getattr(self, direction) + len(data))
            dst.sendall(data)

    def quiet(self, settle=0.05):
        """The counters once nothing has moved for ``settle`` seconds."""
        last = None
        while last != (self.up, self.down):
            last = (self.up, self.down)
            time.sleep(settle)
        return last


def measured_pair(keys_dir=None):
    """A ROUTER and a DEALER joined through a counting relay (CURVE when ``keys_dir``)."""
    ctx = zmq.Context.instance()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    auth = None
    if keys_dir is not None:
        auth = security.serve_securely(router, security.load(keys_dir, "server"))
        security.connect_securely(dealer, security.load(keys_dir, "source"))
    port = router.bind_to_random_port("tcp://127.0.0.1")
    relay = Relay(port)
    dealer.connect(f"tcp://127.0.0.1:{relay.port}")
    dealer.send(b"")  # handshake done, one empty frame through
    assert router.poll(10000)
    identity = router.recv_multipart()[0]
    return router, dealer, relay, identity, auth


@pytest.mark.parametrize("curve", [False, True])
def test_counted_bytes_are_what_crosses_a_real_tcp_connection(curve, tmp_path):
    from testbed.keys import make_run_keys

    router, dealer, relay, identity, auth = measured_pair(make_run_keys(tmp_path) if curve else None)
    try:
        messages = [sample_message(), Message("bye", {}), Message("grad", {"seq": 9}, {"g": np.ones((3, 100), np.float32)}),
                    Message("pong", {"x": "y" * 200})]
        for message in messages:
            up, down = relay.quiet()
            frames = protocol.encode(message)
            dealer.send_multipart(frames, copy=False)
            assert router.poll(5000)
            got = router.recv_multipart()[1:]
            router.send_multipart([identity] + frames, copy=False)
            assert dealer.poll(5000)
            dealer.recv_multipart()
            up2, down2 = relay.quiet()
            assert up2 - up == protocol.stream_bytes(frames, curve) == protocol.stream_bytes(got, curve)
            assert down2 - down == protocol.stream_bytes(frames, curve)
    finally:
        router.close(0)
        dealer.close(0)
        if auth is not None:
            auth.stop()


F4_2 = array("a", "<f4", 2)


@pytest.mark.parametrize("frames, problem", [
    ([], "empty message"),
    ([b"\x03\x02"], "has no header"),
    ([frame("ping"), b""], "one frame"),
    ([v2_frame({"v": 2, "op": "ping"})], "protocol version 22, expected 3"),  # a protocol-2 frame (22: its length)
    ([frame("train", version=2)], "protocol version 2"),
    ([frame(len(protocol.OPS))], "unknown op code"),
    ([frame(arrays=[F4_2])], "needs 8 bytes"),
    ([frame(arrays=[F4_2], body=b"\0" * 20)], "after its last array"),
    ([frame(arrays=[array("a", len(protocol.DTYPES), 1)], body=b"1" * 8)], "dtype code"),
    ([frame(arrays=[array("a;b", "|u1", 1)], body=b"1")], "is not 1-64 of"),
    ([frame(arrays=[bytes((128 + len(protocol.ARRAY_NAMES),)) + b"\2\1\1"], body=b"1")], "unknown name code"),
    ([frame(arrays=[F4_2, F4_2], body=b"\0" * 16)], "named twice"),
    ([frame(arrays=[array(f"a{i}", "|u1", 0) for i in range(17)])], "at most 16"),
    ([frame(arrays=[array("a", "<f4", *[1] * 9)])], "at most 8"),
    ([frame(arrays=[array("a", "<f4", 99999999999, 99999999999, 99999999999)])], "needs"),
    ([frame(arrays=[F4_2[:-1] + b"\x82\x80"])], "ends inside its header: dimension 0 of array 'a' needs"),
    ([frame(arrays=[F4_2[:-1] + b"\x82\x00"], body=b"\0" * 8)], "longer than it needs"),
    ([frame(arrays=[F4_2[:-1] + b"\xff" * 10])], "more than 9 bytes"),
    ([frame(fields=[bytes((len(protocol.FIELDS),))])], "unknown field code"),
    ([frame(fields=[field("seq", b"\1"), field("seq", b"\2")])], "occurs twice"),
    ([frame(fields=[field("seq", b"\1"), json_field({"seq": 2})])], "cross twice"),
    ([frame(fields=[json_field({"a": 1}), json_field({"b": 2})])], "occurs twice"),
    ([frame(fields=[field("want_grad", b"\2")])], "is a bool, not 2"),
    ([frame(fields=[field("loss", b"\0" * 7)])], "ends inside its header: field 'loss'"),
    ([frame(fields=[field("times", b"\0" * 27)])], "ends inside its header: field 'times'"),
    ([frame(fields=[json_field(b"not json")])], "not JSON"),
    ([frame(fields=[json_field(b"[" * 60000)])], "not JSON"),
    ([frame(fields=[json_field([1, 2])])], "not a non-empty JSON object"),
    ([frame(fields=[json_field({})])], "not a non-empty JSON object"),
    ([frame(fields=[field(None, varint(10 ** 6))])], "exceeds"),
    ([frame(fields=[field(None, varint(100) + b"{}")])], "the JSON fields needs 100 bytes"),
])
def test_malformed_messages_are_rejected_with_a_reason(frames, problem):
    with pytest.raises(ProtocolError, match=problem):
        protocol.decode(frames)


def test_padding_must_be_zeros():
    for extra in range(4):  # some header length leaves 1..3 bytes of padding before b
        message = Message("grad", {"p": "x" * extra}, {"a": np.ones(1, np.uint8), "b": np.ones(1, np.float32)})
        raw = bytearray(protocol.encode(message)[0])
        start_b = len(raw) - 4
        if raw[start_b - 1] == 0:  # not a's byte (a 1): padding
            raw[start_b - 1] = 7
            with pytest.raises(ProtocolError, match="padding"):
                protocol.decode([bytes(raw)])
            return
    raise AssertionError("no header length left padding")


def test_huge_counts_are_refused_before_anything_is_allocated():
    import tracemalloc

    tracemalloc.start()  # numpy reports its allocations to tracemalloc too
    try:
        with pytest.raises(ProtocolError, match="needs"):
            protocol.decode([frame(arrays=[array("a", "<i8", 999999999999, 999999999999)], body=b"\0" * 16)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # the header's parse, not an array of 10^24 elements


def test_the_limits_hold_when_encoding_too():
    with pytest.raises(ProtocolError, match="at most 16"):
        protocol.encode(Message("train", {}, {f"a{i}": np.zeros(1, np.uint8) for i in range(17)}))
    with pytest.raises(ProtocolError, match="exceeds"):
        protocol.encode(Message("train", {"note": "x" * protocol.MAX_HEADER_BYTES}))
    with pytest.raises(ProtocolError, match="dtype"):
        protocol.encode(Message("train", {}, {"x": np.zeros(2, np.float64)}))
    with pytest.raises(ProtocolError, match="name"):
        protocol.encode(Message("train", {}, {"a;b": np.zeros(2, np.uint8)}))
    with pytest.raises(ProtocolError, match="unknown op"):
        protocol.encode(Message("shutdown"))
    with pytest.raises(ProtocolError, match="not plain JSON"):
        protocol.encode(Message("train", {"x": object()}))


def header_bytes(message: Message) -> int:
    """The bytes of a message's frame before its first array (the header and padding)."""
    raw = bytes(protocol.encode(message)[0])
    return len(raw) - sum(a.nbytes for a in message.arrays.values())


def test_the_header_is_binary_and_small():
    raw = bytes(protocol.encode(sample_message())[0])
    assert raw[:4] == bytes((3, protocol.OPS.index("train"), 3, 2))
    assert raw[4:].startswith(coded("maps", "<f4", 2, 4, 8, 8) + coded("index", "|u1", 4) + coded("labels", "|u1", 2)
                               + field("seq", b"\3") + field("epoch", b"\1"))
    # a training step of the filter arm (batch 16, 4 maps of 16x16): the request and its reply,
    # as workloads/source.py and workloads/server.py send them
    train = Message("train", {"seq": 12345, "epoch": 3, "batch": 31, "lr_scale": 1.0, "want_grad": True},
                    {"maps": np.zeros((16, 4, 16, 16), np.float32), "index": np.zeros(4, np.uint8),
                     "labels": np.zeros(16, np.uint8)})
    times = protocol.times_field(dict.fromkeys(protocol.SERVER_PARTS, 0.25)
                                 | {"arrived_at": 1.7e9, "replied_at": 1.7e9})
    grad = Message("grad", {"loss": 2.302585, "correct": 16, "times": times, "seq": 12345},
                   {"grad": np.zeros((16, 4, 16, 16), np.float32)})
    # fixed bytes, the arrays' descriptors (maps, index, labels), the fields (seq, epoch, batch,
    # lr_scale, want_grad), padding to the maps' 4-byte alignment
    assert header_bytes(train) == 4 + (7 + 4 + 4) + (3 + 2 + 2 + 9 + 2) + 3 == 40
    assert header_bytes(grad) == 4 + 7 + (9 + 2 + 29 + 3) + 2 == 56  # grad; loss, correct, times, seq


OPS_AS_SENT = [  # every message workloads/ sends, with the fields it gives them
    Message("hello", {"source": 1, "module": "filter", "model": "vgg11", "split": 2, "classes": 10,
                      "cut": [128, 8, 8]}),
    Message("welcome", {"device": "cpu", "module": "filter", "model": "vgg11", "split": 2, "classes": 10,
                        "cut": [128, 8, 8], "times": (0.0, 1e-06, 0.25, 0.001, 1767225600.123456, 1767225600.373457),
                        "seq": None}),
    Message("train", {"seq": 7, "epoch": 0, "batch": 6, "lr_scale": 1.0, "want_grad": True},
            {"maps": np.ones((2, 4, 8, 8), np.float32), "index": np.arange(4, dtype=np.uint8),
             "labels": np.arange(2, dtype=np.uint8)}),
    Message("train", {"seq": 8, "epoch": 12, "batch": 300, "lr_scale": 2.5, "want_grad": False},
            {"model.pmf": np.ones(3, np.float16), "data": np.ones(7, np.int32)}),
    Message("grad", {"loss": 2.302585, "correct": 16, "distill_loss": 0.5, "seq": 7,
                     "times": (0.000412, 0.001234, 0.253107, 0.002046, 1767225600.123456, 1767225600.380245)},
            {"grad": np.ones((2, 4, 8, 8), np.float32)}),
    Message("grad", {"loss": float("nan"), "correct": 0, "seq": 2 ** 40}),
    Message("calibrate", {"seq": 9, "batch": 0}, {"maps": np.ones((2, 4, 8, 8), np.float32)}),
    Message("calibrated", {"seq": 9}),
    Message("infer", {"seq": 10}, {"maps": np.ones((2, 4, 8, 8), np.float32), "index": np.arange(4, dtype=np.uint8)}),
    Message("pred", {"seq": 10}, {"pred": np.arange(2, dtype=np.uint8)}),
    Message("bye", {"source": 1}),
    Message("bye", {}),
    Message("ping", {}),
    Message("pong", {"device": "cuda:0"}),
    Message("error", {"reason": "out of order: expected seq 1, got 5 – ünïcode"}),
    # fields whose code's kind cannot hold the value cross in the JSON object, as they were
    Message("train", {"seq": -3, "epoch": "1", "batch": True, "lr_scale": 1, "want_grad": 1, "correct": 2 ** 70,
                      "loss": None, "times": "0 0 0 0 0 0"}),
]


@pytest.mark.parametrize("message", OPS_AS_SENT, ids=lambda m: m.op)
def test_every_message_crosses_as_it_was_sent(message):
    back = protocol.decode([bytes(protocol.encode(message)[0])])
    assert back.op == message.op and list(back.arrays) == list(message.arrays)
    assert json.dumps(back.fields, sort_keys=True) == json.dumps(message.fields, sort_keys=True)  # NaN == NaN here
    assert {k: type(v) for k, v in back.fields.items()} == {k: type(v) for k, v in message.fields.items()}
    for name, array in message.arrays.items():
        assert back.arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(back.arrays[name], array)


def test_every_truncation_of_a_message_is_refused_with_a_reason():
    for message in OPS_AS_SENT:
        raw = bytes(protocol.encode(message)[0])
        for cut in range(len(raw)):
            with pytest.raises(ProtocolError) as refused:
                protocol.decode([raw[:cut]])
            reason = str(refused.value)
            assert "\n" not in reason and len(reason) < 300, reason
            assert protocol.payload_bytes([raw[:cut]]) in (0, protocol.payload_bytes([raw]))


def test_flipped_bits_give_a_message_or_a_protocol_error_never_anything_else():
    rng = np.random.default_rng(0)
    for message in OPS_AS_SENT:
        raw = bytes(protocol.encode(message)[0])
        for _ in range(200):
            flipped = bytearray(raw)
            for at in rng.integers(0, min(len(raw), 80), 2):
                flipped[at] ^= 1 << int(rng.integers(0, 8))
            try:
                protocol.decode([bytes(flipped)])
            except ProtocolError:
                pass


def test_the_servers_times_cross_to_the_microsecond_in_28_bytes():
    exact = {"queue_s": 0.000412, "server_decode_s": 0.001234, "server_compute_s": 4294.967295,
             "server_encode_s": 0.0, "arrived_at": 1767225600.123456, "replied_at": 1767225600.999999}
    sizes = set()
    for times in (exact, dict.fromkeys(protocol.SERVER_TIMES, 0.0),
                  dict.fromkeys(protocol.SERVER_PARTS, 9.123456789) | {"arrived_at": 1.8e9, "replied_at": 1.8e9 + 1}):
        fields = {"times": protocol.times_field(times)}
        frame_ = bytes(protocol.encode(Message("grad", dict(fields)))[0])
        sizes.add(len(frame_))
        back = protocol.read_times(protocol.decode([frame_]).fields)
        assert back == {name: float(f"{times[name]:.6f}") for name in protocol.SERVER_TIMES}  # protocol 2's text
    assert sizes == {4 + 1 + 28}  # fixed width: a reply's size does not depend on how long anything took
    # what a u32 of microseconds cannot hold (a negative wall-clock step, over 71 minutes) crosses as JSON
    for times in (exact | {"replied_at": exact["arrived_at"] - 1}, exact | {"queue_s": 4294.967296}):
        back = protocol.decode(protocol.encode(Message("grad", {"times": protocol.times_field(times)})))
        assert protocol.read_times(back.fields) == {name: round(times[name], 6) for name in protocol.SERVER_TIMES}


def test_object_arrays_cannot_be_sent():
    with pytest.raises(ProtocolError, match="dtype"):
        protocol.encode(Message("train", {}, {"x": np.array([object()])}))
