"""The wire protocol: every message is ONE ZeroMQ frame, a binary header and the arrays.

Frame layout (every integer little-endian)::

    u8 version | u8 op | u8 arrays | u8 fields | each array's descriptor | each field | padding, arrays

``version`` is :data:`VERSION`, ``op`` the op's code in :data:`OPS`; ``arrays`` (at most
:data:`MAX_ARRAYS`) and ``fields`` count what follows. The code of an entry of
:data:`OPS`, :data:`DTYPES`, :data:`ARRAY_NAMES` and :data:`FIELDS` is its position there.

An array's descriptor: its name, one byte: 128 + its code in :data:`ARRAY_NAMES`, or the
length of the name that follows (ASCII, matching :data:`NAME`); its dtype's code in
:data:`DTYPES`, one byte; its number of dimensions, one byte (at most :data:`MAX_DIMS`);
then each dimension, a varint. A varint: unsigned LEB128 (7 bits a byte, the low ones
first, the high bit set on every byte but the last), in its shortest form, at most
:data:`VARINT_BYTES` bytes (values below 2**63).

A field: its code in :data:`FIELDS`, one byte, each code at most once; then its value,
as the code's kind says:

==========  ================================================================================
``uint``    an int (not a bool) in 0..2**63-1: a varint
``f64``     a float: IEEE 754 binary64, 8 bytes
``bool``    a bool: one byte, 0 or 1
``times``   :data:`SERVER_TIMES` (seconds) in that order, each a whole number of microseconds:
            each of :data:`SERVER_PARTS` u32, ``arrived_at`` i64 (since the epoch),
            ``replied_at`` u32 as its difference from ``arrived_at`` (one clock's readings)
``json``    every field no other code carries: one JSON object, a varint byte count, then
            its text (UTF-8)
==========  ================================================================================

A field whose code's kind cannot hold its value (a seq of -3, a ``want_grad`` of 1)
crosses in the JSON object, so a message's fields come back as they were sent (the times
to the microsecond) whatever they hold. No name crosses twice. The header (everything
before the first array's padding) is at most :data:`MAX_HEADER_BYTES`.

The arrays follow the header in their descriptors' order, each in C order, each starting
at the next offset (from the frame's start) that is a multiple of its item size; the
padding bytes are zero. Offsets are not sent: both sides compute them from the header,
and the receiver checks that the frame ends exactly where the last array does. No
pickle: the receiver only ever builds numpy views (no copy) of an allowed dtype on the
bytes it received, after checking that every count in the header fits in them; any
header that does not follow this layout is a :class:`ProtocolError` saying where.

One frame per message because CURVE seals every frame separately (33 bytes each, see
:func:`stream_bytes`). Every message's exact size on the TCP stream is
``stream_bytes(frames, curve)``.

Every reply of the server carries its account of the request in one field, ``times``
(:func:`times_field`; :func:`read_times` takes it back out). Fixed width: a reply's size
does not depend on how long anything took.
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field

import numpy as np

from .errors import WorkloadError

VERSION = 3
MAX_HEADER_BYTES = 64 * 1024
MAX_ARRAYS = 16
MAX_DIMS = 8
VARINT_BYTES = 9  # 63 bits
NAME = re.compile(r"[A-Za-z0-9_.]{1,64}")

# the server's account of a request in its reply (their meaning: workloads/server.py)
SERVER_PARTS = ("queue_s", "server_decode_s", "server_compute_s", "server_encode_s")  # durations
SERVER_TIMES = SERVER_PARTS + ("arrived_at", "replied_at")                            # and its wall clock

# The wire's tables (a code is the position): append only, or bump VERSION.
OPS = ("hello", "welcome", "train", "grad", "calibrate", "calibrated", "infer", "pred", "bye", "ping", "pong",
       "error")
DTYPES = ("<f4", "<f2", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<i8")  # only plain numeric types cross
ARRAY_NAMES = ("maps", "index", "labels", "grad", "pred")  # the most frequent names, one byte each
FIELDS = ((None, "json"),  # every field the others do not carry
          ("seq", "uint"), ("epoch", "uint"), ("batch", "uint"), ("lr_scale", "f64"), ("want_grad", "bool"),
          ("loss", "f64"), ("correct", "uint"), ("distill_loss", "f64"), ("times", "times"))

ALLOWED_DTYPES = frozenset(DTYPES)
_OP_CODES = {op: code for code, op in enumerate(OPS)}
_DTYPE_CODES = {dtype: code for code, dtype in enumerate(DTYPES)}
_NAME_CODES = {name: 128 + code for code, name in enumerate(ARRAY_NAMES)}
_FIELD_CODES = {name: code for code, (name, _) in enumerate(FIELDS) if name is not None}
_JSON = next(code for code, (_, kind) in enumerate(FIELDS) if kind == "json")
_FIXED = 4  # version, op and the two counts
_F64 = struct.Struct("<d")
_TIMES = struct.Struct("<" + "I" * len(SERVER_PARTS) + "qI")  # SERVER_TIMES, as the docstring says
_U32, _U63 = 1 << 32, 1 << 63

# What ZMTP 3 adds per frame: a flags byte and a 1-byte (body <= 255) or 8-byte length.
# What CURVE adds per frame (libzmq's curve_encoding_t::encode): the frame becomes a
# MESSAGE command, "\x07MESSAGE" (8 bytes), the short nonce (8), then the box: a 16-byte
# MAC over one flags byte and the frame. ZMTP's framing then applies to that body.
CURVE_FRAME_BYTES = 8 + 8 + 16 + 1


class ProtocolError(WorkloadError, ValueError):
    """A message that does not follow the protocol."""


@dataclass
class Message:
    op: str
    fields: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _align(offset: int, itemsize: int) -> int:
    return -(-offset // itemsize) * itemsize


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _number(value) -> bool:
    """An int or float (not a bool) that is finite."""
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _pack_times(value) -> bytes | None:
    if not isinstance(value, (tuple, list)) or len(value) != len(SERVER_TIMES) or not all(map(_number, value)):
        return None
    try:
        *durations, arrived, replied = (round(v * 1_000_000) for v in value)
    except OverflowError:  # seconds beyond a float's range in microseconds
        return None
    replied -= arrived  # after arrived_at, on the same clock
    if not (all(0 <= m < _U32 for m in (*durations, replied)) and -_U63 <= arrived < _U63):
        return None
    return _TIMES.pack(*durations, arrived, replied)


def _pack(kind: str, value) -> bytes | None:
    """``value`` in ``kind``'s binary form; None where the kind cannot hold it exactly."""
    if kind == "uint":
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _U63
        return _varint(value) if ok else None
    if kind == "f64":
        return _F64.pack(value) if isinstance(value, float) else None
    if kind == "bool":
        return (b"\1" if value else b"\0") if isinstance(value, bool) else None
    return _pack_times(value)  # "times"


def encode(message: Message) -> list:
    """The message's frames (one): header and arrays, checked against the same limits
    the receiver enforces, so a message that would be refused is never sent."""
    if message.op not in _OP_CODES:
        raise ProtocolError(f"unknown op {message.op!r}")
    if len(message.arrays) > MAX_ARRAYS:
        raise ProtocolError(f"{len(message.arrays)} arrays, at most {MAX_ARRAYS} may cross")
    header = bytearray((VERSION, _OP_CODES[message.op], len(message.arrays), 0))
    arrays = []
    for name, array in message.arrays.items():
        array = np.ascontiguousarray(array)
        dtype = array.dtype.str
        if dtype not in ALLOWED_DTYPES:
            raise ProtocolError(f"array {name!r} has dtype {dtype}, not one of {sorted(ALLOWED_DTYPES)}")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ProtocolError(f"array name {name!r} is not 1-64 of A-Z a-z 0-9 _ .")
        if array.ndim > MAX_DIMS:
            raise ProtocolError(f"array {name!r} has {array.ndim} dimensions, at most {MAX_DIMS}")
        code = _NAME_CODES.get(name)
        header += bytes((code,)) if code is not None else bytes((len(name),)) + name.encode()
        header += bytes((_DTYPE_CODES[dtype], array.ndim))
        for d in array.shape:
            header += _varint(d)
        arrays.append(array)
    count, rest = 0, {}
    for name, value in message.fields.items():
        code = _FIELD_CODES.get(name)
        packed = None if code is None else _pack(FIELDS[code][1], value)
        if packed is None:
            rest[name] = value
        else:
            header.append(code)
            header += packed
            count += 1
    if rest:
        try:
            text = json.dumps(rest, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"fields are not plain JSON: {exc}") from None
        header.append(_JSON)
        header += _varint(len(text)) + text
        count += 1
    header[3] = count
    if len(header) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(header)} bytes exceeds {MAX_HEADER_BYTES}")
    offsets, end = [], len(header)
    for array in arrays:
        start = _align(end, array.itemsize)
        offsets.append(start)
        end = start + array.nbytes
    frame = bytearray(end)  # zeroed: the padding is zeros
    frame[:len(header)] = header
    view = memoryview(frame)
    for array, start in zip(arrays, offsets):
        if array.nbytes:
            view[start:start + array.nbytes] = memoryview(array).cast("B")
    return [frame]


def _buffer(frame) -> memoryview:
    return memoryview(frame.buffer if hasattr(frame, "buffer") else frame).cast("B")


class _Header:
    """A cursor over a frame's header: every read checks that the frame holds it. ``what``
    names the read in an error, %-formatted with ``args`` (only then: this is the hot path)."""

    def __init__(self, raw: memoryview, at: int):
        self.raw, self.at = raw, at

    def take(self, size: int, what: str, *args) -> memoryview:
        end = self.at + size
        if end > self.raw.nbytes:
            raise ProtocolError(f"the frame ends inside its header: {what % args} needs {size} bytes at offset "
                                f"{self.at}, the frame has {self.raw.nbytes}")
        out, self.at = self.raw[self.at:end], end
        return out

    def byte(self, what: str, *args) -> int:
        if self.at >= self.raw.nbytes:
            self.take(1, what, *args)  # raises
        self.at += 1
        return self.raw[self.at - 1]

    def varint(self, what: str, *args) -> int:
        value = 0
        for i in range(VARINT_BYTES):
            b = self.byte(what, *args)
            value |= (b & 0x7F) << 7 * i
            if b < 0x80:
                if b == 0 and i:
                    raise ProtocolError(f"{what % args} is a varint longer than it needs to be")
                return value
        raise ProtocolError(f"{what % args} is a varint of more than {VARINT_BYTES} bytes")


def _read_header(raw: memoryview) -> tuple[str, list[tuple[str, str, list[int]]], dict, int]:
    """A frame's op, array specs (name, dtype, shape), fields and the header's end."""
    if raw.nbytes < _FIXED:
        raise ProtocolError(f"a frame of {raw.nbytes} bytes has no header (at least {_FIXED})")
    version, op, arrays, fields = raw[:_FIXED]
    if version != VERSION:
        raise ProtocolError(f"protocol version {version}, expected {VERSION}")
    if op >= len(OPS):
        raise ProtocolError(f"unknown op code {op}")
    if arrays > MAX_ARRAYS:
        raise ProtocolError(f"{arrays} arrays, at most {MAX_ARRAYS} may cross")
    header = _Header(raw, _FIXED)
    specs, names = [], set()
    for i in range(arrays):
        code = header.byte("the name of array %d", i)
        if code >= 128:
            if code - 128 >= len(ARRAY_NAMES):
                raise ProtocolError(f"array {i}: unknown name code {code}")
            name = ARRAY_NAMES[code - 128]
        else:
            name = bytes(header.take(code, "the name of array %d", i)).decode("latin-1")
            if not NAME.fullmatch(name):
                raise ProtocolError(f"array {i}: the name {name[:80]!r} is not 1-64 of A-Z a-z 0-9 _ .")
        if name in names:
            raise ProtocolError(f"array {name!r} is named twice")
        names.add(name)
        dtype = header.byte("the dtype of array %r", name)
        if dtype >= len(DTYPES):
            raise ProtocolError(f"array {name!r}: dtype code {dtype}, not one of 0..{len(DTYPES) - 1} "
                                f"({', '.join(DTYPES)})")
        ndim = header.byte("the dimensions of array %r", name)
        if ndim > MAX_DIMS:
            raise ProtocolError(f"array {name!r} has {ndim} dimensions, at most {MAX_DIMS}")
        shape = [header.varint("dimension %d of array %r", d, name) for d in range(ndim)]
        specs.append((name, DTYPES[dtype], shape))
    out, rest = {}, {}
    for _ in range(fields):
        code = header.byte("a field code")
        if code >= len(FIELDS):
            raise ProtocolError(f"unknown field code {code}")
        name, kind = FIELDS[code]
        if name in out or (code == _JSON and rest):
            raise ProtocolError(f"field code {code} ({name or 'json'}) occurs twice")
        if kind == "uint":
            out[name] = header.varint("field %r", name)
        elif kind == "f64":
            out[name] = _F64.unpack(header.take(_F64.size, "field %r", name))[0]
        elif kind == "bool":
            value = header.byte("field %r", name)
            if value > 1:
                raise ProtocolError(f"field {name!r} is a bool, not {value}")
            out[name] = bool(value)
        elif kind == "times":
            *durations, arrived, replied = _TIMES.unpack(header.take(_TIMES.size, "field %r", name))
            out[name] = tuple(m / 1_000_000 for m in (*durations, arrived, arrived + replied))
        else:  # json
            rest = _read_json(header)
    twice = out.keys() & rest.keys()
    if twice:
        raise ProtocolError(f"fields {sorted(twice)} cross twice (in binary and in JSON)")
    if header.at > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {header.at} bytes exceeds {MAX_HEADER_BYTES}")
    return OPS[op], specs, {**out, **rest}, header.at


def _read_json(header: _Header) -> dict:
    size = header.varint("the length of the JSON fields")
    if size > MAX_HEADER_BYTES:
        raise ProtocolError(f"JSON fields of {size} bytes: the header exceeds {MAX_HEADER_BYTES}")
    text = bytes(header.take(size, "the JSON fields"))
    try:
        rest = json.loads(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ProtocolError(f"the JSON fields are not JSON: {exc}") from None
    if not isinstance(rest, dict) or not rest:
        raise ProtocolError("the JSON fields are not a non-empty JSON object")
    return rest


def decode(frames) -> Message:
    """Parse and check frames (bytes or zmq.Frame); raise ProtocolError naming the problem.
    The arrays are read-only views on the received frame (no copy)."""
    if not frames:
        raise ProtocolError("empty message")
    if len(frames) != 1:
        raise ProtocolError(f"a message is one frame, got {len(frames)}")
    raw = _buffer(frames[0])
    op, specs, fields, end = _read_header(raw)
    arrays = {}
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
    return Message(op, fields, arrays)


def times_field(times: dict) -> tuple[float, ...]:
    """A reply's ``times`` field: :data:`SERVER_TIMES` (seconds, from ``times``) in that
    order, to the microsecond (as they cross)."""
    return tuple(round(times[name], 6) for name in SERVER_TIMES)


def read_times(fields: dict) -> dict[str, float]:
    """Take the ``times`` field out of a reply's fields: :data:`SERVER_TIMES`, in seconds
    ({} when the reply has none)."""
    if "times" not in fields:
        return {}
    value = fields.pop("times")
    if not isinstance(value, (tuple, list)) or len(value) != len(SERVER_TIMES) or not all(map(_number, value)):
        raise ProtocolError(f"times must be {len(SERVER_TIMES)} numbers ({' '.join(SERVER_TIMES)}), "
                            f"got {value!r:.100}")
    return dict(zip(SERVER_TIMES, map(float, value)))


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
    """Bytes of the arrays alone (the tensors, labels and indices): no header, no padding
    (0 for anything but one frame with a valid header)."""
    if len(frames) != 1:
        return 0
    try:
        _, specs, _, _ = _read_header(_buffer(frames[0]))
    except ProtocolError:
        return 0
    total = 0
    for _, dtype, shape in specs:
        size = np.dtype(dtype).itemsize
        for d in shape:
            size *= d
        total += size
    return total


def message_bytes(payload: int, header: int = MAX_HEADER_BYTES, arrays: int = MAX_ARRAYS) -> int:
    """The largest frame a message of ``payload`` array bytes can be: its header and the
    padding before each array (at most 7 bytes)."""
    return header + 7 * arrays + payload
