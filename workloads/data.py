"""Datasets: CIFAR-10 from a local folder, or a deterministic synthetic stand-in.

CIFAR-10 is read from torchvision's layout under ``data_dir``: the binary version
(``cifar-10-batches-bin``, plain bytes) or the python version
(``cifar-10-batches-py``). The python version is a pickle by its authors' choice; it
is read with an unpickler that only builds numpy arrays and plain containers, so a
tampered file cannot run code. Nothing is downloaded unless asked.

The synthetic dataset has CIFAR's shape (3x32x32, 10 classes). Each class is a fixed
random pattern of coloured gratings; a sample is its class pattern, randomly shifted
and scaled, plus noise. A network learns it within a few hundred samples, so loss and
accuracy visibly improve in short runs.

``difficulty`` (0..1, ``--difficulty``) makes it harder, so that short CPU runs do not
all end at 100 % and modules can be told apart: each sample is mixed with another
class's pattern (class overlap: up to ``MAX_OVERLAP`` × difficulty of the other
pattern) and gets more noise (``NOISE_STD`` + ``EXTRA_NOISE_STD`` × difficulty). At 0 the
set is byte for byte what it always was.
"""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# CIFAR-10 statistics, used to standardise inputs.
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)
NUM_CLASSES = {"cifar10": 10, "synthetic": 10}
NOISE_STD = 0.35        # the synthetic set's pixel noise (in pattern units)
EXTRA_NOISE_STD = 0.9   # more noise at difficulty 1
MAX_OVERLAP = 0.45      # the largest share of another class's pattern mixed in, at difficulty 1
INPUT_SHAPE = (3, 32, 32)


@dataclass
class Split:
    images: np.ndarray  # uint8, (N, 3, 32, 32)
    labels: np.ndarray  # int64, (N,)


@dataclass
class Dataset:
    name: str
    origin: str  # what was loaded, for the manifest
    train: Split
    test: Split


class DataError(ValueError):
    """The dataset cannot be loaded; the message says why."""


def check_dataset(name: str) -> None:
    if name not in NUM_CLASSES:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(NUM_CLASSES))}")


def load_dataset(name: str, data_dir: str | None, *, seed: int = 0, train_size: int = 512,
                 test_size: int = 256, download: bool = False, part: int = 0, parts: int = 1,
                 difficulty: float = 0.0) -> Dataset:
    """Shard ``part`` of ``parts`` of the training data, and the test data:
    ``cifar10`` from ``data_dir`` if it is there, else the synthetic set.

    ``name="synthetic"`` always gives the synthetic set (``train_size`` samples per
    shard). ``name="cifar10"`` without data falls back to it; ``Dataset.name`` says which.
    ``difficulty`` applies to the synthetic set only (real data is as hard as it is).
    """
    check_dataset(name)
    if name == "cifar10":
        if download and data_dir and find_cifar10(data_dir) is None:
            _download_cifar10(data_dir)
        found = find_cifar10(data_dir) if data_dir else None
        if found is not None:
            data = load_cifar10(found)
            data.train = shard(data.train, part, parts)
            data.test = Split(data.test.images[:test_size], data.test.labels[:test_size])
            return data
    return synthetic_dataset(seed=seed, train_size=train_size, test_size=test_size, part=part,
                             difficulty=difficulty)


def find_cifar10(data_dir: str | os.PathLike) -> Path | None:
    """The CIFAR-10 folder under ``data_dir`` (binary or python version), or None."""
    root = Path(data_dir)
    if not root.exists():
        return None
    if not root.is_dir() or not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"data folder {root} is not a readable directory")
    for candidate in ("cifar-10-batches-bin", "cifar-10-batches-py"):
        if (root / candidate).is_dir():
            return root / candidate
    return None


def load_cifar10(folder: Path) -> Dataset:
    if folder.name.endswith("-bin"):
        train = _concat([_read_bin(folder / f"data_batch_{i}.bin") for i in range(1, 6)])
        test = _read_bin(folder / "test_batch.bin")
    else:
        train = _concat([_read_py(folder / f"data_batch_{i}") for i in range(1, 6)])
        test = _read_py(folder / "test_batch")
    return Dataset("cifar10", f"cifar10 from {folder}", train, test)


def _concat(parts: list[Split]) -> Split:
    return Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))


def _read_bin(path: Path) -> Split:
    """One batch of the binary version: records of 1 label byte + 3072 pixel bytes."""
    raw = _read_bytes(path)
    record = 1 + 3 * 32 * 32
    if len(raw) % record:
        raise DataError(f"{path} is not a CIFAR-10 binary batch: {len(raw)} bytes is not a multiple of {record}")
    table = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    labels = table[:, 0].astype(np.int64)
    if labels.max(initial=0) >= 10:
        raise DataError(f"{path} has labels outside 0..9")
    return Split(table[:, 1:].reshape(-1, *INPUT_SHAPE).copy(), labels)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Builds numpy arrays and builtin containers only; anything else is refused."""
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("_codecs", "encode")}  # how protocol-2 pickles spell bytes

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to load {module}.{name} from a dataset file")


def _read_py(path: Path) -> Split:
    """One batch of the python version: a dict with b'data' (N x 3072) and b'labels'."""
    raw = _read_bytes(path)
    try:
        entry = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:  # a corrupt file can fail in many ways; name the file
        raise DataError(f"{path} is not a CIFAR-10 python batch: {exc}") from None
    try:
        data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, *INPUT_SHAPE)
        labels = np.asarray(entry[b"labels"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path} is not a CIFAR-10 python batch: {exc}") from None
    if len(data) != len(labels) or labels.max(initial=0) >= 10 or labels.min(initial=0) < 0:
        raise DataError(f"{path} has {len(data)} images but {len(labels)} labels, or labels outside 0..9")
    return Split(data, labels)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None


def _download_cifar10(data_dir: str) -> None:
    from torchvision.datasets import CIFAR10  # only for --download

    CIFAR10(root=data_dir, train=True, download=True)


def synthetic_dataset(*, seed: int = 0, train_size: int = 512, test_size: int = 256, classes: int = 10,
                      part: int = 0, difficulty: float = 0.0) -> Dataset:
    """Deterministic, learnable, CIFAR-shaped data; the same seed gives the same bytes.
    Every ``part`` (data source) draws its own training samples of the same classes;
    the test samples are shared."""
    patterns = _class_patterns(np.random.default_rng(seed), classes)
    if not 0 <= difficulty <= 1:
        raise DataError(f"--difficulty must be between 0 and 1, got {difficulty}")
    train = _synthetic_split(patterns, np.random.default_rng([seed, 1, part]), train_size, difficulty)
    test = _synthetic_split(patterns, np.random.default_rng([seed, 2]), test_size, difficulty)
    hard = f", difficulty {difficulty:g}" if difficulty else ""
    return Dataset("synthetic", f"synthetic (seed {seed}, {train_size} train per source / {test_size} test{hard})",
                   train, test)


def _class_patterns(rng: np.random.Generator, classes: int) -> np.ndarray:
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32) / 32.0
    patterns = np.zeros((classes, 3, 32, 32), dtype=np.float32)
    for c in range(classes):
        for _ in range(3):  # three coloured gratings per class
            fy, fx = rng.uniform(-4, 4, size=2)
            phase = rng.uniform(0, 2 * np.pi)
            colour = rng.uniform(-1, 1, size=3).astype(np.float32)
            patterns[c] += colour[:, None, None] * np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
    return patterns / np.abs(patterns).max(axis=(1, 2, 3), keepdims=True)


def _synthetic_split(patterns: np.ndarray, rng: np.random.Generator, size: int, difficulty: float = 0.0) -> Split:
    labels = rng.integers(0, len(patterns), size=size)
    images = patterns[labels] * rng.uniform(0.6, 1.0, size=(size, 1, 1, 1)).astype(np.float32)
    shifts = rng.integers(-4, 5, size=(size, 2))
    for i, (dy, dx) in enumerate(shifts):
        images[i] = np.roll(images[i], (int(dy), int(dx)), axis=(1, 2))
    images += rng.normal(0, NOISE_STD, size=images.shape).astype(np.float32)
    if difficulty:  # drawn after everything above, so that difficulty 0 keeps every byte
        others = (labels + rng.integers(1, len(patterns), size=size)) % len(patterns)  # never the own class
        mix = (MAX_OVERLAP * difficulty * rng.uniform(0, 1, size=(size, 1, 1, 1))).astype(np.float32)
        images = (1 - mix) * images + mix * patterns[others]
        images += rng.normal(0, EXTRA_NOISE_STD * difficulty, size=images.shape).astype(np.float32)
    pixels = np.clip((images * 0.5 + 0.5) * 255, 0, 255).astype(np.uint8)
    return Split(pixels, labels.astype(np.int64))


def to_tensor_batch(images: np.ndarray):
    """uint8 (N,3,32,32) -> standardised float32 torch tensor."""
    import torch

    x = images.astype(np.float32) / 255.0
    x = (x - CIFAR_MEAN[None, :, None, None]) / CIFAR_STD[None, :, None, None]
    return torch.from_numpy(x)


def shard(split: Split, part: int, parts: int) -> Split:
    """The ``part``-th of ``parts`` disjoint shards (every parts-th sample)."""
    return Split(split.images[part::parts], split.labels[part::parts])
