"""Split models: a network cut after a given block into a source head and a server tail.

Every model is a sequence of blocks followed by a classifier. Split point ``n`` means
the source runs blocks 1..n (the head) and the server runs blocks n+1.. and the
classifier (the tail); ``n = 0`` offloads the raw input. Two families, both for
32x32 inputs (CIFAR), each with a ``-slim`` variant at a quarter of the width so that
tests and quick experiments run in seconds on a CPU:

- ``vgg11`` (CIFAR variant): five conv blocks (conv3x3 + BatchNorm + ReLU, a max-pool
  at the end of each block, see ``VGG11_BLOCKS``) and one linear classifier
  512 -> classes. Split ``n`` (1..5) cuts after conv block ``n``, where the maps are
  halved ``n`` times: 64x16x16, 128x8x8, 256x4x4, 512x2x2, 512x1x1.
- ``resnet18`` (CIFAR variant): a stem (conv3x3 64 + BatchNorm + ReLU, no max-pool),
  then four stages of two BasicBlocks (see ``RESNET18_STAGES``: 64/128/256/512
  channels, strides 1/2/2/2), then a classifier of global average pooling and a
  linear layer 512 -> classes. Split 1 cuts after the stem and split 2..5 after
  stages 1..4: 64x32x32, 64x32x32, 128x16x16, 256x8x8, 512x4x4.

``FAMILIES`` holds each family's builder and its number of blocks (its largest split
point); ``MODELS`` maps each model name to its family and width divisor.
"""
from __future__ import annotations

import importlib
import itertools
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

# VGG11: output channels of each conv layer, grouped by block (a max-pool closes each block).
VGG11_BLOCKS: tuple[tuple[int, ...], ...] = ((64,), (128,), (256, 256), (512, 512), (512, 512))

# ResNet-18: the stem's channels, then each stage's (channels, stride of its first BasicBlock).
RESNET18_STEM = 64
RESNET18_STAGES: tuple[tuple[int, int], ...] = ((64, 1), (128, 2), (256, 2), (512, 2))
RESNET18_BLOCKS_PER_STAGE = 2


@dataclass(frozen=True)
class SplitModel:
    head: nn.Module          # runs at the data source
    tail: nn.Module | None   # runs at the offload server (None: built without it)
    cut_shape: tuple[int, int, int]  # (channels, height, width) crossing the cut, per sample


def _block(in_ch: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for out_ch in widths:
        layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
        in_ch = out_ch
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def _vgg11(divisor: int, num_classes: int, input_shape) -> Iterator[nn.Module]:
    """VGG11's blocks, then its classifier, built in this order (a seed gives the same weights)."""
    blocks = [tuple(w // divisor for w in widths) for widths in VGG11_BLOCKS]
    channels, height, width = input_shape
    for widths in blocks:
        yield _block(channels, widths)
        channels, height, width = widths[-1], height // 2, width // 2
    yield nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, num_classes))


class BasicBlock(nn.Module):
    """Two conv3x3 + BatchNorm, a shortcut (a 1x1 conv + BatchNorm when the shape changes),
    ReLU after the sum."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def _resnet18(divisor: int, num_classes: int, input_shape) -> Iterator[nn.Module]:
    """ResNet-18's blocks (the stem, then one per stage), then its classifier."""
    channels = RESNET18_STEM // divisor
    yield nn.Sequential(nn.Conv2d(input_shape[0], channels, 3, padding=1, bias=False),
                        nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
    for width, stride in RESNET18_STAGES:
        width //= divisor
        stage = []
        for i in range(RESNET18_BLOCKS_PER_STAGE):
            stage.append(BasicBlock(channels, width, stride if i == 0 else 1))
            channels = width
        yield nn.Sequential(*stage)
    yield nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


@dataclass(frozen=True)
class Family:
    build: Callable[[int, int, tuple], Iterator[nn.Module]]  # (divisor, classes, input shape): blocks, classifier
    blocks: int              # blocks before the classifier: split points are 0..blocks


FAMILIES: dict[str, Family] = {
    "vgg11": Family(_vgg11, len(VGG11_BLOCKS)),
    "resnet18": Family(_resnet18, 1 + len(RESNET18_STAGES)),
}

# name -> (family, width divisor).
MODELS: dict[str, tuple[str, int]] = {
    "vgg11": ("vgg11", 1), "vgg11-slim": ("vgg11", 4),
    "resnet18": ("resnet18", 1), "resnet18-slim": ("resnet18", 4),
}


FIRST_STEP_IMPORTS = ("torch._dynamo",)  # what torch imports lazily at the first optimizer step: ~2 CPU-s


def warm_up() -> None:
    """Import what the first optimizer step would (``FIRST_STEP_IMPORTS``), now: before a
    server listens, in a warm parent before it forks, not in anyone's first step."""
    for name in FIRST_STEP_IMPORTS:
        importlib.import_module(name)


def block_count(model: str) -> int:
    """The largest split point of ``model`` (its blocks before the classifier)."""
    check_model(model)
    return FAMILIES[MODELS[model][0]].blocks


def check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; known models: {', '.join(sorted(MODELS))}")


def build_split_model(model: str, split: int, num_classes: int, input_shape=(3, 32, 32), *,
                      tail: bool = True) -> SplitModel:
    """Build the head (blocks 1..split) and the tail (the rest and the classifier) of
    ``model``. ``tail=False``: the head alone (a source's part; its ``tail`` is None), with
    the same weights for the same seed, since the blocks are built in order and the
    tail's come after the head's."""
    count = block_count(model)
    if not 0 <= split <= count:
        raise ValueError(f"split must be between 0 and {count} for {model}, got {split}")
    family, divisor = MODELS[model]
    parts = FAMILIES[family].build(divisor, num_classes, tuple(input_shape))
    head = nn.Sequential(*itertools.islice(parts, split))
    rest = list(parts) if tail else None
    if rest is not None:
        assert len(rest) == count - split + 1, f"{model} built {split + len(rest) - 1} blocks, declares {count}"
    cut = _cut_shape(head, input_shape)
    return SplitModel(head=head, tail=nn.Sequential(*rest) if rest is not None else None, cut_shape=cut)


def _cut_shape(head: nn.Module, input_shape) -> tuple[int, int, int]:
    with torch.no_grad():
        was_training = head.training
        head.eval()
        out = head(torch.zeros(1, *input_shape))
        head.train(was_training)
    return tuple(out.shape[1:])
