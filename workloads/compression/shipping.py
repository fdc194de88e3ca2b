"""What several modules share: entropy coding with constriction, and module weights
that a source sends once (a decoder, an entropy model) as plain float32 arrays."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

import constriction

from .base import Arrays


def range_encode(symbols: np.ndarray, family, *params: np.ndarray) -> np.ndarray:
    """Range-code int symbols under ``family`` with per-symbol ``params`` -> the bytes."""
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(np.ascontiguousarray(symbols, dtype=np.int32).reshape(-1), family,
                   *(np.ascontiguousarray(p, dtype=np.float64) for p in params))
    return encoder.get_compressed().view(np.uint8)


def range_decode(data: np.ndarray, family, *params: np.ndarray) -> np.ndarray:
    """The symbols back; a stream that does not decode is a ValueError."""
    if data.size % 4:
        raise ValueError(f"a range-coded stream is whole 32-bit words, got {data.size} bytes")
    decoder = constriction.stream.queue.RangeDecoder(np.ascontiguousarray(data).view(np.uint32))
    try:
        return decoder.decode(family, *(np.ascontiguousarray(p, dtype=np.float64) for p in params))
    except (RuntimeError, AssertionError) as exc:  # constriction asserts on an invalid stream
        raise ValueError(f"the bitstream does not decode: {exc}") from None


def state_arrays(module: nn.Module, prefix: str) -> Arrays:
    """A module's weights as wire arrays named ``prefix + parameter name``."""
    return {prefix + name: value.detach().cpu().numpy().astype(np.float32)
            for name, value in module.state_dict().items()}


def flat_state(module: nn.Module) -> np.ndarray:
    """A module's weights as one float32 array, ``state_dict`` order (for a module with more
    tensors than a message may hold arrays: a model's layers)."""
    return np.concatenate([v.detach().reshape(-1).to(torch.float32).cpu().numpy() for v in module.state_dict().values()])


def load_flat_state(module: nn.Module, flat: np.ndarray, what: str) -> nn.Module:
    """Load ``flat_state``'s array into ``module``, checking its type and size first."""
    state = module.state_dict()
    size = sum(v.numel() for v in state.values())
    if flat.dtype != np.float32 or flat.ndim != 1 or flat.size != size or not np.isfinite(flat).all():
        raise ValueError(f"the {what} must be {size} finite float32 values, got {flat.dtype} {flat.shape}")
    values, start = {}, 0
    for name, value in state.items():
        values[name] = torch.from_numpy(flat[start:start + value.numel()].copy()).view_as(value).to(value.dtype)
        start += value.numel()
    module.load_state_dict(values)
    return module


def has_state(arrays: Arrays, prefix: str) -> bool:
    return any(name.startswith(prefix) for name in arrays)


def load_state_arrays(module: nn.Module, arrays: Arrays, prefix: str, what: str) -> nn.Module:
    """Load weights sent by ``state_arrays`` into ``module``, checking names and shapes."""
    weights = {name[len(prefix):]: value for name, value in arrays.items() if name.startswith(prefix)}
    expected = module.state_dict()
    if set(weights) != set(expected) or any(tuple(weights[k].shape) != tuple(v.shape) for k, v in expected.items()):
        raise ValueError(f"the {what} that was sent does not match this module's")
    module.load_state_dict({name: torch.from_numpy(np.array(value)) for name, value in weights.items()})
    return module
