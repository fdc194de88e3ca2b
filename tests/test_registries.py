"""The registries of backends and datasets: each name declared once, every part of the
testbed asks the registry, and no code outside a backend's or a dataset's own files
branches on its name."""
import re

import pytest

from conftest import REPO
from testbed import backends
from testbed.options import option
from testbed.sweep.pool import POOLS
from testbed.sweep.spec import SweepSpecError, load_spec
from workloads.data import DATASETS, DataError, check_data_dir, dataset_kind, describe_data

pytestmark = pytest.mark.quick

# where a backend's or a dataset's name may stand in quotes outside its own files, and why
BACKEND_NAMES_ALLOWED = {
    "testbed/options.py": {"local", "k8s"},   # the default backend; "k8s" is also the Kubernetes options' group
    "testbed/cli.py": {"k8s"},                # the title of that group in --help
    "testbed/sweep/pool.py": {"local"},       # a local Ray, not the backend
    "testbed/backend.py": {"local", "k8s"},   # a comment: what a backend's name looks like
    "testbed/backends.py": {"local", "k8s", "inproc"},
    "testbed/local.py": {"local"}, "testbed/inproc.py": {"inproc"}, "testbed/k8s/backend.py": {"k8s"},
    "workloads/settings.py": {"local"},       # --run-id's default, not the backend
    "workloads/transport.py": {"inproc"},     # the in-process transport's address
    "workloads/inprocess.py": {"inproc"},
    "workloads/events.py": {"inproc"},        # the address the in-process transport traces
    "analysis/metrics/latency.py": {"local"},  # one-way times hold where source and server share a clock
}
DATASET_NAMES_ALLOWED = {
    "workloads/data.py": set(DATASETS),
    "workloads/settings.py": {"cifar10"},     # --dataset's default
}


def quoted_names(names, allowed):
    quoted = re.compile(rf"[\"']({'|'.join(names)})[\"']")
    found = {}
    for path in sorted(REPO.glob("*/**/*.py")):
        relative = str(path.relative_to(REPO))
        if relative.startswith(("tests/", "benchmarks/")):
            continue
        extra = set(quoted.findall(path.read_text())) - allowed.get(relative, set())
        if extra:
            found[relative] = sorted(extra)
    return found


def test_no_code_branches_on_a_backend_name_outside_its_own_files():
    assert quoted_names(backends.BACKENDS, BACKEND_NAMES_ALLOWED) == {}


def test_no_code_branches_on_a_dataset_name_outside_its_own_files():
    # "synthetic" also names the stand-in a run may fall back to: where the testbed says so
    allowed = {**DATASET_NAMES_ALLOWED, "testbed/spec.py": {"synthetic"}, "workloads/source.py": {"synthetic"},
               "analysis/metrics/sources.py": {"synthetic"}, "testbed/runner.py": {"synthetic"},
               "analysis/caveats.py": {"synthetic"}}  # the data figure's field
    assert quoted_names(DATASETS, allowed) == {}


def test_a_name_branch_is_found_where_there_is_one(tmp_path, monkeypatch):
    monkeypatch.setattr("test_registries.REPO", tmp_path)
    (tmp_path / "testbed").mkdir()
    (tmp_path / "testbed" / "x.py").write_text('if spec.backend == "inproc":\n    pass\n')
    assert quoted_names(backends.BACKENDS, BACKEND_NAMES_ALLOWED) == {"testbed/x.py": ["inproc"]}


def test_every_backend_resolves_and_the_options_and_sweeps_take_them_from_the_registry(tmp_path):
    assert option("backend").allowed() == list(backends.BACKENDS)
    for kind in backends.BACKENDS.values():
        assert callable(backends._resolve(kind.opens)) and callable(backends._resolve(kind.checks)), kind.name
        assert kind.name in option("backend").help
    spec = tmp_path / "spec.toml"
    for name, kind in backends.BACKENDS.items():  # a sweep runs its trials on every backend, where it declares
        spec.write_text(f'backend = "{name}"\n[[arms]]\nmodule = "none"\n')
        assert load_spec(spec).backend == name and kind.trials in POOLS, name
    spec.write_text('backend = "docker"\n[[arms]]\nmodule = "none"\n')
    with pytest.raises(SweepSpecError, match=f"backend must be one of {', '.join(backends.BACKENDS)}, got 'docker'"):
        load_spec(spec)
    with pytest.raises(ValueError, match="unknown backend 'nope'; known: local, k8s, inproc"):
        backends.get("nope")


def test_every_dataset_declares_what_the_testbed_checks(tmp_path):
    assert option("dataset").allowed() == sorted(DATASETS)
    for kind in DATASETS.values():
        assert not kind.required or kind.layout, kind.name       # a required dataset says what to give
        assert (kind.count is None) == (kind.classes is not None), kind.name  # its classes: declared or counted
        assert kind.real == (kind.find is not None), kind.name   # only the stand-in is found nowhere
        if kind.download:
            import torchvision.datasets
            assert hasattr(torchvision.datasets, kind.download), kind.name
    assert describe_data("synthetic", "") == "synthetic"
    assert describe_data("cifar10", str(tmp_path)) == f"synthetic (no CIFAR-10 found under {tmp_path})"
    with pytest.raises(DataError, match=r"no CIFAR-100 under .*: expected cifar-100-python/ .* there, or --download"):
        check_data_dir("cifar100", str(tmp_path))
    with pytest.raises(DataError, match="--dataset folder needs --data-dir"):
        check_data_dir("folder", "")
    with pytest.raises(DataError, match="unknown dataset 'mnist'"):
        dataset_kind("mnist")
