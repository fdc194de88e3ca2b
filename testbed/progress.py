"""What an arm is doing while it runs, on the terminal: the one model of its progress
(testbed/armview.py: counters per source and for the server, updated from trace events
by a feed) shown by one of two displays, as :func:`display_mode` chooses:

- on a terminal, a view refreshed in place (testbed/liveview.py, with rich): a bar per
  source and the arm's totals;
- else (the output piped to a file, TERM=dumb, rich missing) the lines this module
  always printed: a line per source and epoch (its loss and test accuracy), a line per
  source done, lost or failed, and every ``STATUS_EVERY_S`` seconds the batches done per
  source, with the arm's bytes and the server's busy fraction (unless nothing changed);
  a last one at the end.

``--quiet``: neither. The local and in-process backends feed it from the arm folder's
trace files, the Kubernetes backend from the streamed pod logs."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .armview import ArmView, Feed, TraceFeed

STATUS_EVERY_S = 5.0   # the lines display: the batches done per source, this often

LIVE, LINES, SILENT = "live", "lines", "silent"  # the displays (display_mode)


def display_mode(say=print, stream=None) -> str:
    """Which display an arm gets: ``silent`` when ``say`` is not ``print`` (``--quiet``, or a
    caller that collects what is said); ``live`` when ``stream`` (stdout) is a terminal
    that can move its cursor (not TERM=dumb) and rich is installed; else ``lines``."""
    if say is not print:
        return SILENT
    stream = sys.stdout if stream is None else stream
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a file
        terminal = False
    if not terminal or os.environ.get("TERM", "") in ("dumb", "unknown"):
        return LINES
    try:
        import rich  # noqa: F401
    except ImportError:
        return LINES
    return LIVE


class Progress:
    """One arm's progress: the model (:class:`ArmView`) fed by ``feed`` (default: the
    arm folder's trace files), shown by the lines display (``write``) or, with
    ``display="live"``, refreshed in place on ``stream`` (default: stdout; testbed/liveview.py).
    ``update()`` reads what is new; ``close()`` reads the rest and ends the display
    (the live one leaves its last frame; the lines one prints a last status line)."""

    def __init__(self, directory: Path, module: str, sources: int, batches: int, epochs: int, write=print, *,
                 feed: Feed | None = None, display: str = LINES, stream=None):
        self.arm = ArmView(module, sources, batches, epochs)
        self.feed = feed or TraceFeed(directory, sources)
        self.write = write
        self.live = None
        if display == LIVE:
            from .liveview import LiveView, console_for
            self.live = LiveView(self.arm, console=console_for(stream))
        self._last_status = time.monotonic()
        self._said = ""  # the last status line written
        self._closed = False

    def update(self) -> None:
        notes = [note for role, index, event in self.feed() for note in self.arm.apply(role, index, event)]
        if self.live is not None:
            for note in notes:
                if note.alert:
                    self.live.log(note.text.strip())
            self.live.refresh()
            return
        for note in notes:
            self.write(note.text)
        if time.monotonic() - self._last_status >= STATUS_EVERY_S:
            self._last_status = time.monotonic()
            self._status()

    def _status(self) -> None:
        """The status line, unless it would say again what the last one said."""
        line = self.arm.status_line()
        if line != self._said:
            self._said = line
            self.write(line)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.update()
        finally:
            if self.live is not None:
                self.live.stop()
            else:
                self._status()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_progress(directory: Path, module: str, spec, say=print, *, feed: Feed | None = None,
                  stream=None) -> Progress | None:
    """The progress of one arm of ``spec`` as :func:`display_mode` chooses it (None: no display)."""
    mode = display_mode(say, stream)
    if mode == SILENT:
        return None
    return Progress(directory, module, spec.sources, spec.batches, spec.epochs, write=say, feed=feed, display=mode,
                    stream=stream)


