"""Trace events: one JSON object per line, with time, run id, role and source id.

Locally each process appends to its own file; with no file (as in a pod) the events
go to stdout, where the Kubernetes backend collects them. One schema serves both.
"""
from __future__ import annotations

import json
import sys
import time
from typing import IO


class TraceWriter:
    def __init__(self, path: str | None, *, run: str, role: str, source: int | None = None):
        self.run, self.role, self.source = run, role, source
        self._own = path is not None
        self._out: IO[str] = open(path, "a", buffering=1, encoding="utf-8") if path else sys.stdout

    def event(self, kind: str, **fields) -> dict:
        record = {"t": round(time.time(), 6), "run": self.run, "role": self.role,
                  "source": self.source, "event": kind, **fields}
        self._out.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._out.flush()
        return record

    def close(self) -> None:
        if self._own:
            self._out.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
