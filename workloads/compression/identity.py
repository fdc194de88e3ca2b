"""``none``: plain split learning, the cut activations cross the network as they are."""
from __future__ import annotations

import numpy as np
import torch

from .base import Arrays, ServerPart, SourcePart, numel
from .registry import ModuleSpec, register


class IdentitySource(SourcePart):
    def __init__(self, cut_shape, config):
        super().__init__()
        self.cut_shape = tuple(cut_shape)

    def forward(self, maps):
        return maps, {}


class IdentityServer(ServerPart):
    def __init__(self, cut_shape, config):
        super().__init__()
        self.cut_shape = tuple(cut_shape)

    def largest_request(self, batch_size: int) -> int:
        return 4 * batch_size * numel(self.cut_shape)

    def decode(self, arrays: Arrays, device, source: int = 0):
        maps = arrays.get("maps")
        if maps is None or maps.dtype != np.float32 or tuple(maps.shape[1:]) != self.cut_shape:
            got = None if maps is None else (str(maps.dtype), tuple(maps.shape))
            raise ValueError(f"expected float32 maps of shape (N, {self.cut_shape}), got {got}")
        sent = torch.from_numpy(maps).to(device).requires_grad_()
        return sent, sent


register(ModuleSpec("none", "002 (without module)", "plain split learning: the cut activations as float32",
                    IdentitySource, IdentityServer, at_source="nothing", at_server="nothing"))
