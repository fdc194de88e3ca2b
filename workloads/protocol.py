"""The wire protocol: every message is ONE ZeroMQ frame.

Frame layout::

    u32 little-endian header length | header (JSON) | arrays, back to back

Header: ``{"v": 2, "op": ..., <fields>, "arrays": "name dtype d0,d1,...;..."}`` (the
``arrays`` entry is left out when there are none). The arrays follow the header in that
order, each in C order, each starting at the next offset (from the frame's start) that is
a multiple of its item size; the padding bytes are zero. Offsets are not sent: both
sides compute them from the header, and the receiver checks that the frame ends exactly
where the last array does. No pickle: the receiver only ever builds numpy views (no
copy) of an allowed dtype on the bytes it received, after checking that every count in
the header fits in them.

One frame per message because CURVE seals every frame separately (33 bytes each, see
:func:`stream_bytes`). Every message's exact size on the TCP stream is
``stream_bytes(frames, curve)``.

Every reply of the server carries its account of the request in one field, ``times``:
:data:`SERVER_TIMES` in that order, as fixed-point text with 6 decimals, space-separated
(:func:`times_text`). Text, not JSON numbers: its width does not depend on the digits, so
a message's size does not either.
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field

import numpy as np

from .errors import WorkloadError

VERSION = 2
MAX_HEADER_BYTES = 64 * 1024
MAX_ARRAYS = 16
MAX_DIMS = 8
# Only plain numeric types cross the wire.
ALLOWED_DTYPES = frozenset({"<f4", "<f2", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<i8"})
OPS = frozenset({"hello", "welcome", "train", "grad", "calibrate", "calibrated", "infer", "pred", "bye", "ping", "pong",
                 "error"})
NAME = re.compile(r"[A-Za-z0-9_.]{1,64}")
_PREFIX = struct.Struct("<I")

# What ZMTP 3 adds per frame: a flags byte and a 1-byte (body <= 255) or 8-byte length.
# What CURVE adds per frame (libzmq's curve_encoding_t::encode): the frame becomes a
# MESSAGE command, "\x07MESSAGE" (8 bytes), the short nonce (8), then the box: a 16-byte
# MAC over one flags byte and the frame. ZMTP's framing then applies to that body.
CURVE_FRAME_BYTES = 8 + 8 + 16 + 1


# the server's account of a request in its reply (their meaning: workloads/server.py)
SERVER_PARTS = ("queue_s", "server_decode_s", "server_compute_s", "server_encode_s")  # durations
SERVER_TIMES = SERVER_PARTS + ("arrived_at", "replied_at")                            # and its wall clock


class ProtocolError(WorkloadError, ValueError):
    """A message that does not follow the protocol."""


@dataclass
class Message:
    op: str
    fields: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _align(offset: int, itemsize: int) -> int:
    return -(-offset // itemsize) * itemsize


def encode(message: Message) -> list:
    """The message's frames (one): header and arrays, checked against the same limits
    the receiver enforces, so a message that would be refused is never sent."""
    if message.op not in OPS:
        raise ProtocolError(f"unknown op {message.op!r}")
    if len(message.arrays) > MAX_ARRAYS:
        raise ProtocolError(f"{len(message.arrays)} arrays, at most {MAX_ARRAYS} may cross")
    reserved = {"v", "op", "arrays"} & set(message.fields)
    if reserved:
        raise ProtocolError(f"fields {sorted(reserved)} are the protocol's own")
    specs, arrays = [], []
    for name, array in message.arrays.items():
        array = np.ascontiguousarray(array)
        dtype = array.dtype.str
        if dtype not in ALLOWED_DTYPES:
            raise ProtocolError(f"array {name!r} has dtype {dtype}, not one of {sorted(ALLOWED_DTYPES)}")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ProtocolError(f"array name {name!r} is not 1-64 of A-Z a-z 0-9 _ .")
        if array.ndim > MAX_DIMS:
            raise ProtocolError(f"array {name!r} has {array.ndim} dimensions, at most {MAX_DIMS}")
        specs.append(f"{name} {dtype} {','.join(map(str, array.shape))}")
        arrays.append(array)
    header = {"v": VERSION, "op": message.op, **message.fields}
    if specs:
        header["arrays"] = ";".join(specs)
    try:
        text = json.dumps(header, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"fields are not plain JSON: {exc}") from None
    if len(text) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(text)} bytes exceeds {MAX_HEADER_BYTES}")
    offsets, end = [], _PREFIX.size + len(text)
    for array in arrays:
        start = _align(end, array.itemsize)
        offsets.append(start)
        end = start + array.nbytes
    frame = bytearray(end)  # zeroed: the padding is zeros
    _PREFIX.pack_into(frame, 0, len(text))
    frame[_PREFIX.size:_PREFIX.size + len(text)] = text
    view = memoryview(frame)
    for array, start in zip(arrays, offsets):
        if array.nbytes:
            view[start:start + array.nbytes] = memoryview(array).cast("B")
    return [frame]


def _buffer(frame) -> memoryview:
    return memoryview(frame.buffer if hasattr(frame, "buffer") else frame).cast("B")


def decode(frames) -> Message:
    """Parse and check frames (bytes or zmq.Frame); raise ProtocolError naming the problem.
    The arrays are read-only views on the received frame (no copy)."""
    if not frames:
        raise ProtocolError("empty message")
    if len(frames) != 1:
        raise ProtocolError(f"a message is one frame, got {len(frames)}")
    raw = _buffer(frames[0])
    if raw.nbytes < _PREFIX.size:
        raise ProtocolError(f"a frame of {raw.nbytes} bytes has no header length")
    (length,) = _PREFIX.unpack_from(raw, 0)
    if length > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {length} bytes exceeds {MAX_HEADER_BYTES}")
    if _PREFIX.size + length > raw.nbytes:
        raise ProtocolError(f"header of {length} bytes, but the frame has {raw.nbytes - _PREFIX.size} after its length")
    try:
        header = json.loads(bytes(raw[_PREFIX.size:_PREFIX.size + length]))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    if header.get("v") != VERSION:
        raise ProtocolError(f"protocol version {header.get('v')!r}, expected {VERSION}")
    op = header.pop("op", None)
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r}")
    header.pop("v")
    specs = _parse_specs(header.pop("arrays", ""))
    arrays, end = {}, _PREFIX.size + length
    for name, dtype, shape in specs:
        itemsize = np.dtype(dtype).itemsize
        start = _align(end, itemsize)
        count = 1
        for d in shape:
            count *= d
        size = count * itemsize  # Python ints: no overflow, and nothing allocated yet
        if start + size > raw.nbytes:
            raise ProtocolError(f"array {name!r} {dtype}{tuple(shape)} needs {size} bytes at offset {start}, "
                                f"the frame has {raw.nbytes}")
        if any(raw[end:start]):
            raise ProtocolError(f"padding before array {name!r} is not zero")
        array = np.frombuffer(raw[start:start + size], dtype=dtype).reshape(shape)
        if not array.flags.aligned:  # the frame's own buffer was not aligned: one small copy
            array = array.copy()
        arrays[name] = array
        end = start + size
    if end != raw.nbytes:
        raise ProtocolError(f"the frame has {raw.nbytes - end} bytes after its last array")
    return Message(op, header, arrays)


def _parse_specs(text) -> list[tuple[str, str, list[int]]]:
    if not isinstance(text, str):
        raise ProtocolError("'arrays' must be text: name dtype d0,d1,...;...")
    if not text:
        return []
    entries = text.split(";")
    if len(entries) > MAX_ARRAYS:
        raise ProtocolError(f"{len(entries)} arrays, at most {MAX_ARRAYS} may cross")
    specs, names = [], set()
    for entry in entries:
        parts = entry.split(" ")
        if len(parts) != 3:
            raise ProtocolError(f"array spec {entry[:80]!r} is not 'name dtype shape'")
        name, dtype, dims = parts
        if not NAME.fullmatch(name) or name in names:
            raise ProtocolError(f"array spec {entry[:80]!r}: bad or repeated name")
        if dtype not in ALLOWED_DTYPES:
            raise ProtocolError(f"array spec {entry[:80]!r}: dtype not in {sorted(ALLOWED_DTYPES)}")
        shape = dims.split(",") if dims else []
        if len(shape) > MAX_DIMS or not all(d.isdigit() and len(d) <= 12 and d.isascii() for d in shape):
            raise ProtocolError(f"array spec {entry[:80]!r}: shape must be at most {MAX_DIMS} non-negative integers")
        names.add(name)
        specs.append((name, dtype, [int(d) for d in shape]))
    return specs


def times_text(times: dict) -> str:
    """A reply's ``times`` field: :data:`SERVER_TIMES` (seconds) as fixed-point text."""
    return " ".join(f"{times[name]:.6f}" for name in SERVER_TIMES)


def read_times(fields: dict) -> dict[str, float]:
    """Take the ``times`` field out of a reply's fields: :data:`SERVER_TIMES`, in seconds
    ({} when the reply has none)."""
    if "times" not in fields:
        return {}
    text = fields.pop("times")
    try:
        values = [float(v) for v in text.split(" ")] if isinstance(text, str) else []
    except ValueError:
        values = []
    if len(values) != len(SERVER_TIMES) or not all(map(math.isfinite, values)):
        raise ProtocolError(f"times must be {len(SERVER_TIMES)} numbers as text ({' '.join(SERVER_TIMES)}), "
                            f"got {text!r:.100}")
    return dict(zip(SERVER_TIMES, values))


def frame_sizes(frames) -> list[int]:
    return [_buffer(f).nbytes for f in frames]


def frame_bytes(size: int, curve: bool = False) -> int:
    """Bytes one frame of ``size`` bytes occupies on the stream (ZMTP 3, CURVE or not)."""
    body = size + (CURVE_FRAME_BYTES if curve else 0)
    return body + (2 if body <= 255 else 9)


def stream_bytes(frames, curve: bool = False) -> int:
    """Exact bytes these frames occupy on the ZMTP 3 stream (framing, and with ``curve``
    the encryption's command name, nonce, MAC and flags, included)."""
    return sum(frame_bytes(n, curve) for n in frame_sizes(frames))


def payload_bytes(frames) -> int:
    """Bytes of the arrays alone (the tensors, labels and indices): no header, no padding."""
    if len(frames) != 1:
        return 0
    raw = _buffer(frames[0])
    try:
        (length,) = _PREFIX.unpack_from(raw, 0)
        specs = _parse_specs(json.loads(bytes(raw[_PREFIX.size:_PREFIX.size + length])).get("arrays", ""))
    except (struct.error, ValueError, AttributeError):
        return 0
    total = 0
    for _, dtype, shape in specs:
        size = np.dtype(dtype).itemsize
        for d in shape:
            size *= d
        total += size
    return total


def message_bytes(payload: int, header: int = MAX_HEADER_BYTES, arrays: int = MAX_ARRAYS) -> int:
    """The largest frame a message of ``payload`` array bytes can be: length, header and
    the padding before each array (at most 7 bytes)."""
    return _PREFIX.size + header + 7 * arrays + payload
