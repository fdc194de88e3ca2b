"""Raw wire frames built byte by byte, as a peer that does not use workloads/protocol.py
would send them (the layout: workloads/protocol.py's docstring), for tests that need a
frame ``protocol.encode`` refuses to make: tests/test_protocol.py, tests/test_hostile_peers.py."""
import json
import struct

from workloads import protocol


def varint(value: int) -> bytes:
    """Unsigned LEB128, shortest form (a caller wanting a malformed one writes its bytes)."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes((value,)))


def array(name, dtype, *dims) -> bytes:
    """An array's descriptor, the name given literally (a dtype as text: its code; an int:
    that code, allowed or not)."""
    code = protocol.DTYPES.index(dtype) if isinstance(dtype, str) else dtype
    return bytes((len(name),)) + name.encode() + bytes((code, len(dims))) + b"".join(map(varint, dims))


def coded(name, dtype, *dims) -> bytes:
    """An array's descriptor, the name as its one-byte code in ``protocol.ARRAY_NAMES``."""
    return bytes((128 + protocol.ARRAY_NAMES.index(name),)) + array("", dtype, *dims)[1:]


def field(name, value: bytes) -> bytes:
    """A field: its code (the JSON object's for None) and its value's bytes as given."""
    return bytes((next(c for c, (n, _) in enumerate(protocol.FIELDS) if n == name),)) + value


def json_field(obj) -> bytes:
    """The JSON object's field: ``obj`` as JSON, or bytes as given, after their length."""
    text = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return field(None, varint(len(text)) + text)


def frame(op="train", arrays=(), fields=(), body=b"", version=protocol.VERSION) -> bytes:
    """A raw frame: the fixed bytes, the arrays' descriptors, the fields, then ``body``
    (padding and arrays, as given). ``op``: a name or any code."""
    op = protocol.OPS.index(op) if isinstance(op, str) else op
    return bytes((version, op, len(arrays), len(fields))) + b"".join(arrays) + b"".join(fields) + body


def v2_frame(header, body=b"") -> bytes:
    """A protocol-2 frame: a u32 length, the JSON header (a dict, or bytes as given), the body."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<I", len(text)) + text + body
