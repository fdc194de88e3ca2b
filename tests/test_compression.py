import numpy as np
import pytest
import torch

from workloads.compression import CompressionConfig, available, create_server, create_source, schedule_for
from workloads.compression.schedules import parse_schedule
from workloads.models import build_split_model

pytestmark = pytest.mark.quick  # every test here is fast: the quick tier (-m quick)

CUT = (128, 8, 8)
CPU = torch.device("cpu")


def test_registry_lists_the_paper_002_modules_and_rejects_unknown_names():
    assert {"none", "filter", "deprune", "prune"} <= set(available())
    with pytest.raises(ValueError, match="unknown compression module 'zip'.*known modules: cdc, crbq, deprune, entropic, filter, jpeg"):
        create_source("zip", CUT, CompressionConfig())


def test_vgg11_split_after_block_two_cuts_128_maps_of_8x8():
    model = build_split_model("vgg11", 2, 10)
    assert model.cut_shape == (128, 8, 8)
    assert build_split_model("vgg11", 0, 10).cut_shape == (3, 32, 32)
    out = model.tail(model.head(torch.zeros(2, 3, 32, 32)))
    assert out.shape == (2, 10)
    with pytest.raises(ValueError, match="split must be between 0 and 5"):
        build_split_model("vgg11", 6, 10)


def test_filter_sends_only_the_top_b_maps_and_the_server_puts_them_back():
    torch.manual_seed(0)
    source = create_source("filter", CUT, CompressionConfig(budget=4))
    server = create_server("filter", CUT, CompressionConfig(budget=4))
    maps = torch.randn(3, *CUT)
    sent, side = source(maps)
    arrays = source.encode(sent, side)
    assert arrays["maps"].shape == (3, 4, 8, 8) and arrays["maps"].dtype == np.float32
    assert arrays["maps"].nbytes == 3 * 4 * 8 * 8 * 4
    index = arrays["index"]
    assert index.dtype == np.uint8 and list(index) == sorted(torch.topk(source.filter(), 4).indices.tolist())
    leaf, restored = server.decode(arrays, CPU)
    f = source.filter().detach()
    expected = torch.zeros_like(maps)
    idx = torch.from_numpy(index.astype(np.int64))
    expected[:, idx] = maps[:, idx] * f[idx].view(1, -1, 1, 1)
    torch.testing.assert_close(restored, expected)
    # The gradient goes back for the sent maps only, and reaches the filter at the source.
    restored.sum().backward()
    grad = server.encode_grad(leaf)["grad"]
    assert grad.shape == (3, 4, 8, 8)
    sent.backward(source.decode_grad({"grad": grad}, sent))
    assert source.logits.grad is not None and int((source.logits.grad != 0).sum()) == 4


def test_server_rejects_bad_filter_messages():
    server = create_server("filter", CUT, CompressionConfig())
    maps = np.zeros((2, 2, 8, 8), np.float32)
    with pytest.raises(ValueError, match="distinct map numbers below 128"):
        server.decode({"maps": maps, "index": np.array([3, 200], np.uint8)}, CPU)
    with pytest.raises(ValueError, match="one unsigned map number per sent map"):
        server.decode({"maps": maps, "index": np.array([3], np.uint8)}, CPU)
    with pytest.raises(ValueError, match="needs the arrays"):
        server.decode({"maps": maps}, CPU)


def test_resolution_compression_restores_the_cut_shape():
    config = CompressionConfig(budget=8, resolution=2)
    source, server = create_source("filter", CUT, config), create_server("filter", CUT, config)
    sent, side = source(torch.randn(2, *CUT))
    assert sent.shape == (2, 8, 5, 5)  # kernel 4, stride 2, padding 2 on 8x8
    _, restored = server.decode(source.encode(sent, side), CPU)
    assert restored.shape == (2, *CUT)


def test_prune_loss_pulls_the_filter_sum_towards_the_budget():
    source = create_source("filter", CUT, CompressionConfig(budget=4))
    with torch.no_grad():
        source.logits.fill_(0.0)  # sum f = 64 > 4
    source.extra_loss().backward()
    assert bool((source.logits.grad > 0).all())  # descent lowers every logit
    source.logits.grad = None
    with torch.no_grad():
        source.logits.fill_(-10.0)  # sum f ~ 0 < 4
    source.extra_loss().backward()
    assert bool((source.logits.grad < 0).all())


def test_budget_changes_reset_the_filter_as_the_paper_says():
    source = create_source("prune", CUT, CompressionConfig(budget=128))
    with torch.no_grad():
        source.logits[:] = -15.0
        source.logits[:10] = 15.0
    before = source.logits.detach().clone()
    source.set_budget(4)  # lowering: only maps that were on are drawn again
    assert torch.equal(source.logits[10:], before[10:]) and not torch.equal(source.logits[:10], before[:10])
    learnt = source.logits.detach().clone()
    source.set_budget(128)  # raising: every learnt logit kept, the pruned maps come in low (and can rise)
    assert torch.equal(source.logits[:10], learnt[:10]) and bool((source.logits[10:] == -4.0).all())


def test_schedules_follow_paper_002():
    deprune = schedule_for("deprune", 4, 128, 4, boost=5.0, boost_epochs=1)
    assert [deprune.budget(e) for e in range(4)] == [4, 4, 4, 128]
    assert [deprune.lr_scale(e) for e in range(4)] == [1.0, 1.0, 1.0, 5.0]
    prune = schedule_for("prune", 4, 128, 4)
    assert [prune.budget(e) for e in range(4)] == [128, 128, 32, 4]
    assert [schedule_for("prune", 4, 128, 3).budget(e) for e in range(3)] == [128, 128, 4]
    assert [schedule_for("filter", 4, 128, 3).budget(e) for e in range(3)] == [4, 4, 4]
    assert schedule_for("deprune", 4, 128, 4, text="4:1,16:3").phases == ((4, 1), (16, 3))
    with pytest.raises(ValueError, match="expected BUDGET:EPOCHS"):
        parse_schedule("4-1")


# -- the baselines ------------------------------------------------------------------
from workloads.compression.crbq import dequantize, quantize  # noqa: E402
from workloads.compression.input_codecs import to_pixels  # noqa: E402
from workloads.data import synthetic_dataset, to_tensor_batch  # noqa: E402

IMAGE_CUT = (3, 32, 32)


def images(count=4):
    pixels = synthetic_dataset(seed=5, train_size=count, test_size=0).train.images
    return pixels, to_tensor_batch(pixels)


def round_trip(name, x, training=True, **knobs):
    """One request through a module's two parts: a training step's (autograd on, as the source
    computes them) or an evaluation's."""
    config = CompressionConfig(**knobs)
    source, server = create_source(name, x.shape[1:], config), create_server(name, x.shape[1:], config)
    source.train(training)
    with torch.set_grad_enabled(training):
        sent, side = source(x)
        arrays = source.encode(sent, side)
    _, restored = server.decode(arrays, CPU)
    return arrays, restored


def test_raw_is_lossless_and_costs_one_byte_per_pixel():
    pixels, x = images()
    np.testing.assert_array_equal(to_pixels(x), pixels)
    arrays, restored = round_trip("raw", x)
    assert sum(a.nbytes for a in arrays.values()) == 4 * 3 * 32 * 32
    np.testing.assert_array_equal(to_pixels(restored), pixels)


@pytest.mark.parametrize("name", ["jpeg", "webp"])
def test_image_codecs_send_the_real_files_and_quality_moves_the_rate(name):
    pixels, x = images()
    sizes, errors = {}, {}
    for quality in (10, 50, 95):
        arrays, restored = round_trip(name, x, quality=quality)
        assert int(arrays["lengths"].sum()) == arrays["data"].nbytes
        # no file headers cross per image: jpeg's tables once, in the first message; webp's VP8 frames alone
        assert ("tables" in arrays) == (name == "jpeg")
        assert not arrays["data"][:arrays["lengths"][0]].tobytes().startswith((b"\xff\xd8", b"RIFF"))
        sizes[quality] = arrays["data"].nbytes
        errors[quality] = np.abs(to_pixels(restored).astype(int) - pixels.astype(int)).mean()
    assert sizes[10] < sizes[50] < sizes[95]
    # lossy, less so at higher quality (4:2:0 chroma subsampling keeps some error even at 95)
    assert errors[95] < errors[10] and errors[95] < pixels.std()
    with pytest.raises(ValueError, match="quality must be between 1 and 100"):
        create_source(name, IMAGE_CUT, CompressionConfig(quality=0))


def test_input_modules_need_the_input():
    with pytest.raises(ValueError, match="module jpeg compresses the input image: it needs --split 0"):
        create_source("jpeg", CUT, CompressionConfig())


def test_a_corrupt_image_is_rejected_by_the_server():
    pixels, x = images(2)
    arrays, _ = round_trip("jpeg", x)
    arrays["data"] = arrays["data"].copy()
    arrays["data"][:20] = 0xFF  # markers inside the scan data
    with pytest.raises(ValueError, match="image 0 is not a valid JPEG file"):
        create_server("jpeg", IMAGE_CUT, CompressionConfig()).decode(arrays, CPU)


def test_crbq_quantizes_to_one_byte_per_value_within_half_a_step_after_training():
    """Paper 004 quantizes the bottleneck after training: inference sends uint8 codes,
    training steps the float32 reduced maps."""
    x = np.random.default_rng(0).normal(size=(2, 16, 8, 8)).astype(np.float32)
    codes, params = quantize(x)
    assert codes.dtype == np.uint8 and codes.nbytes == x.size
    assert np.abs(dequantize(codes, params) - x).max() <= params[0] / 2 + 1e-6
    torch.manual_seed(0)
    sizes = {}
    for channels in (4, 16, 32):
        arrays, restored = round_trip("crbq", torch.randn(2, *CUT), training=False, channels=channels)
        assert arrays["codes"].shape == (2, channels, 8, 8) and restored.shape == (2, *CUT)
        sizes[channels] = sum(a.nbytes for a in arrays.values())
    assert sizes == {4: 2 * 4 * 64 + 8, 16: 2 * 16 * 64 + 8, 32: 2 * 32 * 64 + 8}
    arrays, restored = round_trip("crbq", torch.randn(2, *CUT), channels=4)  # a training step
    assert set(arrays) == {"maps"} and arrays["maps"].dtype == np.float32 and arrays["maps"].shape == (2, 4, 8, 8)
    assert restored.shape == (2, *CUT)
    with pytest.raises(ValueError, match="channels must be between 1 and 128"):
        create_source("crbq", CUT, CompressionConfig(channels=200))


def test_crbq_gradient_reaches_the_source_through_the_bottleneck():
    config = CompressionConfig(channels=8)
    source, server = create_source("crbq", CUT, config), create_server("crbq", CUT, config)
    sent, side = source(torch.randn(2, *CUT))
    leaf, restored = server.decode(source.encode(sent, side), CPU)
    restored.square().sum().backward()
    grad = server.encode_grad(leaf)["grad"]
    assert grad.shape == (2, 8, 8, 8)
    sent.backward(source.decode_grad({"grad": grad}, sent))
    assert source.reduce[0].weight.grad is not None and source.reduce[0].weight.grad.abs().sum() > 0


def test_a_pretraining_phase_takes_whole_passes_until_it_has_its_steps():
    from workloads.compression.base import at_least

    assert list(at_least(lambda: iter([1, 2]), 5)) == [1, 2, 1, 2, 1, 2]
    assert list(at_least(lambda: iter([1, 2]), 1)) == [1, 2]  # one pass at least
    passes = iter([[1], []])
    assert list(at_least(lambda: next(passes), 5)) == [1]  # a pass with nothing ends it
    assert list(at_least(lambda: [], 3)) == []
