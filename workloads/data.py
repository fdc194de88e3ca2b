"""Datasets: CIFAR-10, CIFAR-100 or an image folder from a local folder, or a
deterministic synthetic stand-in.

CIFAR-10 is read from torchvision's layout under ``data_dir``: the binary version
(``cifar-10-batches-bin``, plain bytes) or the python version
(``cifar-10-batches-py``); CIFAR-100 from its python version (``cifar-100-python``:
``train`` and ``test``, the fine labels). The python versions are pickles by their
authors' choice; they are read with an unpickler that only builds numpy arrays and
plain containers, so a tampered file cannot run code. Nothing is downloaded unless
asked. Without its files, ``cifar10`` falls back to the synthetic set (and says so);
``cifar100`` and ``folder`` are an error instead.

An image folder (``--dataset folder``) has torchvision's ImageFolder layout:
``train/<class>/*`` and ``test/<class>/*``. The classes are train's class folders sorted
by name (a label is an index into them, as ImageFolder numbers them); every image (of
the suffixes ImageFolder reads, in any size and mode) is read with Pillow, made RGB and
resized to the model's input, 3x32x32 (squashed, as ``Resize((32, 32))``). Each source
reads its own shard of train; the test images come in one fixed shuffled order (the
layout sorts them by class), of which every source evaluates the first ``test_size``.

Training augmentation for real data (``--augment``): each training batch is randomly
cropped back to 32x32 from a copy padded by ``AUGMENT_PADDING`` zero pixels on every
side, and half its images are flipped left to right (torchvision's ``RandomCrop(32,
padding=4)`` and ``RandomHorizontalFlip()``), drawn from the source's own generator.

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
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import WorkloadError

# CIFAR-10 statistics, used to standardise inputs.
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32)
IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")  # ImageFolder's
AUGMENT_PADDING = 4     # zero pixels on every side before the random 32x32 crop
NOISE_STD = 0.35        # the synthetic set's pixel noise (in pattern units)
EXTRA_NOISE_STD = 0.9   # more noise at difficulty 1
MAX_OVERLAP = 0.45      # the largest share of another class's pattern mixed in, at difficulty 1
INPUT_SHAPE = (3, 32, 32)


@dataclass
class Split:
    images: np.ndarray  # uint8, (N, 3, 32, 32)
    labels: np.ndarray  # int64, (N,)

    def digest(self) -> str:
        """A fingerprint of exactly these samples in this order (CRC-32 of the images, then
        the labels, as 8 hex digits): equal digests, equal shards, whatever started the source."""
        crc = zlib.crc32(np.ascontiguousarray(self.images).data)
        return f"{zlib.crc32(np.ascontiguousarray(self.labels, dtype='<i8').data, crc):08x}"


@dataclass
class Dataset:
    name: str
    origin: str  # what was loaded, for the manifest
    train: Split
    test: Split
    classes: int  # labels lie in 0..classes-1


class DataError(WorkloadError, ValueError):
    """The dataset cannot be loaded; the message says why."""


@dataclass(frozen=True)
class DatasetKind:
    """One dataset, declared once (``DATASETS``): what the programs load and what the
    testbed checks and records come from here."""
    name: str
    title: str                  # in messages: "CIFAR-100"
    classes: int | None         # None: its data says (count)
    layout: str | None          # what --data-dir holds for it (None: it needs no folder)
    required: bool              # no synthetic stand-in: without its data a run is refused
    find: Callable[[str], Path | None] | None = None  # its data under a --data-dir (None: not there)
    load: Callable[..., Dataset] | None = None        # (found, part=, parts=, test_size=) -> the shard in use
    read_whole: Callable[[Path], Dataset] | None = None  # found -> all of it, for a warm parent (None: not shared)
    count: Callable[[str], int] | None = None         # its classes, from its data (for classes None)
    download: str | None = None  # torchvision's class that --download fetches it with (None: it cannot be)
    real: bool = True            # real images (--augment auto augments them); False: the synthetic set
    help: str = ""               # where it comes from, for --dataset's help


def dataset_kind(name: str) -> DatasetKind:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def check_dataset(name: str) -> None:
    dataset_kind(name)


def class_count(dataset: str, classes: int = 0) -> int:
    """The classes a model for ``dataset`` predicts: the dataset's own number, or for an
    image folder, whose number lies in its data, ``classes`` (``--classes``; testbed run
    counts the class folders and passes it)."""
    own = dataset_kind(dataset).classes
    if own is None and not classes:
        raise DataError(f"--dataset {dataset} needs --classes: the number of class folders under its train/ "
                        "(testbed run counts them in --data-dir)")
    if own is not None and classes not in (0, own):
        raise DataError(f"--classes {classes} does not match --dataset {dataset}, which has {own} classes")
    return own or classes


def load_dataset(name: str, data_dir: str | None, *, seed: int = 0, train_size: int = 512,
                 test_size: int = 256, download: bool = False, part: int = 0, parts: int = 1,
                 difficulty: float = 0.0, classes: int = 0) -> Dataset:
    """Shard ``part`` of ``parts`` of the training data, and the first ``test_size`` test
    samples: ``cifar10``, ``cifar100`` or ``folder`` from ``data_dir``, or the synthetic set.

    ``name="synthetic"`` always gives the synthetic set (``train_size`` samples per
    shard). ``name="cifar10"`` without data falls back to it; ``Dataset.name`` says which.
    ``cifar100`` and ``folder`` without data are a DataError. ``difficulty`` applies to the
    synthetic set only (real data is as hard as it is). ``classes`` (not 0): the number the
    run declared; data with another number is a DataError.
    """
    check_dataset(name)
    data = _real_dataset(name, data_dir, download=download, part=part, parts=parts, test_size=test_size)
    if data is None:  # asked for, or cifar10 without its files
        data = synthetic_dataset(seed=seed, train_size=train_size, test_size=test_size, part=part,
                                 difficulty=difficulty)
    if classes and data.classes != classes:
        raise DataError(f"--classes is {classes}, but the data has {data.classes}: {data.origin}")
    return data


def _real_dataset(name: str, data_dir: str | None, *, download: bool, part: int, parts: int,
                  test_size: int) -> Dataset | None:
    """``name`` from ``data_dir``: the training shard and the test samples in use; None
    for cifar10 without its files (the caller falls back to the synthetic set)."""
    kind = dataset_kind(name)
    if kind.find is None:  # the synthetic set
        return None
    if kind.required and not data_dir:
        raise DataError(f"--dataset {name} needs --data-dir: a folder holding {kind.layout}")
    if download and kind.download and data_dir and kind.find(data_dir) is None:
        _download(kind, data_dir)
    found = kind.find(data_dir) if data_dir else None
    if found is None:
        if not kind.required:  # cifar10: the synthetic set stands in
            return None
        raise DataError(missing_data(kind, data_dir))
    return kind.load(found, part=part, parts=parts, test_size=test_size)


def missing_data(kind: DatasetKind, data_dir: str) -> str:
    return (f"no {kind.title} under {data_dir}: expected {kind.layout} there"
            + (", or --download" if kind.download else ""))


def check_data_dir(name: str, data_dir: str, classes: int = 0, download: bool = False) -> None:
    """What a run can check of ``--data-dir`` before it starts (on the host that holds it):
    the folder exists (or will be downloaded into) and holds the dataset, and a folder's
    class count agrees with ``classes``; a DataError in one line."""
    kind = dataset_kind(name)
    if kind.required and not data_dir:
        raise DataError(f"--dataset {name} needs --data-dir: a folder holding {kind.layout}")
    if not data_dir:
        return
    if not os.path.exists(data_dir) and not download:
        raise DataError(f"data folder {data_dir} does not exist")
    if kind.count is not None:
        counted = kind.count(data_dir)
        if classes and classes != counted:
            raise DataError(f"--classes {classes} does not match {data_dir}, which has {counted} class folders "
                            "under train/")
    elif kind.find is None:  # the synthetic set reads nothing there, but a folder given must be one
        _readable_root(data_dir)
    elif kind.find(data_dir) is None and kind.required and not download:
        raise DataError(missing_data(kind, data_dir))


def describe_data(name: str, data_dir: str, download: bool = False) -> str:
    """What the sources will train on, in words, for the terminal and the manifest (a
    checked ``--data-dir``, on the host that holds it)."""
    kind = dataset_kind(name)
    if not kind.real:
        return name
    if kind.count is not None:
        listing = folder_classes(data_dir)
        return f"{name} {data_dir} ({len(listing)} classes: {class_names(listing)})"
    found = kind.find(data_dir) if data_dir else None
    if found is not None:
        return f"{name} from {found}"
    if not kind.required and not download:
        return f"synthetic (no {kind.title} found" + (f" under {data_dir})" if data_dir else "; give --data-dir)")
    return f"{name}, downloaded into {data_dir}"


# whole datasets read once by a warm parent (testbed/launcher.py, ``preload``), by folder: the
# sources it forks take their shards from these pages (views, never written), shared with it
_PRELOADED: dict[Path, Dataset] = {}


def preload(name: str, data_dir: str) -> str:
    """Read the whole of ``name`` under ``data_dir`` once, for the sources forked after this
    (a shard is then a view of pages they all share, not a copy of the dataset each): what
    was read, in words ("" when there is nothing to share: the synthetic set is made per
    shard, an image folder is read per file)."""
    kind = dataset_kind(name)
    found = kind.find(data_dir) if kind.find is not None and data_dir else None
    if found is None or kind.read_whole is None:
        return ""
    _PRELOADED[found] = kind.read_whole(found)
    return _PRELOADED[found].origin


def _cifar(load: Callable[[Path], Dataset]) -> Callable[..., Dataset]:
    """A CIFAR loader that keeps the source's shard of train and the test samples in use
    (views of the whole, read here or preloaded by a warm parent)."""
    def shard_of(found: Path, *, part: int, parts: int, test_size: int) -> Dataset:
        whole = _PRELOADED.get(found) or load(found)
        return Dataset(whole.name, whole.origin, shard(whole.train, part, parts),
                       Split(whole.test.images[:test_size], whole.test.labels[:test_size]), whole.classes)
    return shard_of


def _readable_root(data_dir: str | os.PathLike) -> Path | None:
    """``data_dir`` as a Path; None if it does not exist; a DataError if it is no readable folder."""
    root = Path(data_dir)
    if not root.exists():
        return None
    if not root.is_dir() or not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"data folder {root} is not a readable directory")
    return root


def find_cifar10(data_dir: str | os.PathLike) -> Path | None:
    """The CIFAR-10 folder under ``data_dir`` (binary or python version), or None."""
    root = _readable_root(data_dir)
    for candidate in ("cifar-10-batches-bin", "cifar-10-batches-py") if root else ():
        if (root / candidate).is_dir():
            return root / candidate
    return None


def find_cifar100(data_dir: str | os.PathLike) -> Path | None:
    """The CIFAR-100 folder under ``data_dir`` (the python version), or None."""
    root = _readable_root(data_dir)
    return root / "cifar-100-python" if root and (root / "cifar-100-python").is_dir() else None


def load_cifar10(folder: Path) -> Dataset:
    if folder.name.endswith("-bin"):
        train = _concat([_read_bin(folder / f"data_batch_{i}.bin") for i in range(1, 6)])
        test = _read_bin(folder / "test_batch.bin")
    else:
        train = _concat([_read_py(folder / f"data_batch_{i}", CIFAR10_PY) for i in range(1, 6)])
        test = _read_py(folder / "test_batch", CIFAR10_PY)
    return Dataset("cifar10", f"cifar10 from {folder}", train, test, classes=10)


def load_cifar100(folder: Path) -> Dataset:
    train, test = _read_py(folder / "train", CIFAR100_PY), _read_py(folder / "test", CIFAR100_PY)
    return Dataset("cifar100", f"cifar100 from {folder}", train, test, classes=100)


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


@dataclass(frozen=True)
class PythonBatch:
    """What a file of a python version of CIFAR holds: a dict with b'data' (N x 3072
    uint8) and the labels under ``labels``."""
    what: str       # for messages
    labels: bytes   # the key of the labels
    classes: int


CIFAR10_PY = PythonBatch("CIFAR-10 python batch", b"labels", 10)
CIFAR100_PY = PythonBatch("CIFAR-100 python file", b"fine_labels", 100)


def _read_py(path: Path, kind: PythonBatch) -> Split:
    """One file of a python version of CIFAR (``kind`` says which)."""
    raw = _read_bytes(path)
    try:
        entry = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:  # a corrupt file can fail in many ways; name the file
        raise DataError(f"{path} is not a {kind.what}: {exc}") from None
    try:
        data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, *INPUT_SHAPE)
        labels = np.asarray(entry[kind.labels], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path} is not a {kind.what}: {exc}") from None
    if len(data) != len(labels) or labels.max(initial=0) >= kind.classes or labels.min(initial=0) < 0:
        raise DataError(f"{path} has {len(data)} images but {len(labels)} labels, or labels outside "
                        f"0..{kind.classes - 1}")
    return Split(data, labels)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None


def _download(kind: DatasetKind, data_dir: str) -> None:
    """``--download``: torchvision fetches the dataset into ``data_dir``."""
    import torchvision.datasets  # only for --download

    getattr(torchvision.datasets, kind.download)(root=data_dir, train=True, download=True)


@dataclass(frozen=True)
class FolderListing:
    """An image folder before any image is read: its classes and every image with its label."""
    root: Path
    classes: tuple[str, ...]            # train's class folders, sorted; a label indexes them
    train: tuple[tuple[Path, int], ...]  # by class, then by path (ImageFolder's order)
    test: tuple[tuple[Path, int], ...]


def folder_classes(data_dir: str | os.PathLike) -> list[str]:
    """The class names of the image folder ``data_dir``: train's class folders, sorted."""
    return _class_folders(_split_folder(_existing_root(data_dir), "train"))


def list_folder(data_dir: str | os.PathLike) -> FolderListing:
    """Every image of the image folder ``data_dir`` with its label, checked: both splits
    there, classes in each, no class in test that train lacks, no class without images."""
    root = _existing_root(data_dir)
    train, test = _split_folder(root, "train"), _split_folder(root, "test")
    classes = _class_folders(train)
    if not classes:
        raise DataError(f"{train} has no class folders: put each class's images in {train}/<class>/")
    test_classes = _class_folders(test)
    if not test_classes:
        raise DataError(f"{test} has no class folders: put each class's test images in {test}/<class>/")
    unknown = sorted(set(test_classes) - set(classes))
    if unknown:
        raise DataError(f"class {unknown[0]} is in {test} but not in {train}: every class needs training images")
    label = {name: i for i, name in enumerate(classes)}
    return FolderListing(root, tuple(classes), _labelled_images(train, classes, label),
                         _labelled_images(test, test_classes, label))


def _existing_root(data_dir: str | os.PathLike) -> Path:
    root = _readable_root(data_dir)
    if root is None:
        raise DataError(f"data folder {data_dir} does not exist")
    return root


def _split_folder(root: Path, split: str) -> Path:
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"{root} has no {split}/ folder: a folder dataset needs {DATASETS['folder'].layout}")
    return folder


def _class_folders(split: Path) -> list[str]:
    try:
        return sorted(entry.name for entry in os.scandir(split) if entry.is_dir())
    except OSError as exc:
        raise DataError(f"cannot read {split}: {exc.strerror}") from None


def _labelled_images(split: Path, classes: list[str], label: dict[str, int]) -> tuple[tuple[Path, int], ...]:
    """Every image under ``split``/<class>/ (subfolders too, as ImageFolder), in ImageFolder's order."""
    found = []
    for name in classes:
        images = [Path(folder, file) for folder, _, files in sorted(os.walk(split / name, followlinks=True))
                  for file in sorted(files) if file.lower().endswith(IMAGE_SUFFIXES)]
        if not images:
            raise DataError(f"class folder {split / name} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        found += [(path, label[name]) for path in images]
    return tuple(found)


def load_folder(data_dir: str | os.PathLike, *, part: int = 0, parts: int = 1, test_size: int = 256) -> Dataset:
    """Shard ``part`` of ``parts`` of the image folder's train (every parts-th image) and
    the first ``test_size`` images of its test in a fixed shuffled order; only these are read."""
    listing = list_folder(data_dir)
    train = listing.train[part::parts]
    if not train:
        raise DataError(f"{listing.root}/train has {len(listing.train)} images, too few for {parts} sources: "
                        f"source {part} would have none")
    order = np.random.default_rng(0).permutation(len(listing.test))  # the layout sorts test by class
    test = [listing.test[i] for i in order[:test_size]]
    origin = (f"folder {listing.root} ({len(listing.classes)} classes: {class_names(listing.classes)}; "
              f"{len(listing.train)} train / {len(listing.test)} test images)")
    return Dataset("folder", origin, _read_images(train), _read_images(test), classes=len(listing.classes))


def class_names(classes, shown: int = 5) -> str:
    """The first ``shown`` class names, for messages and the manifest."""
    return ", ".join(classes[:shown]) + (f", ... ({len(classes) - shown} more)" if len(classes) > shown else "")


def _read_images(labelled) -> Split:
    images = np.empty((len(labelled), *INPUT_SHAPE), dtype=np.uint8)
    for i, (path, _) in enumerate(labelled):
        images[i] = read_image(path)
    return Split(images, np.array([label for _, label in labelled], dtype=np.int64))


def read_image(path: Path) -> np.ndarray:
    """One image file as uint8 (3, 32, 32): RGB, resized (bilinear, antialiased) to the model's input."""
    _, height, width = INPUT_SHAPE
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    except UnidentifiedImageError:
        raise DataError(f"{path} is not an image Pillow can read") from None
    except Exception as exc:  # a truncated or corrupt file can fail in many ways; name the file
        raise DataError(f"{path} is a corrupt image: {exc}") from None
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def augmenting(augment: str, dataset: str) -> bool:
    """Whether training batches are augmented: ``--augment`` on or off, or auto (the
    default): on for real data, off for the synthetic set (``dataset`` is what was loaded)."""
    return augment == "on" or augment == "auto" and DATASETS[dataset].real


def augment_batch(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, 3, H, W): each image cropped back to HxW at a random place from a copy
    padded by AUGMENT_PADDING zeros, then flipped left to right with probability 1/2."""
    count, _, height, width = images.shape
    pad = AUGMENT_PADDING
    padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    tops = rng.integers(0, 2 * pad + 1, size=count)
    lefts = rng.integers(0, 2 * pad + 1, size=count)
    flips = rng.random(count) < 0.5
    out = np.empty_like(images)
    for i in range(count):
        crop = padded[i, :, tops[i]:tops[i] + height, lefts[i]:lefts[i] + width]
        out[i] = crop[:, :, ::-1] if flips[i] else crop
    return out


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
                   train, test, classes=classes)


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


DATASETS: dict[str, DatasetKind] = {kind.name: kind for kind in (
    DatasetKind("cifar10", "CIFAR-10", 10, "cifar-10-batches-bin/ or cifar-10-batches-py/ (torchvision's layout)",
                required=False, find=find_cifar10, load=_cifar(load_cifar10), read_whole=load_cifar10, download="CIFAR10",
                help="from --data-dir, else synthetic"),
    DatasetKind("cifar100", "CIFAR-100", 100, "cifar-100-python/ (torchvision's layout)", required=True,
                find=find_cifar100, load=_cifar(load_cifar100), read_whole=load_cifar100, download="CIFAR100",
                help="from --data-dir"),
    DatasetKind("folder", "an image folder", None,
                "train/<class>/* and test/<class>/* (torchvision's ImageFolder layout)", required=True,
                find=lambda data_dir: _existing_root(data_dir), load=lambda found, **shard: load_folder(found, **shard),
                count=lambda data_dir: len(list_folder(data_dir).classes),
                help="an image folder from --data-dir: train/<class>/*, test/<class>/*"),
    DatasetKind("synthetic", "the synthetic set", 10, None, required=False, real=False),
)}
