import pickle

import numpy as np
import pytest

from workloads.data import DataError, find_cifar10, load_cifar10, load_dataset, synthetic_dataset

pytestmark = pytest.mark.quick  # every test here is fast: the quick tier (-m quick)


def make_cifar_py(root, per_batch=5):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {b"data": rng.integers(0, 255, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    return folder


def make_cifar_bin(root, per_batch=5):
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = rng.integers(0, 255, (per_batch, 3073), dtype=np.uint8)
        records[:, 0] %= 10
        (folder / name).write_bytes(records.tobytes())
    return folder


def test_cifar10_python_layout_loads(tmp_path):
    make_cifar_py(tmp_path)
    data = load_dataset("cifar10", str(tmp_path))
    assert data.name == "cifar10" and data.train.images.shape == (25, 3, 32, 32) and data.test.labels.shape == (5,)


def test_cifar10_binary_layout_loads(tmp_path):
    folder = make_cifar_bin(tmp_path)
    data = load_cifar10(folder)
    raw = np.frombuffer((folder / "test_batch.bin").read_bytes(), np.uint8).reshape(-1, 3073)
    np.testing.assert_array_equal(data.test.labels, raw[:, 0])
    np.testing.assert_array_equal(data.test.images[0].reshape(-1), raw[0, 1:])


def test_a_dataset_file_that_would_run_code_is_refused(tmp_path):
    folder = make_cifar_py(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_cifar10(folder)


def test_a_truncated_binary_batch_names_the_file(tmp_path):
    folder = make_cifar_bin(tmp_path)
    (folder / "test_batch.bin").write_bytes(b"\x01" * 100)
    with pytest.raises(DataError, match="test_batch.bin is not a CIFAR-10 binary batch"):
        load_cifar10(folder)


def test_without_data_cifar10_falls_back_to_synthetic(tmp_path):
    assert find_cifar10(tmp_path) is None
    assert load_dataset("cifar10", str(tmp_path), train_size=8, test_size=4).name == "synthetic"


def test_synthetic_data_is_deterministic_and_balanced():
    a, b = synthetic_dataset(seed=3, train_size=500), synthetic_dataset(seed=3, train_size=500)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    assert a.train.images.dtype == np.uint8 and a.train.images.shape == (500, 3, 32, 32)
    assert set(np.unique(a.train.labels)) == set(range(10))
    assert not np.array_equal(synthetic_dataset(seed=4, train_size=500).train.images, a.train.images)


def test_difficulty_zero_keeps_every_byte_and_more_difficulty_blurs_the_classes():
    import hashlib

    from workloads.data import _class_patterns, synthetic_dataset

    plain = synthetic_dataset(seed=0, train_size=64, test_size=32)
    # the bytes the synthetic set has always had (so old runs stay comparable)
    assert hashlib.sha256(plain.train.images.tobytes()).hexdigest()[:16] == "bd69f5f55dd9f60e"
    assert synthetic_dataset(seed=0, train_size=64, test_size=32, difficulty=0.0).train.images.tobytes() == \
        plain.train.images.tobytes()
    hard = synthetic_dataset(seed=0, train_size=64, test_size=32, difficulty=0.8)
    assert (hard.train.labels == plain.train.labels).all() and "difficulty 0.8" in hard.origin
    assert hard.train.images.tobytes() == \
        synthetic_dataset(seed=0, train_size=64, test_size=32, difficulty=0.8).train.images.tobytes()
    # a matched filter against the class patterns tells fewer test samples apart as it rises
    patterns = _class_patterns(np.random.default_rng(0), 10).reshape(10, -1)
    accuracy = []
    for difficulty in (0.0, 0.5, 1.0):
        test = synthetic_dataset(seed=0, train_size=8, test_size=2000, difficulty=difficulty).test
        x = (test.images.astype(np.float32) / 255 - 0.5) / 0.5
        accuracy.append(float(((x.reshape(len(x), -1) @ patterns.T).argmax(1) == test.labels).mean()))
    assert accuracy[0] > accuracy[1] + 0.05 > accuracy[2] + 0.1
    with pytest.raises(DataError, match="--difficulty must be between 0 and 1"):
        synthetic_dataset(difficulty=1.5)


def test_a_preloaded_dataset_gives_each_source_the_same_shard_as_views_of_the_shared_pages(tmp_path):
    """A warm parent reads CIFAR once (workloads.data.preload); each source forked from it
    takes the same shard it would read itself, as views of those pages (no copy each)."""
    from workloads import data as data_module
    make_cifar_bin(tmp_path)
    alone = [load_dataset("cifar10", str(tmp_path), part=i, parts=3, test_size=4) for i in range(3)]
    assert data_module.preload("cifar10", str(tmp_path)).startswith("cifar10 from ")
    try:
        [whole] = data_module._PRELOADED.values()
        shared = [load_dataset("cifar10", str(tmp_path), part=i, parts=3, test_size=4) for i in range(3)]
        for a, b in zip(alone, shared):
            assert a.train.digest() == b.train.digest() and np.array_equal(a.test.images, b.test.images)
            assert np.shares_memory(b.train.images, whole.train.images)
            assert np.shares_memory(b.test.images, whole.test.images)
        assert whole.train.images.shape[0] == 25  # not cut down by any source
    finally:
        data_module._PRELOADED.clear()
    assert data_module.preload("synthetic", str(tmp_path)) == ""  # made per shard: nothing to share
