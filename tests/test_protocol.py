import json

import numpy as np
import pytest
import zmq

from workloads import protocol
from workloads.protocol import Message, ProtocolError


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


def test_byte_counts_are_the_frames_plus_zmtp_framing():
    frames = protocol.encode(sample_message())
    sizes = [len(bytes(f)) for f in frames]
    assert protocol.payload_bytes(frames) == 2 * 4 * 8 * 8 * 4 + 4 + 2
    # ZMTP 3: short frames (<= 255 bytes) carry 2 bytes of framing, long ones 9.
    assert protocol.stream_bytes(frames) == sum(n + (2 if n <= 255 else 9) for n in sizes)
    assert sizes[1] == 2048 and protocol.stream_bytes([b"x" * 255]) == 257 and protocol.stream_bytes([b"x" * 256]) == 265


def test_counted_bytes_match_what_crosses_a_real_socket():
    """The receiver's frames have exactly the sizes the sender counted."""
    ctx = zmq.Context.instance()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    try:
        frames = protocol.encode(sample_message())
        dealer.send_multipart(frames, copy=False)
        assert router.poll(5000)
        got = router.recv_multipart()[1:]
        assert protocol.stream_bytes(got) == protocol.stream_bytes(frames)
        assert protocol.decode(got).arrays["index"].tolist() == [1, 5, 9, 77]
    finally:
        router.close(0)
        dealer.close(0)


@pytest.mark.parametrize("frames, problem", [
    ([], "empty message"),
    ([b"not json"], "not JSON"),
    ([b"[1,2]"], "not a JSON object"),
    ([b'{"v":2,"op":"train"}'], "protocol version"),
    ([b'{"v":1,"op":"shutdown"}'], "unknown op"),
    ([b'{"v":1,"op":"train","arrays":[["a","<f4",[2]]]}'], "1 arrays but 0 frames"),
    ([b'{"v":1,"op":"train","arrays":[["a","<f4",[2]]]}', b"123"], "needs 8 bytes, frame has 3"),
    ([b'{"v":1,"op":"train","arrays":[["a","|O",[1]]]}', b"12345678"], "dtype"),
    ([b'{"v":1,"op":"train","arrays":[["a","<f4",[-1]]]}', b""], "non-negative"),
])
def test_malformed_messages_are_rejected_with_a_reason(frames, problem):
    with pytest.raises(ProtocolError, match=problem):
        protocol.decode(frames)


def test_header_is_small_json_without_pickle():
    header = json.loads(bytes(protocol.encode(sample_message())[0]))
    assert header["arrays"][0] == ["maps", "<f4", [2, 4, 8, 8]]
    assert len(bytes(protocol.encode(sample_message())[0])) < 160


def test_object_arrays_cannot_be_sent():
    with pytest.raises(ProtocolError, match="dtype"):
        protocol.encode(Message("train", {}, {"x": np.array([object()])}))
