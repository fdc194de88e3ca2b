"""The live view of an arm on a terminal (rich), refreshed in place: a header (the arm,
its sources, batches and epochs, the time since it started), a row per source (a bar of
its batches done of ``batches x epochs``, the epoch, samples/s, MB sent, the latest loss
and test accuracy, its state: a lost source in red with its cause), and a footer with
the arm's bytes, the mean samples/s, the server's state and busy fraction. What the
figures mean: testbed/armview.py, whose :class:`~testbed.armview.ArmView` this shows.

With more sources than the terminal has rows for (at most ``MAX_ROWS``), the failed
ones and the slowest of the others keep a row of their own (in source order) and the
rest share one summary row: how many, their batches together (and min / median / max),
their mean samples/s and accuracy, their MB sent, their states counted. Only this module
imports rich: without it, the lines display serves (testbed/progress.py)."""
from __future__ import annotations

import time

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .armview import FAILED, ArmView, SourceView

REFRESH_S = 0.5      # at most this often (update() is called every POLL_S)
MAX_ROWS = 32        # source rows at most, the summary row included
RESERVED_LINES = 9   # the header, the table's head and rules, the footer, the prompt's margin
BAR_WIDTH = 24

STATE_STYLE = {"waiting": "dim", "starting": "dim", "connected": "cyan", "pre-training": "cyan",
               "training": "yellow", "evaluating": "magenta", "bye": "green", "done": "green"}
STATE_STYLE.update({state: "bold red" for state in FAILED})


def visible(arm: ArmView, rows: int) -> tuple[list[SourceView], list[SourceView]]:
    """The sources with a row of their own (in source order) and the rest (one summary
    row): all of them when they fit in ``rows``; else the failed ones first, then the
    unfinished ones with the fewest batches done, then the others, ``rows - 1`` in all."""
    sources = arm.sources
    if len(sources) <= rows:
        return list(sources), []
    keep = max(1, rows - 1)
    ranked = sorted(sources, key=lambda s: (not s.failed, s.finished, s.batches, s.index))
    shown = sorted(ranked[:keep], key=lambda s: s.index)
    return shown, sorted(ranked[keep:], key=lambda s: s.index)


def render(arm: ArmView, *, elapsed_s: float | None = None, rows: int = MAX_ROWS) -> RenderableType:
    """One frame of the view of ``arm``: at most ``rows`` source rows."""
    shown, rest = visible(arm, rows)
    table = Table(box=None, pad_edge=False, padding=(0, 1), header_style="bold")
    table.add_column("source", justify="right")
    table.add_column("batches", justify="left", no_wrap=True)
    table.add_column("", justify="right", no_wrap=True)
    table.add_column("epoch", justify="right")
    table.add_column("samples/s", justify="right")
    table.add_column("MB sent", justify="right")
    table.add_column("loss", justify="right")
    table.add_column("acc", justify="right")
    table.add_column("state", justify="left", overflow="fold")
    for s in shown:
        lost = s.failed
        bar = progress_bar(s.batches, arm.total, "red" if lost else "green" if s.batches >= arm.total else "yellow")
        state = Text(s.state, style=STATE_STYLE.get(s.state, ""))
        if s.cause and s.failed:
            state.append(f": {s.cause}", style="red")
        table.add_row(str(s.index), bar, f"{s.batches}/{arm.total}",
                      "-" if s.epoch is None else f"{s.epoch + 1}/{arm.epochs}",
                      _num(s.samples_per_s, "{:.1f}"), f"{s.mb_sent:.2f}", _num(s.loss, "{:.3f}"),
                      _num(s.accuracy, "{:.1%}"), state)
    if rest:
        done = sum(min(s.batches, arm.total) for s in rest)
        rates = [s.samples_per_s for s in rest if s.samples_per_s is not None]
        accuracies = [s.accuracy for s in rest if s.accuracy is not None]
        counts = {}
        for s in rest:
            counts[s.state] = counts.get(s.state, 0) + 1
        table.add_row(Text(f"+{len(rest)}", style="bold"),
                      progress_bar(done, arm.total * len(rest), "green" if done >= arm.total * len(rest) else "yellow"),
                      f"{done}/{arm.total * len(rest)}", "", _num(sum(rates) / len(rates) if rates else None, "{:.1f}"),
                      f"{sum(s.mb_sent for s in rest):.2f}", "",
                      _num(sum(accuracies) / len(accuracies) if accuracies else None, "{:.1%}"),
                      Text(", ".join(f"{n} {state}" for state, n in counts.items())
                           + f"; batches {arm.batches_summary(rest)}"),
                      style="dim")
    return Group(header(arm, elapsed_s), table, footer(arm))


def progress_bar(done: int, total: int, style: str, width: int = BAR_WIDTH) -> Text:
    """``done`` of ``total`` as a bar of ``width`` cells: full blocks done, light shade to go
    (readable without colours too: a log, a capture of the pane)."""
    filled = min(width, round(width * done / total)) if total > 0 else 0
    return Text.assemble(("█" * filled, style), ("░" * (width - filled), "dim"))


def header(arm: ArmView, elapsed_s: float | None) -> Text:
    epochs = f"{arm.epochs} epoch{'s' if arm.epochs != 1 else ''}"
    text = Text.assemble(("arm ", "bold"), (arm.module, "bold cyan"),
                         f"  {len(arm.sources)} sources, {arm.batches} batches x {epochs}")
    if elapsed_s is not None:
        text.append(f"  {_clock(elapsed_s)}", style="dim")
    return text


def footer(arm: ArmView) -> Text:
    server = arm.server
    busy = server.busy
    counts = arm.counts()
    lost = sum(n for state, n in counts.items() if state in FAILED)
    text = Text.assemble(("sent ", "dim"), f"{arm.mb_sent:.3f} MB", ("  received ", "dim"), f"{arm.mb_received:.3f} MB",
                         ("  batches ", "dim"), f"{arm.batches_done}/{arm.total * len(arm.sources)}",
                         ("  samples/s per source ", "dim"), _num(arm.samples_per_s, "{:.1f}"),
                         ("  server ", "dim"), server.state,
                         f" ({max(0, server.hellos - server.byes - lost)} connected)" if server.state == "serving" else "",
                         ("  busy ", "dim"), _num(busy, "{:.0%}"))
    if server.errors:
        text.append(f"  {server.errors} requests refused", style="red")
    if lost:
        text.append(f"  lost or failed: {lost}", style="bold red")
    return text


def console_for(stream=None) -> Console:
    """The console of the view: ``stream``'s (default: stdout's, as it is when written to)."""
    return Console() if stream is None else Console(file=stream)


class LiveView:
    """``arm`` shown in place on ``console`` (default: stdout's) from the first refresh to
    ``stop()``, at most every ``refresh_s``. While it shows, what the program prints
    (warnings included) appears above it."""

    def __init__(self, arm: ArmView, console: Console | None = None, refresh_s: float = REFRESH_S):
        self.arm, self.refresh_s = arm, refresh_s
        self.console = console or Console()
        self.started = time.monotonic()
        self._live: Live | None = None
        self._last = 0.0

    def rows(self) -> int:
        return max(4, min(MAX_ROWS, self.console.size.height - RESERVED_LINES))

    def frame(self) -> RenderableType:
        return render(self.arm, elapsed_s=time.monotonic() - self.started, rows=self.rows())

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._live is None:
            self._live = Live(self.frame(), console=self.console, auto_refresh=False, transient=False)
            self._live.start()
            self._last = now
            return
        if force or now - self._last >= self.refresh_s:
            self._last = now
            self._live.update(self.frame(), refresh=True)

    def log(self, text: str) -> None:
        """A line above the view (a source lost)."""
        self.refresh(force=True)
        self._live.console.print(Text(text, style="bold red"))

    def stop(self) -> None:
        if self._live is not None:
            self.refresh(force=True)
            self._live.stop()
            self._live = None


def _num(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"
