"""The model registry: each model's split points, cut shapes and parameters."""
import math

import pytest
import torch

from workloads.models import MODELS, block_count, build_split_model

pytestmark = pytest.mark.quick  # every test here is fast: the quick tier (-m quick)

# model -> the cut shape at each split point 0..block_count(model)
CUTS = {
    "vgg11": [(3, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2), (512, 1, 1)],
    "vgg11-slim": [(3, 32, 32), (16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2), (128, 1, 1)],
    "resnet18": [(3, 32, 32), (64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)],
    "resnet18-slim": [(3, 32, 32), (16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4)],
}
# whole-network parameters with 10 classes (resnet18: the CIFAR ResNet-18's 11,173,962)
PARAMETERS = {"vgg11": 9_231_114, "vgg11-slim": 579_786, "resnet18": 11_173_962, "resnet18-slim": 701_466}
SPLITS = [(model, split) for model, cuts in CUTS.items() for split in range(len(cuts))]


def test_every_model_is_covered_and_block_count_is_per_model():
    assert set(CUTS) == set(MODELS)
    assert {model: block_count(model) for model in MODELS} == {model: len(c) - 1 for model, c in CUTS.items()}


@pytest.mark.parametrize("model,split", SPLITS)
def test_cut_shape_and_head_then_tail_is_the_whole_network(model, split):
    torch.manual_seed(0)
    built = build_split_model(model, split, 7)
    assert built.cut_shape == CUTS[model][split]
    assert len(built.head) == split  # the head is its blocks (entropic rebuilds the tail from len(head))
    x = torch.randn(2, 3, 32, 32)
    built.head.eval()
    built.tail.eval()
    with torch.no_grad():
        maps = built.head(x)
        assert tuple(maps.shape) == (2, *CUTS[model][split])
        assert tuple(built.tail(maps).shape) == (2, 7)


@pytest.mark.parametrize("model,split", SPLITS)
def test_the_split_is_a_partition_of_the_parameters(model, split):
    torch.manual_seed(0)
    built = build_split_model(model, split, 10)
    head = {id(p) for p in built.head.parameters()}
    tail = {id(p) for p in built.tail.parameters()}
    assert not head & tail
    total = sum(p.numel() for p in built.head.parameters()) + sum(p.numel() for p in built.tail.parameters())
    assert total == PARAMETERS[model]
    # and the same network whatever the split: the seeded whole is the same tensors in the same order
    torch.manual_seed(0)
    whole = build_split_model(model, 0, 10)
    assert [t.shape for t in list(built.head.state_dict().values()) + list(built.tail.state_dict().values())] == \
           [t.shape for t in whole.tail.state_dict().values()]


def test_seeded_builds_are_identical():
    for model in ("vgg11-slim", "resnet18-slim"):
        torch.manual_seed(5)
        a = build_split_model(model, 2, 10)
        torch.manual_seed(5)
        b = build_split_model(model, 2, 10)
        for x, y in zip(list(a.head.parameters()) + list(a.tail.parameters()),
                        list(b.head.parameters()) + list(b.tail.parameters())):
            assert torch.equal(x, y)


def test_floats_at_the_cut():
    assert [math.prod(c) for c in CUTS["resnet18"]] == [3072, 65536, 65536, 32768, 16384, 8192]
    assert [math.prod(c) for c in CUTS["vgg11"]] == [3072, 16384, 8192, 4096, 2048, 512]


@pytest.mark.parametrize("call,message", [
    (lambda: build_split_model("resnet", 2, 10),
     "unknown model 'resnet'; known models: resnet18, resnet18-slim, vgg11, vgg11-slim"),
    (lambda: block_count("resnet50"),
     "unknown model 'resnet50'; known models: resnet18, resnet18-slim, vgg11, vgg11-slim"),
    (lambda: build_split_model("resnet18", 6, 10), "split must be between 0 and 5 for resnet18, got 6"),
    (lambda: build_split_model("resnet18-slim", -1, 10), "split must be between 0 and 5 for resnet18-slim, got -1"),
    (lambda: build_split_model("vgg11", 6, 10), "split must be between 0 and 5 for vgg11, got 6"),
])
def test_bad_model_or_split_is_a_one_line_value_error(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == message and "\n" not in str(info.value)
