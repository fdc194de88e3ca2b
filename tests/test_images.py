"""The images hold what their program imports, declared once: images/workloads.txt is
exactly the third-party distributions the `workloads` package imports (every import,
those inside functions too), pyproject.toml's dependencies read that file, and the
Dockerfiles install that file and the workloads package only, from a base image and a
torch index given as build arguments. (Building and running the images is
images/build-and-run.sh: it needs root, podman and several GB.)"""
from __future__ import annotations

import ast
import functools
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

pytestmark = pytest.mark.quick

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "images"
WORKLOADS_TXT = IMAGES / "workloads.txt"
DOCKERFILES = {"source": IMAGES / "source.Dockerfile", "server": IMAGES / "server.Dockerfile"}
# the Dockerfiles' defaults before they became build arguments: the images they always named
DEFAULTS = {"source": ("python:3.11-slim-bookworm", "https://download.pytorch.org/whl/cpu"),
            "server": ("nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04", "https://download.pytorch.org/whl/cu124")}
# import name -> distribution, for a library not installed where the test runs
KNOWN = {"zmq": "pyzmq", "PIL": "pillow", "yaml": "pyyaml", "torch": "torch", "torchvision": "torchvision",
         "numpy": "numpy", "psutil": "psutil", "constriction": "constriction"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports(package: Path) -> dict[str, list[str]]:
    """Every top-level module a package's files import that is neither the standard
    library's nor the package's own, with where: {"zmq": ["workloads/transport.py:9", ...]}."""
    found: dict[str, list[str]] = {}
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != package.name and top != "__future__":
                    found.setdefault(top, []).append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


@functools.cache
def installed_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def distribution(module: str) -> str:
    """The distribution that installs import name ``module`` (zmq -> pyzmq)."""
    installed = installed_distributions().get(module)
    if installed:
        assert len(set(map(canonical, installed))) == 1, f"{module} comes from {installed}"
        return canonical(installed[0])
    assert module in KNOWN, f"which distribution installs {module}? (not installed here; add it to KNOWN)"
    return canonical(KNOWN[module])


def requirement_names(path: Path) -> list[str]:
    names = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
            assert match and not line.startswith("-"), f"{path.name}: {line!r} is not a plain requirement"
            names.append(canonical(match.group(0)))
    return names


def test_the_workload_set_is_exactly_what_the_workloads_package_imports():
    imports = third_party_imports(REPO / "workloads")
    imported = {distribution(module) for module in imports}
    declared = requirement_names(WORKLOADS_TXT)
    assert len(declared) == len(set(declared)), f"{WORKLOADS_TXT.name} names a distribution twice"
    assert set(declared) - imported == set(), "declared but never imported by workloads/"
    missing = {module: where for module, where in imports.items() if distribution(module) not in declared}
    assert missing == {}, f"imported by workloads/ but not in {WORKLOADS_TXT.relative_to(REPO)}"
    # the list, and torchvision (imported for --download: the chart's data.download)
    assert set(declared) == {"torch", "torchvision", "numpy", "pyzmq", "psutil", "pillow", "constriction"}


def test_the_distribution_reads_its_dependencies_from_the_same_file():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "dependencies" not in project["project"] and "dependencies" in project["project"]["dynamic"]
    files = project["tool"]["setuptools"]["dynamic"]["dependencies"]["file"]
    assert files[0] == "images/workloads.txt" and all((REPO / f).is_file() for f in files)
    rest = [name for f in files[1:] for name in requirement_names(REPO / f)]
    assert set(rest).isdisjoint(requirement_names(WORKLOADS_TXT)), "a workload dependency declared twice"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in dockerfile.read_text().splitlines()
                                          if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip() if " " in line.strip() else "")
            for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("role", sorted(DOCKERFILES))
def test_the_dockerfiles_take_base_and_torch_index_from_build_arguments(role):
    steps = instructions(DOCKERFILES[role])
    base, index = DEFAULTS[role]
    first_from = next(i for i, (op, _) in enumerate(steps) if op == "FROM")
    assert ("ARG", f"BASE_IMAGE={base}") in steps[:first_from]
    assert steps[first_from][1] in ("${BASE_IMAGE}", "$BASE_IMAGE")
    assert [s for s in steps if s[0] == "FROM"] == [steps[first_from]], "one stage"
    args = [a for op, a in steps[first_from:] if op == "ARG"]
    assert f"TORCH_INDEX={index}" in args
    runs = [a for op, a in steps if op == "RUN"]
    torch_installs = [r for r in runs if re.search(r'pip install --index-url "?\$\{?TORCH_INDEX\}?"? .*"torch==', r)]
    assert len(torch_installs) == 1, runs


@pytest.mark.parametrize("role", sorted(DOCKERFILES))
def test_the_images_install_the_workload_set_and_the_workloads_package_only(role):
    steps = instructions(DOCKERFILES[role])
    copies = [a.split() for op, a in steps if op == "COPY"]
    assert [c[:-1] for c in copies] == [["images/workloads.txt"], ["workloads"]], copies
    runs = " ".join(a for op, a in steps if op == "RUN")
    assert f"-r {copies[0][-1]}" in runs
    assert not re.search(r"pip install[^&]*\s\.(\s|$|\[)", runs), "pip install . brings the testbed's dependencies"
    assert ("USER", "10001") in steps
    assert dict(steps)["ENTRYPOINT"] == f'["python", "-m", "workloads.{role}"]'
    assert (IMAGES / "dockerignore").read_text().count("!") == 2  # the build context: these two only
