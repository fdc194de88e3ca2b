"""The source program's training mode: what a module froze stays frozen."""
import torch
from torch import nn

from workloads.models import build_split_model
from workloads.source import train_mode


def batchnorm_means(module):
    return [m.running_mean.clone() for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def test_a_frozen_head_keeps_its_batchnorm_statistics_and_a_trainable_one_learns_them():
    torch.manual_seed(0)
    frozen = build_split_model("vgg11-slim", 2, 10).head
    for p in frozen.parameters():
        p.requires_grad_(False)  # as mcr2 and entropic do after pre-training at the source
    before = batchnorm_means(frozen)
    assert before, "the head has BatchNorm layers"
    train_mode(frozen)
    frozen(torch.randn(8, 3, 32, 32))
    assert all(torch.equal(a, b) for a, b in zip(before, batchnorm_means(frozen)))
    assert not frozen.training

    trainable = build_split_model("vgg11-slim", 2, 10).head
    before = batchnorm_means(trainable)
    train_mode(trainable)
    trainable(torch.randn(8, 3, 32, 32))
    assert not any(torch.equal(a, b) for a, b in zip(before, batchnorm_means(trainable)))
