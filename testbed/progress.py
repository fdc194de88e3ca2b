"""Progress on the terminal while an arm runs: a line per source and epoch, and a
running count of batches."""
from __future__ import annotations

import time
from pathlib import Path

from workloads import events

from .traces import Tail

STATUS_EVERY_S = 5.0


class Progress:
    def __init__(self, directory: Path, module: str, sources: int, batches: int, epochs: int, write=print):
        self.module, self.total, self.epochs, self.write = module, batches * epochs, epochs, write
        self.tails = [Tail(directory / f"source-{i}.jsonl") for i in range(sources)]
        self.done = [0] * sources
        self.loss = [None] * sources
        self._last_status = time.monotonic()

    def update(self) -> None:
        for i, tail in enumerate(self.tails):
            for event in tail.new_events():
                kind = event.get("event")
                if kind == events.BATCH:
                    self.done[i] += 1
                    self.loss[i] = event.get("loss")
                elif kind == events.EVAL:
                    self.write(f"  [{self.module}] source {i} epoch {event['epoch'] + 1}/{self.epochs}: "
                               f"budget {event.get('budget')}, loss {_fmt(self.loss[i])}, "
                               f"test accuracy {100 * event['accuracy']:.1f}%")
                elif kind == events.END and event.get("status") == "ok":
                    self.write(f"  [{self.module}] source {i} done, CPU share {event.get('cpu_share')}")
        if time.monotonic() - self._last_status >= STATUS_EVERY_S:
            self._last_status = time.monotonic()
            self.write(f"  [{self.module}] batches done per source: "
                       + " ".join(str(d) for d in self.done) + f" (of {self.total})")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"
