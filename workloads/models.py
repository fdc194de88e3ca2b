"""Split models: a network cut after a given block into a source head and a server tail.

VGG11, CIFAR variant: five conv blocks (conv3x3 + BatchNorm + ReLU, max-pool at the
end of each block) and one linear classifier 512 -> classes. Split point ``n`` means
the source runs blocks 1..n and the server runs blocks n+1..5 and the classifier;
``n = 0`` offloads the raw input.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Output channels of each conv layer, grouped by block (a max-pool closes each block).
VGG11_BLOCKS: tuple[tuple[int, ...], ...] = ((64,), (128,), (256, 256), (512, 512), (512, 512))

# name -> width divisor; the slim variant keeps the layout at a quarter of the width
# so that tests and quick experiments run in seconds on a CPU.
MODELS: dict[str, int] = {"vgg11": 1, "vgg11-slim": 4}


@dataclass(frozen=True)
class SplitModel:
    head: nn.Module          # runs at the data source
    tail: nn.Module          # runs at the offload server
    cut_shape: tuple[int, int, int]  # (channels, height, width) crossing the cut, per sample


def _block(in_ch: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for out_ch in widths:
        layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
        in_ch = out_ch
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def block_count(model: str) -> int:
    check_model(model)
    return len(VGG11_BLOCKS)


def check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; known models: {', '.join(sorted(MODELS))}")


def build_split_model(model: str, split: int, num_classes: int, input_shape=(3, 32, 32)) -> SplitModel:
    """Build the head (blocks 1..split) and the tail (the rest) of ``model``."""
    check_model(model)
    if not 0 <= split <= len(VGG11_BLOCKS):
        raise ValueError(f"split must be between 0 and {len(VGG11_BLOCKS)} for {model}, got {split}")
    divisor = MODELS[model]
    blocks = [tuple(w // divisor for w in widths) for widths in VGG11_BLOCKS]
    channels, height, width = input_shape
    modules = []
    for widths in blocks:
        modules.append(_block(channels, widths))
        channels, height, width = widths[-1], height // 2, width // 2
    head = nn.Sequential(*modules[:split])
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, num_classes))
    tail = nn.Sequential(*modules[split:], classifier)
    cut = _cut_shape(head, input_shape)
    return SplitModel(head=head, tail=tail, cut_shape=cut)


def _cut_shape(head: nn.Module, input_shape) -> tuple[int, int, int]:
    with torch.no_grad():
        was_training = head.training
        head.eval()
        out = head(torch.zeros(1, *input_shape))
        head.train(was_training)
    return tuple(out.shape[1:])
