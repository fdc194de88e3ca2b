"""``crbq``: channel reduction plus 8-bit bottleneck quantization, the split-computing
baseline (paper 004's CR+BQ).

Source: a 1x1 convolution (with BatchNorm) reduces the cut to ``channels`` maps. Server:
a 1x1 convolution (with BatchNorm and ReLU) restores the cut's channels. As paper 004
trains it ("train the bottleneck-injected models and quantize the bottleneck after the
training session"), training steps send the reduced maps as float32 and get their
gradient back; inference (every evaluation) sends them quantized to uint8 with one scale
and offset per tensor, and the server dequantizes them. The rate the paper plots is the
quantized bottleneck's: an arm's inference bytes per sample.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .base import Arrays, ServerPart, SourcePart, numel
from ..option import knob
from .registry import CompressionConfig, Deviation, ModuleSpec, register

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

    coded_arrays = ("maps", "codes", "qparams")

    def encode(self, sent, side) -> Arrays:
        if self.training_step():  # quantized after training, as the paper does
            return super().encode(sent, side)
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
        return 4 * batch_size * self.channels * numel(self.spatial)  # float32 maps in training (uint8 codes after)

    def decode(self, arrays: Arrays, device, source: int = 0):
        if "maps" in arrays:  # a training step: the bottleneck before quantization
            maps = arrays["maps"]
            if maps.dtype != np.float32 or maps.ndim != 4 or tuple(maps.shape[1:]) != (self.channels, *self.spatial):
                raise ValueError(f"expected float32 maps of shape (N, {self.channels}, {self.spatial[0]}, "
                                 f"{self.spatial[1]}), got {maps.dtype} {maps.shape}")
            self.check_batch(maps.shape[0], "a crbq message")
            if not np.isfinite(maps).all():
                raise ValueError("crbq maps must be finite")
            sent = torch.from_numpy(maps).to(device).requires_grad_()
            return sent, self.restore(sent)
        codes, params = arrays.get("codes"), arrays.get("qparams")
        if codes is None or params is None or codes.dtype != np.uint8 or params.dtype != np.float32 \
                or params.shape != (2,):
            raise ValueError("a crbq message needs float32 'maps' (training) or uint8 'codes' and float32 'qparams' "
                             "(scale, offset)")
        if codes.ndim != 4 or tuple(codes.shape[1:]) != (self.channels, *self.spatial):
            raise ValueError(f"expected codes of shape (N, {self.channels}, {self.spatial[0]}, {self.spatial[1]}), "
                             f"got {codes.shape}")
        sent = torch.from_numpy(dequantize(codes, params)).to(device).requires_grad_()
        return sent, self.restore(sent)


CHANNELS = knob("channels", int, 0, "maps after channel reduction (0: an eighth of the cut's)", min=0)

register(ModuleSpec("crbq", "004's CR+BQ baseline", "channel reduction (1x1 conv); the reduced maps as float32 "
                    "in training, quantized to 8 bits (one scale and offset per tensor) after it, in every inference", CrbqSource, CrbqServer,
                    (CHANNELS,), at_source="1x1 conv reduction + quantizer", at_server="1x1 conv back to the cut's maps",
                    deviations=(
                        Deviation("a bottleneck of conv layers injected into a trained ResNet-50 and distilled "
                                  "from it (Matsubara et al.)",
                                  "one 1x1 convolution with BatchNorm at the source, one back at the server, trained "
                                  "from scratch with the rest of the split model",
                                  "the testbed's split points; crbq trains from scratch for the run's epochs like none"),)))
