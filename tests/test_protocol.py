import json
import socket
import struct
import threading
import time

import numpy as np
import pytest
import zmq

from workloads import protocol, security
from workloads.protocol import Message, ProtocolError

pytestmark = pytest.mark.quick  # every test here is fast: the quick tier (-m quick)


def sample_message():
    return Message("train", {"seq": 3, "epoch": 1}, {
        "maps": np.arange(2 * 4 * 8 * 8, dtype=np.float32).reshape(2, 4, 8, 8),
        "index": np.array([1, 5, 9, 77], dtype=np.uint8),
        "labels": np.array([3, 7], dtype=np.uint8),
    })


def frame(header, body=b"") -> bytes:
    """A raw frame: the header's length, the header (dict -> JSON), then ``body``."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<I", len(text)) + text + body


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
    (length,) = struct.unpack_from("<I", raw)
    assert json.loads(raw[4:4 + length])["arrays"] == "a |u1 3;b <i8 5;c <f4 0,2"
    start_b = -(-(4 + length + 3) // 8) * 8  # b starts at the next multiple of 8 after a
    assert len(raw) == start_b + 40 and raw[4 + length + 3:start_b] == bytes(start_b - 4 - length - 3)
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


@pytest.mark.parametrize("frames, problem", [
    ([], "empty message"),
    ([b"ab"], "no header length"),
    ([frame({"v": 2, "op": "ping"}), b""], "one frame"),
    ([struct.pack("<I", 10 ** 6) + b"{}"], "exceeds"),
    ([struct.pack("<I", 100) + b"{}"], "after its length"),
    ([frame(b"not json")], "not JSON"),
    ([frame(b"[" * 60000)], "not JSON"),
    ([frame([1, 2])], "not a JSON object"),
    ([frame({"v": 1, "op": "train"})], "protocol version"),
    ([frame({"v": 2, "op": "shutdown"})], "unknown op"),
    ([frame({"v": 2, "op": "train", "arrays": "a <f4 2"})], "needs 8 bytes"),
    ([frame({"v": 2, "op": "train", "arrays": "a <f4 2"}, b"\0" * 20)], "after its last array"),
    ([frame({"v": 2, "op": "train", "arrays": "a |O 1"}, b"1" * 8)], "dtype"),
    ([frame({"v": 2, "op": "train", "arrays": "a <f4 -1"})], "non-negative"),
    ([frame({"v": 2, "op": "train", "arrays": [["a", "<f4", [2]]]})], "must be text"),
    ([frame({"v": 2, "op": "train", "arrays": "a <f4 2;a <f4 2"})], "repeated"),
    ([frame({"v": 2, "op": "train", "arrays": ";".join(f"a{i} |u1 0" for i in range(17))})], "at most 16"),
    ([frame({"v": 2, "op": "train", "arrays": "a <f4 " + ",".join(["1"] * 9)})], "at most 8"),
    ([frame({"v": 2, "op": "train", "arrays": "a <f4 99999999999,99999999999,99999999999"})], "needs"),
])
def test_malformed_messages_are_rejected_with_a_reason(frames, problem):
    with pytest.raises(ProtocolError, match=problem):
        protocol.decode(frames)


def test_padding_must_be_zeros():
    for extra in range(4):  # some header length leaves 1..3 bytes of padding before b
        message = Message("grad", {"p": "x" * extra}, {"a": np.ones(1, np.uint8), "b": np.ones(1, np.float32)})
        raw = bytearray(protocol.encode(message)[0])
        (length,) = struct.unpack_from("<I", raw)
        start_b = len(raw) - 4
        if start_b > 4 + length + 1:
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
            protocol.decode([frame({"v": 2, "op": "train", "arrays": "a <i8 999999999999,999999999999"}, b"\0" * 16)])
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
    with pytest.raises(ProtocolError, match="protocol's own"):
        protocol.encode(Message("train", {"arrays": "x"}))
    with pytest.raises(ProtocolError, match="not plain JSON"):
        protocol.encode(Message("train", {"x": object()}))


def test_header_is_small_json_without_pickle():
    raw = bytes(protocol.encode(sample_message())[0])
    (length,) = struct.unpack_from("<I", raw)
    header = json.loads(raw[4:4 + length])
    assert header["arrays"].split(";")[0] == "maps <f4 2,4,8,8"
    assert length < 120


def test_object_arrays_cannot_be_sent():
    with pytest.raises(ProtocolError, match="dtype"):
        protocol.encode(Message("train", {}, {"x": np.array([object()])}))
