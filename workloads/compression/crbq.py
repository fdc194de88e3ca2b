"""``crbq``: channel reduction plus 8-bit bottleneck quantization, the split-computing
baseline (paper 004's CR+BQ).

Source: a 1x1 convolution (with BatchNorm) reduces the cut to ``channels`` maps, which
are quantized to uint8 with one scale and zero point per tensor. Server: dequantize,
then a 1x1 convolution (with BatchNorm and ReLU) restores the cut's channels. The
gradient of the dequantized maps comes back and trains the source through the
quantizer as if it were the identity (straight-through).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import Arrays, ServerPart, SourcePart, numel
from ..settings import knob
from .registry import CompressionConfig, ModuleSpec, register

LEVELS = 255


def reduced_channels(cut_shape, config: CompressionConfig) -> int:
    channels = config.channels or max(1, cut_shape[0] // 8)
    if not 1 <= channels <= cut_shape[0]:
        raise ValueError(f"channels must be between 1 and {cut_shape[0]} (the cut's maps), got {channels}")
    return channels


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 codes and (scale, offset) so that x ~ codes * scale + offset."""
    low, high = float(x.min(initial=0.0)), float(x.max(initial=0.0))
    scale = (high - low) / LEVELS or 1.0
    codes = np.clip(np.rint((x - low) / scale), 0, LEVELS).astype(np.uint8)
    return codes, np.array([scale, low], dtype=np.float32)


def dequantize(codes: np.ndarray, params: np.ndarray) -> np.ndarray:
    return codes.astype(np.float32) * params[0] + params[1]


class CrbqSource(SourcePart):
    def __init__(self, cut_shape, config: CompressionConfig):
        super().__init__()
        channels = reduced_channels(cut_shape, config)
        self.reduce = nn.Sequential(nn.Conv2d(cut_shape[0], channels, 1), nn.BatchNorm2d(channels))

    def forward(self, maps):
        return self.reduce(maps), {}

    def encode(self, sent, side) -> Arrays:
        codes, params = quantize(sent.detach().cpu().numpy())
        return {"codes": codes, "qparams": params}


class CrbqServer(ServerPart):
    def __init__(self, cut_shape, config: CompressionConfig):
        super().__init__()
        self.channels = reduced_channels(cut_shape, config)
        self.spatial = tuple(cut_shape[1:])
        self.restore = nn.Sequential(nn.Conv2d(self.channels, cut_shape[0], 1), nn.BatchNorm2d(cut_shape[0]),
                                     nn.ReLU(inplace=True))

    def largest_request(self, batch_size: int) -> int:
        return batch_size * self.channels * numel(self.spatial) + 8  # uint8 codes, scale and offset

    def decode(self, arrays: Arrays, device, source: int = 0):
        codes, params = arrays.get("codes"), arrays.get("qparams")
        if codes is None or params is None or codes.dtype != np.uint8 or params.dtype != np.float32 \
                or params.shape != (2,):
            raise ValueError("a crbq message needs uint8 'codes' and float32 'qparams' (scale, offset)")
        if codes.ndim != 4 or tuple(codes.shape[1:]) != (self.channels, *self.spatial):
            raise ValueError(f"expected codes of shape (N, {self.channels}, {self.spatial[0]}, {self.spatial[1]}), "
                             f"got {codes.shape}")
        sent = torch.from_numpy(dequantize(codes, params)).to(device).requires_grad_()
        return sent, self.restore(sent)


CHANNELS = knob("channels", int, 0, "maps after channel reduction (0: an eighth of the cut's)", min=0)

register(ModuleSpec("crbq", "004's CR+BQ baseline", "channel reduction (1x1 conv) + 8-bit quantization, one scale "
                    "and offset per tensor; gradient straight through the quantizer", CrbqSource, CrbqServer,
                    (CHANNELS,), at_source="1x1 conv reduction + quantizer", at_server="1x1 conv back to the cut's maps"))
