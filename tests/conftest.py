import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port():
    return free_port()


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def run_testbed(*args, timeout=600, **kwargs):
    """Run the real `testbed` CLI in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "testbed.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=kwargs.pop("cwd", REPO), **kwargs)


# Small settings that keep an end-to-end run to seconds on 2 cores.
TINY = ["--model", "vgg11-slim", "--batch-size", "8", "--eval-samples", "16", "--dataset", "synthetic"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One real two-arm run (none, filter) shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    result = run_testbed("run", "--sources", 2, "--cpu", 0.4, "--batches", 3, "--epochs", 2, *TINY,
                         "--out", out, "--port", free_port())
    assert result.returncode == 0, result.stderr
    return out, result
