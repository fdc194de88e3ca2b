"""Reading trace files (JSON lines) back."""
from __future__ import annotations

import json
from pathlib import Path


class TraceError(ValueError):
    pass


def read_events(path: Path, *, strict: bool = True, start: int = 0) -> list[dict]:
    """Events of one trace file. Non-strict skips a line still being written."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        if strict:
            raise TraceError(f"trace {path} is missing") from None
        return []
    events = []
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
            if not isinstance(event, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            if strict:
                raise TraceError(f"{path}: line {number} is not a JSON event ({exc})") from None
            continue
        events.append(event)
    return events


class Tail:
    """New complete lines of a growing trace file, on each call."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def new_events(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data.rfind(b"\n") + 1  # leave a partly written line for next time
        self.offset += complete
        events = []
        for line in data[:complete].splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events
