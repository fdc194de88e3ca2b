"""Trace events: one JSON object per line, with time, run id, role and source id.

Locally each process appends to its own file; with no file (as in a pod) the events
go to stdout, where the Kubernetes backend collects them. One schema serves both.
Every event is declared, with its fields and their units, in workloads/events.py; a
writer names it by its constant there (``trace.event(events.BATCH, ...)``), and an
undeclared name is refused.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import IO

from . import events

STARTTIME_FIELD = 19  # /proc/PID/stat's field 22 (starttime, in clock ticks after boot), counted after "comm)"


def process_created() -> float:
    """When this process began (fork, or the exec'd interpreter's fork), on the wall clock,
    to the kernel's clock tick (10 ms): its start in ticks after boot placed with
    CLOCK_BOOTTIME. psutil's ``create_time`` adds that to a boot time rounded to the second,
    which put it up to a second early (0.38 s here)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[STARTTIME_FIELD])
        return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux
        import psutil
        return psutil.Process().create_time()


class TraceWriter:
    """Events to ``path`` (else stdout) and, with ``copy_dir``, the same lines to
    ``copy_dir/server.jsonl`` or ``copy_dir/source-N.jsonl`` too: the layout of an arm's
    folder (on Kubernetes the chart's ``traces.volume``, so no trace depends on pod logs)."""

    def __init__(self, path: str | None, *, run: str, role: str, source: int | None = None, copy_dir: str = ""):
        self.run, self.role, self.source = run, role, source
        self._own = path is not None
        self._out: IO[str] = open(path, "a", buffering=1, encoding="utf-8") if path else sys.stdout
        self._copy: IO[str] | None = None
        if copy_dir:
            name = "server.jsonl" if role == "server" else f"{role}-{source}.jsonl"
            self._copy = open(Path(copy_dir) / name, "a", buffering=1, encoding="utf-8")

    def event(self, kind: str, **fields) -> dict:
        """Write one event: ``kind`` must be declared for this role (events.UndeclaredEvent if not)."""
        events.check(self.role, kind)
        record = {"t": round(time.time(), 6), "run": self.run, "role": self.role,
                  "source": self.source, "event": kind, **fields}
        line = json.dumps(record, separators=(",", ":")) + "\n"
        self._out.write(line)
        self._out.flush()
        if self._copy is not None:
            self._copy.write(line)
            self._copy.flush()
        return record

    def close(self) -> None:
        if self._own:
            self._out.close()
        if self._copy is not None:
            self._copy.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
