"""Real datasets beyond CIFAR-10: an image folder (torchvision's ImageFolder layout),
CIFAR-100 (torchvision's layout), the number of classes reaching every program, and
training augmentation. Every file is written by the test; nothing is downloaded."""
import json
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import read_jsonl
from testbed.spec import RunSpec, SpecError, data_in_use, run_classes, validate
from workloads import settings
from workloads.data import (DataError, augment_batch, augmenting, class_count, list_folder, load_dataset,
                            to_tensor_batch)
from workloads.source import Source

pytestmark = pytest.mark.quick  # every test here is fast: the quick tier (-m quick)

CLASSES = ("ant", "bee", "cat")
COLOURS = {"ant": (255, 0, 0), "bee": (0, 255, 0), "cat": (0, 0, 255)}
SIZES = ((40, 30), (16, 16), (64, 48))  # not the model's 32x32


def make_image_folder(root, train_per_class=3, test_per_class=2):
    """3 classes of flat-coloured PNGs in several sizes, one grayscale and one RGBA image
    among them, and a file that is not an image (skipped, as ImageFolder skips it)."""
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", SIZES[i % len(SIZES)], COLOURS[name]).save(folder / f"{i}.png")
    Image.new("L", (20, 24), 128).save(root / "train" / "bee" / "gray.png")
    Image.new("RGBA", (33, 31), (10, 20, 30, 40)).save(root / "test" / "cat" / "alpha.PNG")
    (root / "train" / "ant" / "notes.txt").write_text("not an image")
    return root


def test_an_image_folder_loads_with_its_classes_sorted_and_its_images_resized(tmp_path):
    make_image_folder(tmp_path)
    data = load_dataset("folder", str(tmp_path), test_size=100, classes=3)
    assert data.name == "folder" and data.classes == 3 and "3 classes: ant, bee, cat" in data.origin
    assert data.train.images.shape == (10, 3, 32, 32) and data.train.images.dtype == np.uint8
    # by class, then by file name (ImageFolder's order); the grayscale image sorts after 0..2.png
    assert data.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    ant, gray = data.train.images[0], data.train.images[6]
    assert (ant[0] == 255).all() and (ant[1:] == 0).all()           # a red 40x30 PNG, now 3x32x32
    assert (gray == 128).all()                                       # grayscale: R = G = B
    assert data.test.images.shape == (7, 3, 32, 32) and sorted(data.test.labels.tolist()) == [0, 0, 1, 1, 2, 2, 2]
    assert data.test.labels.tolist() != sorted(data.test.labels.tolist())  # shuffled: the first N mix the classes
    assert len(load_dataset("folder", str(tmp_path), test_size=4).test.labels) == 4


def test_each_source_reads_its_own_shard_of_train_and_the_same_test(tmp_path):
    make_image_folder(tmp_path)
    parts = [load_dataset("folder", str(tmp_path), part=p, parts=2, test_size=5) for p in (0, 1)]
    assert [len(p.train.labels) for p in parts] == [5, 5]
    assert sorted(parts[0].train.labels.tolist() + parts[1].train.labels.tolist()) == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    np.testing.assert_array_equal(parts[0].test.images, parts[1].test.images)
    with pytest.raises(DataError, match="has 10 images, too few for 11 sources: source 10 would have none"):
        load_dataset("folder", str(tmp_path), part=10, parts=11)


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "train").rename(root / "training"), "has no train/ folder: a folder dataset needs "
                                                               "train/<class>/* and test/<class>/*"),
    (lambda root: (root / "test").rename(root / "testing"), "has no test/ folder"),
    (lambda root: [shutil.rmtree(p) for p in (root / "train").iterdir()],
     "train has no class folders: put each class's images in"),
    (lambda root: (root / "test" / "dog").mkdir(), "class dog is in"),
    (lambda root: [p.unlink() for p in (root / "test" / "bee").iterdir()], "test/bee holds no images (.bmp, "),
    (lambda root: truncate(root / "train" / "cat" / "1.png"), "train/cat/1.png is a corrupt image"),
    (lambda root: (root / "train" / "cat" / "2.png").write_bytes(b"hello"),
     "train/cat/2.png is not an image Pillow can read"),
])
def test_a_bad_image_folder_is_a_one_line_error_that_names_the_problem(tmp_path, damage, message):
    make_image_folder(tmp_path)
    damage(tmp_path)
    with pytest.raises(DataError) as error:
        load_dataset("folder", str(tmp_path))
    assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


def truncate(path):
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])


def test_without_its_data_a_folder_or_cifar100_is_an_error_not_the_synthetic_set(tmp_path):
    with pytest.raises(DataError, match=r"--dataset folder needs --data-dir: a folder holding train/<class>/\*"):
        load_dataset("folder", None)
    with pytest.raises(DataError, match="--dataset cifar100 needs --data-dir: a folder holding cifar-100-python/"):
        load_dataset("cifar100", None)
    with pytest.raises(DataError, match=f"no CIFAR-100 under {tmp_path}: expected cifar-100-python/"):
        load_dataset("cifar100", str(tmp_path))
    with pytest.raises(DataError, match="data folder .*missing does not exist"):
        load_dataset("folder", str(tmp_path / "missing"))


def make_cifar100(root, train=20, test=10):
    """CIFAR-100's python version as torchvision lays it out: pickles of dicts of numpy arrays."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, count in (("train", train), ("test", test)):
        fine = [99, 0] + [int(v) for v in rng.integers(0, 100, count - 2)]
        entry = {b"filenames": [f"img_{i}.png".encode() for i in range(count)], b"batch_label": name.encode(),
                 b"fine_labels": fine, b"coarse_labels": [v // 5 for v in fine],
                 b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    return folder


def test_cifar100_loads_from_torchvisions_layout_with_100_classes(tmp_path):
    folder = make_cifar100(tmp_path)
    data = load_dataset("cifar100", str(tmp_path), test_size=8, part=1, parts=2, classes=100)
    assert data.name == "cifar100" and data.classes == 100 and str(folder) in data.origin
    assert data.train.images.shape == (10, 3, 32, 32) and data.test.images.shape == (8, 3, 32, 32)
    assert data.test.labels[0] == 99 and data.train.labels[0] == 0  # fine labels; part 1 starts at sample 1
    entry = pickle.loads((folder / "train").read_bytes())
    np.testing.assert_array_equal(data.train.images[0].reshape(-1), entry[b"data"][1])
    with pytest.raises(DataError, match="--classes is 10, but the data has 100: cifar100 from"):
        load_dataset("cifar100", str(tmp_path), classes=10)


def test_a_tampered_cifar100_file_is_refused(tmp_path):
    folder = make_cifar100(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("owned",))
    (folder / "test").write_bytes(pickle.dumps({b"data": Evil(), b"fine_labels": []}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_dataset("cifar100", str(tmp_path))
    (folder / "test").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}))
    with pytest.raises(DataError, match=r"labels outside 0\.\.99"):
        load_dataset("cifar100", str(tmp_path))


def test_the_number_of_classes_is_the_datasets_own_or_declared_for_a_folder():
    assert class_count("cifar10") == class_count("synthetic") == 10 and class_count("cifar100") == 100
    assert class_count("folder", 7) == 7 and class_count("cifar100", 100) == 100
    with pytest.raises(DataError, match="--dataset folder needs --classes"):
        class_count("folder")
    with pytest.raises(DataError, match="--classes 7 does not match --dataset cifar10, which has 10 classes"):
        class_count("cifar10", 7)


def test_augmentation_is_deterministic_crops_and_flips_and_is_off_for_the_synthetic_set():
    images = np.random.default_rng(0).integers(1, 256, (16, 3, 32, 32), dtype=np.uint8)
    a = augment_batch(images, np.random.default_rng(5))
    np.testing.assert_array_equal(a, augment_batch(images, np.random.default_rng(5)))
    assert a.shape == images.shape and a.dtype == np.uint8 and not np.array_equal(a, images)
    assert not np.array_equal(a, augment_batch(images, np.random.default_rng(6)))
    # every output is a 32x32 window of the zero-padded image, mirrored or not
    padded = np.pad(images, ((0, 0), (0, 0), (4, 4), (4, 4)))
    for out, source in zip(a, padded):
        windows = [source[:, y:y + 32, x:x + 32] for y in range(9) for x in range(9)]
        assert any(np.array_equal(out, w) or np.array_equal(out, w[:, :, ::-1]) for w in windows)
    assert augmenting("auto", "cifar10") and augmenting("auto", "folder") and not augmenting("auto", "synthetic")
    assert augmenting("on", "synthetic") and not augmenting("off", "cifar100")


def _source(argv):
    args = settings.parse("source", "test", [*argv, "--sources", "1", "--batches", "2", "--batch-size", "4",
                                             "--model", "vgg11-slim", "--eval-samples", "4"])
    return Source(args, trace=None, connection=object())  # no request is made: the connection stays unused


def test_a_source_augments_its_real_training_batches_from_its_seed_and_not_the_synthetic_ones(tmp_path):
    make_image_folder(tmp_path)
    real = ["--dataset", "folder", "--data-dir", str(tmp_path), "--classes", "3"]
    picked = np.array([0, 3, 6, 7])
    first, again = (_source(real)._training_batch(picked) for _ in range(2))
    assert torch_equal(first, again)
    plain = _source(real)
    assert not torch_equal(first, to_tensor_batch(plain.train.images[picked]))
    assert torch_equal(_source([*real, "--augment", "off"])._training_batch(picked),
                       to_tensor_batch(plain.train.images[picked]))
    assert not torch_equal(first, _source([*real, "--seed", "1"])._training_batch(picked))
    synthetic = _source(["--dataset", "synthetic"])
    assert not synthetic.augment
    assert torch_equal(synthetic._training_batch(picked), to_tensor_batch(synthetic.train.images[picked]))
    with pytest.raises(DataError, match="--classes is 4, but the data has 3: folder "):
        _source([*real[:-1], "4"])


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def test_testbed_run_trains_on_an_image_folder_with_a_model_of_its_classes(tmp_path, cli):
    make_image_folder(tmp_path / "data")
    out = tmp_path / "run"
    result = cli("run", "--backend", "inproc", "--dataset", "folder", "--data-dir", tmp_path / "data",
                 "--sources", 1, "--batches", 2, "--epochs", 1, "--eval-samples", 8, "--batch-size", 4,
                 "--module", "none", "--model", "vgg11-slim", "--quiet", "--no-report", "--out", out)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"].startswith(f"folder {tmp_path / 'data'} (3 classes: ant, bee, cat)")
    assert "augmented" in manifest["data"]
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["arms"]["none"]["test_accuracy"] <= 1
    welcome = [e for e in read_jsonl(out / "none" / "source-0.jsonl") if e["event"] == "connected"]
    assert welcome[0]["classes"] == 3  # the server built a model of 3 outputs, as the source did
    events = [e for e in read_jsonl(out / "none" / "source-0.jsonl") if e["event"] == "data"]
    assert events[0]["synthetic"] is False and events[0]["test_samples"] == 7


def spec(**values):
    return RunSpec(**{"modules": ("none",), "backend": "inproc", **values})


def test_testbed_run_validates_the_new_datasets_in_one_line(tmp_path):
    make_image_folder(tmp_path)
    make_cifar100(tmp_path)
    cases = [
        (spec(dataset="folder"), "--dataset folder needs --data-dir: a folder holding train/<class>/*"),
        (spec(dataset="cifar100"), "--dataset cifar100 needs --data-dir: a folder holding cifar-100-python/"),
        (spec(dataset="cifar100", data_dir=str(tmp_path / "test")), "no CIFAR-100 under"),
        (spec(dataset="folder", data_dir=str(tmp_path / "train")), "has no train/ folder"),
        (spec(dataset="folder", data_dir=str(tmp_path), classes=4), "--classes 4 does not match"),
        (spec(dataset="cifar10", classes=100), "--classes 100 does not match --dataset cifar10"),
        (spec(dataset="folder", data_dir=str(tmp_path), download=True), "--download is for cifar10 and cifar100"),
        (spec(dataset="folder", backend="k8s"), "--dataset folder on Kubernetes needs --data-pvc"),
        (spec(dataset="cifar100", backend="k8s"), "--dataset cifar100 on Kubernetes needs --data-pvc"),
        (spec(dataset="folder", backend="k8s", data_pvc="images"), "--dataset folder on Kubernetes needs --classes"),
    ]
    for bad, message in cases:
        with pytest.raises(SpecError) as error:
            validate(bad)
        assert message in str(error.value) and "\n" not in str(error.value), (bad.values, str(error.value))
    for good in (spec(dataset="folder", data_dir=str(tmp_path)), spec(dataset="cifar100", data_dir=str(tmp_path)),
                 spec(dataset="folder", data_dir=str(tmp_path), classes=3)):
        validate(good)


def test_the_manifest_says_what_data_and_the_programs_get_the_class_count(tmp_path):
    make_image_folder(tmp_path)
    make_cifar100(tmp_path)
    folder = spec(dataset="folder", data_dir=str(tmp_path))
    assert run_classes(folder) == 3 and folder.workload_options("none")["classes"] == 3
    assert data_in_use(folder).startswith(f"folder {tmp_path} (3 classes: ant, bee, cat)")
    assert data_in_use(spec(dataset="cifar100", data_dir=str(tmp_path))).startswith(
        f"cifar100 from {tmp_path / 'cifar-100-python'}; training batches augmented")
    assert spec(dataset="cifar100", data_dir=str(tmp_path)).workload_options("none")["classes"] == 100
    assert not data_in_use(spec(dataset="cifar100", data_dir=str(tmp_path), augment="off")).endswith("flip)")
    assert data_in_use(spec(dataset="synthetic")) == "synthetic"
    on_k8s = spec(dataset="folder", backend="k8s", data_pvc="images", classes=5)
    validate(on_k8s)
    assert data_in_use(on_k8s).startswith("folder from PersistentVolumeClaim images")
    assert on_k8s.workload_options("none")["classes"] == 5
    assert data_in_use(spec(dataset="cifar100", backend="k8s", data_pvc="c100")).startswith("cifar100 from")
    assert len(list_folder(tmp_path).train) == 10
