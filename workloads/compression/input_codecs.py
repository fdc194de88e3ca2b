"""Input compression baselines: the source sends the input image itself (split 0),
raw or coded with Pillow, and the server runs the whole model on what it decodes.

``raw``: uint8 pixels, lossless. ``jpeg`` / ``webp``: each image coded at
``quality``; the bytes on the wire are the real codec output. No gradient crosses:
the source has no layers to train, the server trains the whole network.
"""
from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from ..data import CIFAR_MEAN, CIFAR_STD
from .base import Arrays, ServerPart, SourcePart, numel, require_input
from ..settings import knob
from .registry import CompressionConfig, Levels, ModuleSpec, register

_MEAN = torch.from_numpy(CIFAR_MEAN).view(1, 3, 1, 1)
_STD = torch.from_numpy(CIFAR_STD).view(1, 3, 1, 1)
FORMATS = {"jpeg": "JPEG", "webp": "WEBP"}


def to_pixels(x: torch.Tensor) -> np.ndarray:
    """Standardised images back to the uint8 pixels they came from (N, 3, H, W)."""
    pixels = (x.detach().cpu() * _STD + _MEAN) * 255.0
    return pixels.round().clamp(0, 255).to(torch.uint8).numpy()


def from_pixels(pixels: np.ndarray, device) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(pixels)).to(torch.float32) / 255.0
    return ((x - _MEAN) / _STD).to(device)


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
    """Each image coded by Pillow; the frames are the concatenated files and their lengths."""

    def __init__(self, cut_shape, config: CompressionConfig, name: str):
        self.name = name
        super().__init__(cut_shape, config)
        self.quality = config.quality

    def encode(self, sent, side) -> Arrays:
        files = [encode_image(image, FORMATS[self.name], self.quality) for image in to_pixels(sent)]
        return {"data": np.frombuffer(b"".join(files), dtype=np.uint8),
                "lengths": np.array([len(f) for f in files], dtype=np.uint32)}


    def set_level(self, value: int) -> None:
        self.quality = value

    def level_bytes(self, maps, values):
        """Counted: the batch coded at each quality (a file and its length per image)."""
        pixels = to_pixels(maps)
        return [sum(len(encode_image(image, FORMATS[self.name], q)) + 4 for image in pixels) / len(pixels)
                for q in values]

    def describe(self):
        return {"quality": self.quality}


def encode_image(pixels: np.ndarray, fmt: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0))).save(buffer, format=fmt, quality=quality)
    return buffer.getvalue()


class CodecServer(_InputServer):
    def __init__(self, cut_shape, config: CompressionConfig, name: str):
        super().__init__(cut_shape, config)
        self.format = FORMATS[name]

    def largest_file(self) -> int:
        """A coded image is never larger than this (measured: 2.7 KB for a 32x32 noise
        image at quality 100, raw 3 KB)."""
        return 2 * numel(self.cut_shape) + 2048

    def largest_request(self, batch_size: int) -> int:
        return batch_size * (self.largest_file() + 4)

    def decode(self, arrays: Arrays, device, source: int = 0):
        data, lengths = arrays.get("data"), arrays.get("lengths")
        if data is None or lengths is None or lengths.dtype != np.uint32 or lengths.ndim != 1 \
                or data.dtype != np.uint8 or data.ndim != 1:
            raise ValueError("a coded-image message needs 'data' (uint8) and 'lengths' (uint32, one per image)")
        self.check_batch(lengths.size, "a coded-image message")
        if lengths.size and int(lengths.max()) > self.largest_file():
            raise ValueError(f"a coded image of {int(lengths.max())} bytes; at most {self.largest_file()}")
        if int(lengths.sum(dtype=np.uint64)) != data.size:
            raise ValueError(f"lengths add up to {int(lengths.sum(dtype=np.uint64))} bytes, data has {data.size}")
        images, start = [], 0
        raw = data.tobytes()
        for length in lengths.tolist():
            try:
                with Image.open(io.BytesIO(raw[start:start + length]), formats=[self.format]) as image:
                    if image.size != (self.cut_shape[2], self.cut_shape[1]):  # before any pixel is decoded
                        raise ValueError(f"it is {image.size[0]}x{image.size[1]}, not "
                                         f"{self.cut_shape[2]}x{self.cut_shape[1]}")
                    images.append(np.asarray(image.convert("RGB")).transpose(2, 0, 1))
            except (OSError, ValueError) as exc:
                raise ValueError(f"image {len(images)} is not a valid {self.format} file: {exc}") from None
            start += length
        pixels = self._check(np.stack(images) if images else np.zeros((0, *self.cut_shape), np.uint8))
        restored = from_pixels(pixels, device)
        return restored, restored


QUALITY_LEVELS = Levels("quality", lambda values, maps: (10, 25, 50, 75, 90), low=1, high=100)
QUALITY = knob("quality", int, 75, "jpeg / webp quality", min=1, max=100)

register(ModuleSpec("raw", "baseline (split 0)", "the uncompressed input image, uint8", RawSource, RawServer,
                    at_source="nothing (the image as uint8)", at_server="the whole model", input_only=True))
for _name in FORMATS:
    register(ModuleSpec(_name, "004's baseline (split 0)", f"each input image as a {_name.upper()} file (Pillow)",
                        lambda cut, config, n=_name: CodecSource(cut, config, n),
                        lambda cut, config, n=_name: CodecServer(cut, config, n), (QUALITY,),
                        at_source=f"{_name.upper()} encoder", at_server="decoder + the whole model",
                        input_only=True, levels=QUALITY_LEVELS))
