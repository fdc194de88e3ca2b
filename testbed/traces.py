"""Reading trace files (JSON lines) back while a run goes on, with the project's one
reader (analysis/jsonl.py); the events are declared in workloads/events.py."""
from __future__ import annotations

from pathlib import Path

from analysis import jsonl

from .errors import TestbedError


class TraceError(TestbedError, ValueError):
    """A trace the testbed reads is missing or damaged; the message names it."""


def read_events(path: Path, *, strict: bool = True, start: int = 0) -> list[dict]:
    """Events of one trace file. Non-strict skips a line still being written (and a
    missing file); strict raises TraceError for either."""
    try:
        found = jsonl.read(path, start=start)
    except FileNotFoundError:
        if strict:
            raise TraceError(f"trace {path} is missing") from None
        return []
    if strict and found.bad:
        raise TraceError(f"{path}: line {found.bad[0]} is not a JSON event")
    return found.objects


class Tail:
    """New complete lines of a growing trace file, on each call."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def new_events(self) -> list[dict]:
        try:
            found = jsonl.read(self.path, start=self.offset, complete=True)  # a partly written line: next time
        except FileNotFoundError:
            return []
        self.offset = found.end
        return found.objects
