"""Reading JSON-lines files (traces: one JSON object per line) back: the project's one reader.

``analysis`` reads run directories with it, and the testbed, which may import analysis
(never the other way round), reads the traces it watches with it too (testbed/traces.py,
testbed/k8s/collect.py). The programs in workloads only write traces, never read them.
It knows nothing of the events themselves (declared in workloads/events.py).

A line that is not a JSON object (a process killed while writing it, a line still being
written) is skipped and counted; what to make of that is the caller's: analysis reports
it, the testbed's non-strict reads ignore it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Lines:
    """What :func:`read` found: the JSON objects, the numbers of the lines (from 1) that
    were not JSON objects, and the byte offset after the last line read."""
    objects: list[dict] = field(default_factory=list)
    bad: list[int] = field(default_factory=list)
    end: int = 0


def parse(line: bytes | str) -> dict | None:
    """One line as a JSON object; None for one that is not (truncated, not JSON, not an object)."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read(path: Path, *, start: int = 0, complete: bool = False) -> Lines:
    """The JSON objects of ``path`` from byte ``start`` on; ``complete``: only lines ended
    by a newline (a line still being written is left for the next read from ``end``).
    Blank lines are skipped; OSError (FileNotFoundError...) when the file cannot be read."""
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read()
    if complete:
        data = data[:data.rfind(b"\n") + 1]
    found = Lines(end=start + len(data))
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        value = parse(line)
        if value is None:
            found.bad.append(number)
        else:
            found.objects.append(value)
    return found
