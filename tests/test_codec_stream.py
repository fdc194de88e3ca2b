"""jpeg / webp as streams: what is the same in every image crosses once (jpeg's tables)
or not at all (headers the server rebuilds); per image only the coded data."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from workloads.compression import CompressionConfig, create_server, create_source
from workloads.compression.input_codecs import MAX_TABLES, encode_image, to_pixels
from workloads.data import synthetic_dataset, to_tensor_batch

pytestmark = pytest.mark.quick  # every test here is fast: the quick tier (-m quick)

CPU = torch.device("cpu")
SHAPE = (3, 32, 32)
FORMATS = {"jpeg": "JPEG", "webp": "WEBP"}


def images(count=3, seed=5):
    pixels = synthetic_dataset(seed=seed, train_size=count, test_size=0).train.images
    return pixels, to_tensor_batch(pixels)


def pair(name, quality=75):
    config = CompressionConfig(quality=quality)
    return create_source(name, SHAPE, config), create_server(name, SHAPE, config)


def send(source, x):
    return source.encode(*source(x))


def pillow_decoded(whole: bytes, fmt: str) -> np.ndarray:
    with Image.open(io.BytesIO(whole), formats=[fmt]) as image:
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1)


def refused(server, arrays, match, source=0):
    with pytest.raises(ValueError, match=match):
        server.decode(arrays, CPU, source)


def test_jpeg_tables_cross_once_per_quality():
    _, x = images()
    source, server = pair("jpeg", 75)
    first, second = send(source, x), send(source, x)
    assert first["tables"].dtype == np.uint8 and 0 < first["tables"].size <= MAX_TABLES
    assert "tables" not in second  # the server has them
    assert source.coded_bytes(first) == first["data"].nbytes + first["tables"].nbytes  # tables counted, once
    assert source.coded_bytes(second) == second["data"].nbytes  # the lengths are framing, not counted
    for arrays in (first, second):
        server.decode(arrays, CPU)
    source.set_level(10)
    at_10 = send(source, x)
    assert "tables" in at_10 and at_10["tables"].tobytes() != first["tables"].tobytes()
    server.decode(at_10, CPU)
    source.set_level(10)  # the same quality again: nothing new to send
    assert "tables" not in send(source, x)
    source.set_level(75)  # back: the server only holds the last tables
    back = send(source, x)
    assert back["tables"].tobytes() == first["tables"].tobytes()
    server.decode(back, CPU)


def test_webp_sends_no_tables():
    _, x = images()
    source, server = pair("webp", 50)
    for _ in range(2):
        arrays = send(source, x)
        assert set(arrays) == {"data", "lengths"} and source.coded_bytes(arrays) == arrays["data"].nbytes
        server.decode(arrays, CPU)


def test_raw_counts_its_pixels():
    _, x = images()
    source = create_source("raw", SHAPE, CompressionConfig())
    arrays = send(source, x)
    assert source.coded_bytes(arrays) == 3 * 3 * 32 * 32


@pytest.mark.parametrize("name", ["jpeg", "webp"])
def test_decoded_pixels_are_those_of_the_whole_file(name):
    pixels, x = images(4)
    noise = np.random.default_rng(0).integers(0, 256, (1, *SHAPE), dtype=np.uint8)  # the largest frames
    pixels = np.concatenate([pixels, noise])
    x = to_tensor_batch(pixels)
    for quality in (1, 10, 50, 75, 100):
        source, server = pair(name, quality)
        arrays = send(source, x)
        _, restored = server.decode(arrays, CPU)
        expected = np.stack([pillow_decoded(encode_image(p, FORMATS[name], quality), FORMATS[name]) for p in pixels])
        ends = np.cumsum(arrays["lengths"])
        header = server.headers.get(0)
        for i, p in enumerate(pixels):
            payload = arrays["data"][ends[i] - arrays["lengths"][i]:ends[i]].tobytes()
            assert server.stream.rebuild(payload, header) == encode_image(p, FORMATS[name], quality)
        np.testing.assert_array_equal(to_pixels(restored), expected)  # bit for bit


@pytest.mark.parametrize("name, header", [("jpeg", 600), ("webp", 20)])
def test_per_image_bytes_are_the_file_less_its_headers(name, header):
    """Before, each image crossed as its whole file; now without what every file repeats
    (jpeg: SOI, JFIF, DQT, SOF0, DHT, SOS, EOI = 625 bytes; webp: RIFF, WEBP, the 'VP8 '
    chunk header, the frame's start code and size = 27 bytes)."""
    pixels, x = images(4)
    for quality in (10, 75):
        source, _ = pair(name, quality)
        arrays = send(source, x)
        wholes = [len(encode_image(p, FORMATS[name], quality)) for p in pixels]
        assert all(whole - int(n) >= header for whole, n in zip(wholes, arrays["lengths"]))
        assert source.level_bytes(x, (quality,)) == [arrays["data"].nbytes / len(pixels) + 4]


def test_largest_request_covers_noise_at_quality_100_and_the_tables():
    noise = np.random.default_rng(1).integers(0, 256, (8, *SHAPE), dtype=np.uint8)
    for name in FORMATS:
        source, server = pair(name, 100)
        arrays = send(source, to_tensor_batch(noise))
        assert int(arrays["lengths"].max()) <= server.largest_file()
        assert sum(a.nbytes for a in arrays.values()) <= server.largest_request(8)
    assert create_server("jpeg", SHAPE, CompressionConfig()).largest_request(8) \
        == create_server("webp", SHAPE, CompressionConfig()).largest_request(8) + MAX_TABLES


def test_malformed_jpeg_streams_are_refused():
    _, x = images(2)
    source, server = pair("jpeg", 50)
    first = send(source, x)
    second = {k: v for k, v in first.items() if k != "tables"}
    refused(server, second, "no tables received from source 0")  # a first message without tables
    refused(server, {**first, "tables": np.zeros(MAX_TABLES + 1, np.uint8)}, "'tables' must be")
    refused(server, {**first, "tables": first["tables"][:-5]}, "wrong length")
    refused(server, {**first, "tables": first["tables"].astype(np.uint16)}, "'tables' must be")
    refused(server, {**first, "tables": np.frombuffer(b"\xff\xc0\x00\x03\x00", np.uint8)}, "DQT or DHT")
    server.decode(first, CPU)
    server.decode(second, CPU)  # source 0's tables are kept
    refused(server, second, "no tables received from source 1", source=1)  # each source's own
    data, lengths = first["data"], first["lengths"]
    refused(server, {"data": data[:-1], "lengths": lengths}, "lengths add up")  # truncated
    refused(server, {"data": data, "lengths": lengths.astype(np.int64)}, "needs 'data'")
    refused(server, {"data": data, "lengths": np.array([lengths.sum(), 0], np.uint32)}, "at least 1")
    marked = data.copy()
    marked[3:5] = (0xFF, 0xD9)  # an EOI inside the first scan
    refused(server, {"data": marked, "lengths": lengths}, "image 0 is not a valid JPEG file: a marker")
    lone = np.concatenate([data[:lengths[0]], [0xFF], data[lengths[0]:]]).astype(np.uint8)
    refused(server, {"data": lone, "lengths": np.array([lengths[0] + 1, lengths[1]], np.uint32)},
            "image 0 is not a valid JPEG file: a marker")  # a 0xFF that would be stuffed by the next image's first byte


def test_malformed_webp_frames_are_refused():
    _, x = images(2)
    source, server = pair("webp", 50)
    arrays = send(source, x)
    refused(server, {**arrays, "tables": np.zeros(10, np.uint8)}, "has no 'tables'")
    refused(server, {"data": arrays["data"][:-1], "lengths": arrays["lengths"]}, "lengths add up")
    garbage = np.random.default_rng(0).integers(0, 256, arrays["data"].size, dtype=np.uint8)
    refused(server, {"data": garbage, "lengths": arrays["lengths"]}, "image 0 is not a valid WEBP file")
    cut = arrays["lengths"].copy()
    cut[0] -= 20
    short = np.concatenate([arrays["data"][:cut[0]], arrays["data"][arrays["lengths"][0]:]])
    refused(server, {"data": short, "lengths": cut}, "image 0 is not a valid WEBP file")
