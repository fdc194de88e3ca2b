"""The import graph of the three packages: one way (``testbed -> workloads``, ``analysis``
reads files), no cycles (lazy imports inside functions included), and no module whose
declarations depend on what was imported before it."""
import ast
import json
import os
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.quick

PACKAGES = ("workloads", "testbed", "analysis")
ALLOWED = {"workloads": set(), "analysis": set(), "testbed": {"workloads", "analysis"}}  # which others each may import


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of the three packages that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def test_the_import_graph_has_no_cycle():
    assert cycles(graph()) == []


def test_a_cycle_is_found_where_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_dependency_arrow_is_one_way():
    for name, targets in graph().items():
        own = name.split(".")[0]
        others = {t.split(".")[0] for t in targets} - {own}
        assert others <= ALLOWED[own], f"{name} imports {sorted(others - ALLOWED[own])}"


CHILD = """
import gc, importlib, json, os, sys
results, names = sys.argv[1], sys.argv[2:]
gc.freeze()  # the preloaded objects stay where they are: the children copy fewer pages
running = {}  # pid -> index
def reap():
    pid, status = os.wait()
    index = running.pop(pid)
    if not os.path.exists(f"{results}/{index}"):  # it died before it could write (a crash)
        with open(f"{results}/{index}", "w") as out:
            json.dump({"module": names[index], "error": f"the child ended with wait status {status}"}, out)
for index, name in enumerate(names):
    while len(running) >= max(1, os.cpu_count() or 1):
        reap()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            importlib.import_module(name)  # alone: nothing of the three packages imported before it
            from workloads import settings
            from workloads.compression import available
            seen = {"programs": [o.name for o in settings.options()], "modules": available()}
            from testbed.options import options  # after: the programs' options may not need it
            seen["all"] = [o.name for o in options()]
            row = {"module": name, "seen": seen}
        except BaseException as exc:
            row = {"module": name, "error": f"{type(exc).__name__}: {exc}"}
            code = 1
        with open(f"{results}/{index}.part", "w") as out:
            json.dump(row, out)
        os.rename(f"{results}/{index}.part", f"{results}/{index}")
        os._exit(code)
    running[pid] = index
while running:
    reap()
for index in range(len(names)):  # in the order given, whichever child finished first
    with open(f"{results}/{index}") as out:
        print(json.dumps(json.load(out)), flush=True)
"""


def test_every_module_imports_alone_and_sees_every_declaration(tmp_path):
    """Each module imported first in a fresh interpreter (a fork of one that has imported
    only the third-party libraries; as many at a time as there are cores): it imports, and
    the options and modules declared afterwards are the same whatever was imported first
    (no registration that depends on import order)."""
    import subprocess

    names = sorted(n for n in modules() if not n.endswith("__main__"))
    # what the three packages import at their top level of the third-party libraries (torchvision only
    # inside a function: not here)
    preload = ("import numpy, torch, zmq, pandas, psutil, constriction, PIL.Image, matplotlib; matplotlib.use('Agg'); "
               "import matplotlib.pyplot")
    result = subprocess.run([sys.executable, "-c", preload + "\n" + CHILD, tmp_path, *names], capture_output=True,
                            text=True, cwd=REPO, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["module"] for r in rows] == names, result.stderr[-2000:]
    errors = {r["module"]: r["error"] for r in rows if "error" in r}
    assert errors == {}
    first = rows[0]["seen"]
    assert len(first["all"]) > len(first["programs"]) > 0 and "cpu" in first["all"] and "none" in first["modules"]
    assert {r["module"]: r["seen"] for r in rows if r["seen"] != first} == {}
