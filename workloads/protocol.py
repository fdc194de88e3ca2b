"""The wire protocol: one JSON header frame, then one raw frame per array.

Header: ``{"v": 1, "op": ..., <fields>, "arrays": [[name, dtype, shape], ...]}``.
Array frames carry the array's bytes in C order, nothing else, and are sent without a
copy. No pickle: the receiver only ever builds numpy arrays of an allowed dtype whose
size it checked against the header. Every message's exact size on the TCP stream is
``stream_bytes(frames)``: ZMTP 3 adds a flags byte and a 1-byte (short frame) or
8-byte (long frame) length to every frame.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
MAX_ARRAYS = 16
# Only plain numeric types cross the wire.
ALLOWED_DTYPES = frozenset({"<f4", "<f2", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<i8"})
OPS = frozenset({"hello", "welcome", "train", "grad", "infer", "pred", "bye", "ping", "pong", "error"})


class ProtocolError(ValueError):
    """A message that does not follow the protocol."""


@dataclass
class Message:
    op: str
    fields: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def encode(message: Message) -> list:
    """Frames for ``message``: the header, then each array's buffer (no copy)."""
    if message.op not in OPS:
        raise ProtocolError(f"unknown op {message.op!r}")
    specs, buffers = [], []
    for name, array in message.arrays.items():
        array = np.ascontiguousarray(array)
        dtype = array.dtype.str
        if dtype not in ALLOWED_DTYPES:
            raise ProtocolError(f"array {name!r} has dtype {dtype}, not one of {sorted(ALLOWED_DTYPES)}")
        specs.append([name, dtype, list(array.shape)])
        buffers.append(memoryview(array).cast("B") if array.size else b"")
    header = {"v": VERSION, "op": message.op, **message.fields, "arrays": specs}
    return [json.dumps(header, separators=(",", ":")).encode()] + buffers


def decode(frames) -> Message:
    """Parse and check frames (bytes or zmq.Frame); raise ProtocolError naming the problem."""
    if not frames:
        raise ProtocolError("empty message")
    raw = [memoryview(f.buffer if hasattr(f, "buffer") else f) for f in frames]
    if raw[0].nbytes > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {raw[0].nbytes} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(raw[0]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    if header.get("v") != VERSION:
        raise ProtocolError(f"protocol version {header.get('v')!r}, expected {VERSION}")
    op = header.pop("op", None)
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r}")
    header.pop("v")
    specs = header.pop("arrays", [])
    if not isinstance(specs, list) or len(specs) > MAX_ARRAYS:
        raise ProtocolError("'arrays' must be a list of at most %d [name, dtype, shape]" % MAX_ARRAYS)
    if len(specs) != len(raw) - 1:
        raise ProtocolError(f"header lists {len(specs)} arrays but {len(raw) - 1} frames follow")
    arrays = {}
    for spec, buf in zip(specs, raw[1:]):
        name, dtype, shape = _check_spec(spec)
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if buf.nbytes != expected:
            raise ProtocolError(f"array {name!r} {dtype}{tuple(shape)} needs {expected} bytes, frame has {buf.nbytes}")
        arrays[name] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return Message(op, header, arrays)


def _check_spec(spec) -> tuple[str, str, list[int]]:
    if not (isinstance(spec, list) and len(spec) == 3):
        raise ProtocolError(f"array spec {spec!r} is not [name, dtype, shape]")
    name, dtype, shape = spec
    if not isinstance(name, str) or dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"array spec {spec!r}: bad name or dtype not in {sorted(ALLOWED_DTYPES)}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise ProtocolError(f"array spec {spec!r}: shape must be a list of non-negative integers")
    return name, dtype, shape


def frame_sizes(frames) -> list[int]:
    return [memoryview(f.buffer if hasattr(f, "buffer") else f).nbytes for f in frames]


def stream_bytes(frames) -> int:
    """Exact bytes these frames occupy on the ZMTP 3 stream (framing included)."""
    return sum(n + (2 if n <= 255 else 9) for n in frame_sizes(frames))


def payload_bytes(frames) -> int:
    """Bytes of the array frames alone (the tensors, labels and indices)."""
    return sum(frame_sizes(frames)[1:])
