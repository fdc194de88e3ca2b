"""Input compression baselines: the source sends the input image itself (split 0),
raw or coded with Pillow, and the server runs the whole model on what it decodes.

``raw``: uint8 pixels, lossless. ``jpeg`` / ``webp``: each image coded by Pillow at
``quality``, with what is the same in every image of a stream sent once or not at all,
as the learned modules send their decoders once:

- ``jpeg``: per image only the entropy-coded scan data (between the SOS header and
  EOI). The quantisation and Huffman tables (the DQT and DHT segments, 570 bytes)
  cross once, with the first message and again after a change of quality
  (``set_level``); the server keeps each source's and rebuilds every image's whole
  file from them (SOI, JFIF APP0, SOF0 and SOS follow from the image size).
- ``webp``: per image only the lossy VP8 key frame without its start code and size;
  the server rebuilds the RIFF/WEBP container and the "VP8 " chunk header around it.

The source checks that what the server rebuilds is byte for byte the whole file Pillow
wrote (and fails loudly if a Pillow writes another layout), so the server decodes
exactly that file. The bytes on the wire are the real codec output less those
headers; ``coded_arrays`` counts the coded data and the tables, not the per-image
``lengths``. No gradient crosses: the source has no layers to train, the server trains
the whole network.
"""
from __future__ import annotations

import io
import struct

import numpy as np
import torch
from PIL import Image

from ..data import CIFAR_MEAN, CIFAR_STD
from .base import Arrays, ServerPart, SourcePart, numel, require_input
from ..option import knob
from .registry import CompressionConfig, Deviation, Levels, ModuleSpec, register

_MEAN = torch.from_numpy(CIFAR_MEAN).view(1, 3, 1, 1)
_STD = torch.from_numpy(CIFAR_STD).view(1, 3, 1, 1)
FORMATS = {"jpeg": "JPEG", "webp": "WEBP"}
MAX_TABLES = 4096  # bytes of a JPEG tables array the server accepts (Pillow's: 570)


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """Standardised images back to the uint8 pixels they came from (N, 3, H, W)."""
    pixels = (x.detach().cpu() * _STD + _MEAN) * 255.0
    return pixels.round().clamp(0, 255).to(torch.uint8).numpy()


def from_pixels(pixels: np.ndarray, device) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(pixels)).to(torch.float32) / 255.0
    return ((x - _MEAN) / _STD).to(device)


def encode_image(pixels: np.ndarray, fmt: str, quality: int) -> bytes:
    """The whole file Pillow writes for one (3, H, W) uint8 image."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0))).save(buffer, format=fmt, quality=quality)
    return buffer.getvalue()


# -- JPEG: the tables once, the scan per image ------------------------------------------
_SOI, _EOI, _DQT, _DHT, _SOF0, _SOS = 0xD8, 0xD9, 0xDB, 0xC4, 0xC0, 0xDA
_JFIF = bytes.fromhex("ffe000104a46494600010100000100010000")  # APP0: JFIF 1.01, no units, 1:1, no thumbnail


def jpeg_table_segments(tables: bytes) -> tuple[bytes, bytes]:
    """(the DQT segments, the DHT segments) of a tables array, each kind in its order;
    a ValueError for anything else in it."""
    dqt, dht, at = [], [], 0
    while at < len(tables):
        if at + 4 > len(tables) or tables[at] != 0xFF or tables[at + 1] not in (_DQT, _DHT):
            raise ValueError(f"jpeg tables: byte {at} does not start a DQT or DHT segment")
        end = at + 2 + int.from_bytes(tables[at + 2:at + 4], "big")
        if end > len(tables) or end < at + 5:
            raise ValueError(f"jpeg tables: the segment at byte {at} has a wrong length")
        (dqt if tables[at + 1] == _DQT else dht).append(tables[at:end])
        at = end
    if not dqt or not dht:
        raise ValueError("jpeg tables: they need at least one DQT and one DHT segment")
    return b"".join(dqt), b"".join(dht)


def jpeg_header(tables: bytes, height: int, width: int) -> bytes:
    """A whole file's bytes before its scan data, as Pillow writes them for a (3, height,
    width) image: SOI, JFIF APP0, the DQT segments, SOF0 (baseline, 8 bits, YCbCr 4:2:0,
    quantisation tables 0, 1, 1), the DHT segments, SOS (Huffman tables 0, 1, 1)."""
    dqt, dht = jpeg_table_segments(tables)
    sof = struct.pack(">BBHBHHB", 0xFF, _SOF0, 17, 8, height, width, 3) + bytes([1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1])
    sos = struct.pack(">BBHB", 0xFF, _SOS, 12, 3) + bytes([1, 0x00, 2, 0x11, 3, 0x11, 0, 63, 0])
    return bytes([0xFF, _SOI]) + _JFIF + dqt + sof + dht + sos


def _jpeg_split_header(data: bytes) -> int:
    """Where a whole JPEG file's scan data starts (after its first SOS segment)."""
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker, end = data[at + 1], at + 2 + int.from_bytes(data[at + 2:at + 4], "big")
        if marker == _SOS:
            return end
        at = end
    raise RuntimeError("jpeg: Pillow wrote a file without an SOS segment where this module looks for it")


class _JpegStream:
    """The quantisation and Huffman tables once; per image the entropy-coded scan."""
    format, has_tables, smallest = "JPEG", True, 1

    def __init__(self, shape):
        self.shape = tuple(shape)
        self._streams: dict[int, tuple[bytes, bytes]] = {}  # quality -> (tables, header)

    def _stream(self, quality: int) -> tuple[bytes, bytes]:
        if quality not in self._streams:
            blank = encode_image(np.zeros(self.shape, np.uint8), "JPEG", quality)
            header = blank[:_jpeg_split_header(blank)]
            at, kept = 2, []
            while at < len(header):
                end = at + 2 + int.from_bytes(header[at + 2:at + 4], "big")
                if header[at + 1] in (_DQT, _DHT):
                    kept.append(header[at:end])
                at = end
            tables = b"".join(kept)
            if jpeg_header(tables, *self.shape[1:]) != header:
                raise RuntimeError(f"jpeg: Pillow's JPEG header at quality {quality} is not the layout this module "
                                   "rebuilds at the server (SOI, JFIF, DQT, SOF0 4:2:0, DHT, SOS)")
            self._streams[quality] = (tables, header)
        return self._streams[quality]

    def tables(self, quality: int) -> bytes:
        return self._stream(quality)[0]

    def payload(self, image: np.ndarray, quality: int) -> bytes:
        whole, header = encode_image(image, "JPEG", quality), self._stream(quality)[1]
        if not whole.startswith(header) or not whole.endswith(bytes([0xFF, _EOI])):
            raise RuntimeError(f"jpeg: an image's file at quality {quality} does not start with the stream's "
                               "header or end with EOI; the server could not rebuild it")
        return whole[len(header):-2]

    def rebuild(self, payload: bytes, header: bytes) -> bytes:
        return header + payload + bytes([0xFF, _EOI])

    @staticmethod
    def check(data: np.ndarray, ends: np.ndarray) -> None:
        """A scan written without restart intervals holds no marker: every 0xFF is
        followed by a stuffed 0x00 in the same image."""
        ff = np.flatnonzero(data == 0xFF)
        if not ff.size:
            return
        after = ff + 1
        bad = (after >= data.size) | np.isin(after, ends)
        bad |= data[np.minimum(after, data.size - 1)] != 0
        if bad.any():
            at = int(ff[np.argmax(bad)])
            image = int(np.searchsorted(ends, at, side="right"))
            raise ValueError(f"image {image} is not a valid JPEG file: a marker or a lone 0xFF in its scan, at "
                             f"byte {at - (int(ends[image - 1]) if image else 0)}")


# -- WebP: the VP8 frame per image, the container rebuilt ----------------------------------
_VP8_START = b"\x9d\x01\x2a"


def webp_file(frame: bytes, height: int, width: int) -> bytes:
    """The whole file Pillow writes around a lossy VP8 key frame sent without its start
    code and size (its 3-byte frame tag, then the partitions): RIFF, WEBP, "VP8 "."""
    vp8 = frame[:3] + _VP8_START + struct.pack("<HH", width, height) + frame[3:]
    pad = b"\0" * (len(vp8) % 2)
    return b"RIFF" + struct.pack("<I", 12 + len(vp8) + len(pad)) + b"WEBPVP8 " + struct.pack("<I", len(vp8)) + vp8 + pad


class _WebpStream:
    """Per image the VP8 frame; nothing is sent once."""
    format, has_tables, smallest = "WEBP", False, 4

    def __init__(self, shape):
        self.shape = tuple(shape)

    def tables(self, quality: int) -> bytes:
        return b""

    def payload(self, image: np.ndarray, quality: int) -> bytes:
        whole = encode_image(image, "WEBP", quality)
        chunk = whole[12:16]
        if chunk != b"VP8 ":
            raise RuntimeError(f"webp: Pillow wrote a {chunk!r} chunk at quality {quality}; this module sends only "
                               "the simple lossy layout (RIFF, WEBP, one 'VP8 ' chunk)")
        size = int.from_bytes(whole[16:20], "little")
        frame = whole[20:23] + whole[30:20 + size]
        if webp_file(frame, *self.shape[1:]) != whole:
            raise RuntimeError(f"webp: an image's file at quality {quality} is not the one the server would rebuild")
        return frame

    def rebuild(self, payload: bytes, header) -> bytes:
        return webp_file(payload, *self.shape[1:])

    @staticmethod
    def check(data: np.ndarray, ends: np.ndarray) -> None:
        pass


STREAMS = {"jpeg": _JpegStream, "webp": _WebpStream}


# -- the modules ---------------------------------------------------------------------------
class _InputSource(SourcePart):
    name = "raw"

    def __init__(self, cut_shape, config: CompressionConfig):
        super().__init__()
        require_input(cut_shape, self.name)
        self.config = config

    def forward(self, maps):
        return maps, {}


class RawSource(_InputSource):
    name = "raw"
    coded_arrays = ("pixels",)

    def encode(self, sent, side) -> Arrays:
        return {"pixels": to_pixels(sent)}


class _InputServer(ServerPart):
    def __init__(self, cut_shape, config: CompressionConfig):
        super().__init__()
        self.cut_shape = tuple(cut_shape)

    def _check(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or tuple(pixels.shape[1:]) != self.cut_shape:
            raise ValueError(f"expected uint8 images of shape (N, {self.cut_shape}), got {pixels.dtype} {pixels.shape}")
        return pixels


class RawServer(_InputServer):
    def largest_request(self, batch_size: int) -> int:
        return batch_size * numel(self.cut_shape)

    def decode(self, arrays: Arrays, device, source: int = 0):
        pixels = arrays.get("pixels")
        if pixels is None:
            raise ValueError("a raw message needs the array 'pixels'")
        restored = from_pixels(self._check(pixels), device)
        return restored, restored


class CodecSource(_InputSource):
    """Per image the codec's coded data (``data``, concatenated, and ``lengths``); jpeg's
    tables (``tables``) with the first message and after each change of quality."""

    def __init__(self, cut_shape, config: CompressionConfig, name: str):
        self.name = name
        super().__init__(cut_shape, config)
        self.coded_arrays = ("data", "tables") if name == "jpeg" else ("data",)  # the per-image lengths are framing
        self.quality = config.quality
        self.stream = STREAMS[name](cut_shape)
        self.tables_sent: bytes | None = None  # the tables the server holds from this source

    def encode(self, sent, side) -> Arrays:
        payloads = [self.stream.payload(image, self.quality) for image in to_pixels(sent)]
        arrays = {"data": np.frombuffer(b"".join(payloads), dtype=np.uint8),
                  "lengths": np.array([len(p) for p in payloads], dtype=np.uint32)}
        tables = self.stream.tables(self.quality)
        if self.stream.has_tables and tables != self.tables_sent:
            arrays["tables"] = np.frombuffer(tables, dtype=np.uint8)
            self.tables_sent = tables
        return arrays

    def set_level(self, value: int) -> None:
        self.quality = value

    def level_bytes(self, maps, values):
        """Counted: the batch coded at each quality as the stream sends it, the coded data
        and a 4-byte length per image. jpeg's tables (570 bytes, once per quality) are
        left out: they amortise to about nothing per sample."""
        pixels = to_pixels(maps)
        return [sum(len(self.stream.payload(image, q)) + 4 for image in pixels) / len(pixels) for q in values]

    def describe(self):
        return {"quality": self.quality}


class CodecServer(_InputServer):
    def __init__(self, cut_shape, config: CompressionConfig, name: str):
        super().__init__(cut_shape, config)
        self.stream = STREAMS[name](cut_shape)
        self.format = self.stream.format
        self.headers: dict[int, bytes] = {}  # jpeg: each source's file header, rebuilt from its tables

    def largest_file(self) -> int:
        """A coded image is never larger than this (measured: 2.7 KB for a whole 32x32
        noise image at quality 100, raw 3 KB; what crosses is less its headers)."""
        return 2 * numel(self.cut_shape) + 2048

    def largest_request(self, batch_size: int) -> int:
        return batch_size * (self.largest_file() + 4) + (MAX_TABLES if self.stream.has_tables else 0)

    def decode(self, arrays: Arrays, device, source: int = 0):
        data, lengths, tables = arrays.get("data"), arrays.get("lengths"), arrays.get("tables")
        if data is None or lengths is None or lengths.dtype != np.uint32 or lengths.ndim != 1 \
                or data.dtype != np.uint8 or data.ndim != 1:
            raise ValueError("a coded-image message needs 'data' (uint8) and 'lengths' (uint32, one per image)")
        self.check_batch(lengths.size, "a coded-image message")
        if lengths.size and int(lengths.max()) > self.largest_file():
            raise ValueError(f"a coded image of {int(lengths.max())} bytes; at most {self.largest_file()}")
        if lengths.size and int(lengths.min()) < self.stream.smallest:
            raise ValueError(f"a coded image of {int(lengths.min())} bytes; a {self.format} one has at least "
                             f"{self.stream.smallest}")
        if int(lengths.sum(dtype=np.uint64)) != data.size:
            raise ValueError(f"lengths add up to {int(lengths.sum(dtype=np.uint64))} bytes, data has {data.size}")
        if tables is not None:
            if not self.stream.has_tables:
                raise ValueError(f"a {self.format} message has no 'tables'")
            if tables.dtype != np.uint8 or tables.ndim != 1 or not 0 < tables.size <= MAX_TABLES:
                raise ValueError(f"'tables' must be 1..{MAX_TABLES} bytes (uint8), got {tables.dtype} {tables.shape}")
            self.headers[source] = jpeg_header(tables.tobytes(), *self.cut_shape[1:])
        ends = np.cumsum(lengths, dtype=np.int64)
        self.stream.check(data, ends)
        header = self.headers.get(source)
        if self.stream.has_tables and lengths.size and header is None:
            raise ValueError(f"jpeg: no tables received from source {source} yet (they come with its first message "
                             "and after each change of quality)")
        images, start = [], 0
        raw = data.tobytes()
        for length in lengths.tolist():
            try:
                whole = self.stream.rebuild(raw[start:start + length], header)
                with Image.open(io.BytesIO(whole), formats=[self.format]) as image:
                    if image.size != (self.cut_shape[2], self.cut_shape[1]):  # before any pixel is decoded
                        raise ValueError(f"it is {image.size[0]}x{image.size[1]}, not "
                                         f"{self.cut_shape[2]}x{self.cut_shape[1]}")
                    images.append(np.asarray(image.convert("RGB")).transpose(2, 0, 1))
            except (OSError, ValueError, EOFError, SyntaxError) as exc:
                raise ValueError(f"image {len(images)} is not a valid {self.format} file: {exc}") from None
            start += length
        pixels = self._check(np.stack(images) if images else np.zeros((0, *self.cut_shape), np.uint8))
        restored = from_pixels(pixels, device)
        return restored, restored


QUALITY_LEVELS = Levels("quality", lambda values, maps: (10, 25, 50, 75, 90), low=1, high=100)
QUALITY = knob("quality", int, 75, "jpeg / webp quality", min=1, max=100)
WHAT_CROSSES = {
    "jpeg": "each input image's JPEG entropy-coded scan (Pillow, baseline 4:2:0); the quantisation and Huffman "
            "tables once per quality; the server rebuilds every file's headers",
    "webp": "each input image's lossy VP8 frame (Pillow WebP) without its start code and size; the server "
            "rebuilds the RIFF/WEBP container and chunk header",
}

def _codec_deviations(name: str) -> tuple[Deviation, ...]:
    headers = {"jpeg": "its quantisation and Huffman tables cross once per quality (about 570 bytes, in the stream "
                       "and training payload bytes; not in the inference payload), the other headers are rebuilt "
                       "at the server",
               "webp": "the RIFF/WEBP container and chunk header are rebuilt at the server; each image's VP8 frame "
                       "crosses whole"}[name]
    return (
        Deviation("whole files of 224x224 ImageNet images, where a file's headers are a small part of its size",
                  f"32x32 images, where the headers would be a large part of a file: {headers}",
                  "the learned modules ship their decoders once and are counted once; the codecs get the same"),
        Deviation("the pretrained ResNet-50 evaluated on the decoded images",
                  "the run's model trained from scratch on the decoded images for the run's epochs (entropic and "
                  "cdc train at the source first: the summary's pretrain_samples_per_source)",
                  "the testbed trains every arm's model; the summary states each arm's training"),
    )


register(ModuleSpec("raw", "baseline (split 0)", "the uncompressed input image, uint8", RawSource, RawServer,
                    at_source="nothing (the image as uint8)", at_server="the whole model", input_only=True))
for _name in FORMATS:
    register(ModuleSpec(_name, "004's baseline (split 0)", WHAT_CROSSES[_name],
                        lambda cut, config, n=_name: CodecSource(cut, config, n),
                        lambda cut, config, n=_name: CodecServer(cut, config, n), (QUALITY,),
                        at_source=f"{_name.upper()} encoder, headers stripped",
                        at_server="headers rebuilt, decoder + the whole model",
                        input_only=True, levels=QUALITY_LEVELS, deviations=_codec_deviations(_name)))
