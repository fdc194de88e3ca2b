"""cdc (paper 000): the quantizer, the bit packing, the decoder shipped once, and the
autoencoder learning under the elementary classifier's guidance."""
import json
import math

import numpy as np
import pytest
import torch

from workloads.compression import CompressionConfig, create_server, create_source
from workloads.compression.cdc import (bits_per_value, dequantize, from_codes, levels, pack, quantize, to_codes,
                                       unpack)
from workloads.data import synthetic_dataset, to_tensor_batch
from workloads.trace import TraceWriter

pytestmark = pytest.mark.quick  # every test here is fast: the quick tier (-m quick)

IMAGE = (3, 32, 32)
CPU = torch.device("cpu")


def test_quantizer_follows_the_paper():
    z = torch.tensor([-0.99, -0.3, 0.0, 0.01, 0.26, 0.5, 0.99, 1.0])  # the encoder's output lies in (-1, 1)
    assert levels(0) == 16 and levels(4) == 1
    q = quantize(z, 2, noisy=False)  # L = 4: Q(x) = ceil(4x), clipped to -3..4
    assert q.tolist() == [-3, -1, 0, 1, 2, 2, 4, 4]
    assert dequantize(q, 2).tolist() == pytest.approx([-0.875, -0.375, -0.125, 0.125, 0.375, 0.375, 0.875, 0.875])
    assert to_codes(q, 2).tolist() == [0, 2, 3, 4, 5, 5, 7, 7] and from_codes(to_codes(q, 2), 2).tolist() == q.tolist()
    # m = 4, one bit: the sign of the latent (it used to be 1 for every value in (0, 1): nothing crossed)
    assert quantize(torch.tensor([-0.5, -0.01, 0.01, 0.7]), 4, noisy=False).tolist() == [0, 0, 1, 1]
    noisy = quantize(torch.rand(10_000) * 2 - 1, 0, noisy=True)
    assert noisy.min() >= -15 and noisy.max() <= 16 and len(noisy.unique()) == 32  # 2^(5-m) levels
    assert [bits_per_value(m) for m in range(5)] == [5, 4, 3, 2, 1]
    with pytest.raises(ValueError, match="mask number must be between 0 and 4"):
        levels(5)


@pytest.mark.parametrize("mask", range(5))
def test_packing_is_lossless_in_the_fewest_bits(mask):
    codes = np.random.default_rng(mask).integers(0, 2 * levels(mask), size=1001).astype(np.uint8)
    bits = bits_per_value(mask)
    packed = pack(codes, bits)
    assert packed.nbytes == math.ceil(1001 * bits / 8)
    np.testing.assert_array_equal(unpack(packed, bits, 1001), codes)


def batch(count=8):
    data = synthetic_dataset(seed=1, train_size=count, test_size=0).train
    return to_tensor_batch(data.images), torch.from_numpy(data.labels)


def test_the_decoder_crosses_once_and_the_rate_falls_with_m():
    x, _ = batch()
    sizes = {}
    for mask in range(5):
        config = CompressionConfig(mask_number=mask)
        source, server = create_source("cdc", IMAGE, config), create_server("cdc", IMAGE, config)
        codes_only = {"codes": np.zeros(1, np.uint8), "latent_shape": np.array([1, 16, 8, 8], "<i4"),
                      "mask_number": np.array([mask], np.uint8)}
        with pytest.raises(ValueError, match="no decoder received from source 0 yet"):
            server.decode(codes_only, CPU)
        first = source.encode(*source(x))
        assert any(k.startswith("decoder.") for k in first)
        second = source.encode(*source(x))
        assert not any(k.startswith("decoder.") for k in second)
        server.decode(first, CPU)
        _, restored = server.decode(second, CPU)
        expected, _ = source.autoencode(x, noisy=False)
        torch.testing.assert_close(restored, expected.detach())  # the server restores what the edge would
        sizes[mask] = sum(a.nbytes for a in second.values())
        # 8 images x 16 x 8 x 8 latent values: one value per input pixel, so bits per value = paper 000's BPP
        assert second["codes"].nbytes == 8 * 16 * 8 * 8 * bits_per_value(mask) // 8
        assert source.coded_bytes(second) == second["codes"].nbytes  # the rate: the packed latent alone
        assert 8 * second["codes"].nbytes / (8 * 32 * 32) == bits_per_value(mask)
    assert sizes[0] > sizes[1] > sizes[2] > sizes[3] > sizes[4]


def test_the_autoencoder_learns_under_the_elementary_classifier(tmp_path):
    torch.manual_seed(0)
    data = synthetic_dataset(seed=2, train_size=256, test_size=0).train
    x_all, y_all = to_tensor_batch(data.images), torch.from_numpy(data.labels)
    source = create_source("cdc", IMAGE, CompressionConfig(mask_number=2))
    generator = torch.Generator().manual_seed(0)
    picks = [torch.randint(0, 256, (16,), generator=generator) for _ in range(80)]
    with TraceWriter(str(tmp_path / "t.jsonl"), run="t", role="source", source=0) as trace:
        source.prepare(None, lambda: ((x_all[i], y_all[i]) for i in picks), trace)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert len(losses) == 80 and np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    assert not any(p.requires_grad for p in source.parameters())  # frozen before streaming
    with pytest.raises(ValueError, match="needs --split 0"):
        create_source("cdc", (128, 8, 8), CompressionConfig())


def test_each_source_is_decoded_with_its_own_decoder():
    x, _ = batch()
    server = create_server("cdc", IMAGE, CompressionConfig())
    sources = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        sources.append(create_source("cdc", IMAGE, CompressionConfig()))
    firsts = [s.encode(*s(x)) for s in sources]
    for index, (source, first) in enumerate(zip(sources, firsts)):
        server.decode(first, CPU, source=index)
    for index, source in enumerate(sources):
        _, restored = server.decode(source.encode(*source(x)), CPU, source=index)
        torch.testing.assert_close(restored, source.autoencode(x, noisy=False)[0].detach())


def test_a_new_mask_number_fine_tunes_and_resends_the_decoder(tmp_path):
    from workloads.compression.cdc import parse_mask_schedule
    x, labels = batch(16)
    source = create_source("cdc", IMAGE, CompressionConfig(mask_schedule="0:1,4:1"))
    path = tmp_path / "t.jsonl"
    with TraceWriter(str(path), run="t", role="source", source=0) as trace:
        source.prepare(None, lambda: iter([(x, labels)] * 5), trace)
        source.start_epoch(0)
        first = source.encode(*source(x))
        weights_before = source.decoder[0].weight.clone()
        source.start_epoch(1)  # m: 0 -> 4
        assert source.mask == 4 and source.bits == 1
        assert not torch.equal(source.decoder[0].weight, weights_before)  # fine-tuned, not redrawn
        again = source.encode(*source(x))
    stages = [json.loads(line)["stage"] for line in path.read_text().splitlines()]
    assert stages == ["train"] * 5 + ["finetune"] * 5
    assert any(k.startswith("decoder.") for k in again)  # the new decoder crosses once more
    assert again["codes"].nbytes * 5 == first["codes"].nbytes
    server = create_server("cdc", IMAGE, CompressionConfig())
    server.decode(first, CPU)
    _, restored = server.decode(again, CPU)
    torch.testing.assert_close(restored, source.autoencode(x, noisy=False)[0].detach())
    with pytest.raises(ValueError, match="bad mask schedule entry"):
        parse_mask_schedule("2-1")
    with pytest.raises(ValueError, match="mask number must be between 0 and 4"):
        parse_mask_schedule("7:1")
