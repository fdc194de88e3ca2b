"""The one interface every backend offers the runner: run one arm of a spec and say
how its sources were capped. The runner (``testbed run``) knows nothing else about
where the processes ran; each backend leaves the same run-directory layout behind."""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass
class ArmResult:
    """What a backend reports for one finished arm; its traces are in ``directory``."""
    module: str
    directory: Path
    cap_method: str
    cap_description: str
    pinning: dict | None = None  # cores of the server and the sources (--server-cpus), by which method
    server_threads: dict | None = None  # {"threads": N, "why": "..."}: the server's torch threads (None: not ours)


@runtime_checkable
class Backend(Protocol):
    """Runs the arms of one run spec (given to the backend when it is made)."""

    name: str  # written into the manifest: "local", "k8s", ...

    @abstractmethod
    def run_arm(self, module: str, directory: Path, run_id: str) -> ArmResult:
        """Run arm ``module`` to the end, leaving server.jsonl and source-N.jsonl in
        ``directory``; raise BackendError when it cannot. Everything the arm started
        is stopped or removed before this returns or raises, Ctrl-C included."""

    def close(self) -> None:
        """The run is over (finished, failed or interrupted): stop what the backend kept
        across its arms (the in-process backend's warm parent). Nothing by default."""
