"""The registry of compression modules: one name -> a (source part, server part) pair."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .base import ServerPart, SourcePart


@dataclass(frozen=True)
class CompressionConfig:
    """Knobs of the compression modules; each module reads the ones it needs."""
    budget: int = 4                # feature maps allowed across the cut (filter modules)
    resolution: int = 1            # resolution compression factor r (1 = off)
    prune_delta: float = 0.1       # delta of the prune loss barrier
    prune_weight: float = 1000.0   # epsilon: weight of the prune loss in the total loss
    prune_lambda: float = 1.0      # lambda: weight of the lower barrier
    filter_init: float = 4.0       # filter logits start uniform in [0, filter_init)
    filter_lr: float = 1.0         # learning rate of the filter logits
    quality: int = 75              # jpeg / webp quality
    channels: int = 0              # crbq: maps after channel reduction (0: an eighth of the cut's)
    mask_number: int = 2           # cdc: m in 0..4, 2^(4-m) quantizer steps
    mask_schedule: str = ""        # cdc: M:EPOCHS,... (a change of m fine-tunes the autoencoder)
    alpha: float = 48.0            # cdc: the EC loss is attenuated by 1/alpha
    latent_dim: int = 64           # mcr2: bottleneck neurons
    keep_neurons: int = 0          # mcr2: neurons sent, best by Fisher's discriminative power (0: all)
    mcr2_eps2: float = 0.5         # mcr2: epsilon squared of the coding rates
    beta: float = 1.0              # entropic: weight of the rate (bits per cut value) in the distillation loss
    latent_channels: int = 16      # entropic: latent maps at half the cut's resolution
    classes: int = 10              # classes of the dataset
    model: str = "vgg11"           # the split model (entropic trains its teacher)


@dataclass(frozen=True)
class ModuleSpec:
    name: str
    description: str
    source: Callable[..., SourcePart]
    server: Callable[..., ServerPart]
    input_only: bool = False  # compresses the input image itself: runs at split 0


_MODULES: dict[str, ModuleSpec] = {}


def register(name: str, description: str, source, server, *, input_only: bool = False) -> None:
    if name in _MODULES:
        raise ValueError(f"compression module {name!r} is registered twice")
    _MODULES[name] = ModuleSpec(name, description, source, server, input_only)


def available() -> list[str]:
    return sorted(_MODULES)


def get(name: str) -> ModuleSpec:
    try:
        return _MODULES[name]
    except KeyError:
        raise ValueError(f"unknown compression module {name!r}; known modules: {', '.join(available())}") from None


def create_source(name: str, cut_shape, config: CompressionConfig) -> SourcePart:
    return get(name).source(cut_shape, config)


def create_server(name: str, cut_shape, config: CompressionConfig) -> ServerPart:
    return get(name).server(cut_shape, config)
