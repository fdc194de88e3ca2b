"""What each source's link is, from the run's options (``--link``, ``--bandwidth``,
``--medium``, ``--delay``, ``--loss``, ``--link-trace``): a :class:`LinkPlan`, or None
when the run asks for no emulated link (the sources then reach the server on loopback).

Media:

- ``dedicated``: one link per source, full duplex (switched Ethernet, a cellular
  connection each): the source's uplink is shaped on its own interface, its downlink on
  the hub's port towards it.
- ``shared``: one channel every source contends for (Wi-Fi's air). With one rate, both
  directions of every source share it (half duplex: Wi-Fi's airtime is one for up and
  down); with UP/DOWN, all uplinks share one channel and all downlinks another.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import BadInput
from .profiles import profile
from .schedule import Schedule, read_schedule
from .values import Rate, cycle, parse_delay, parse_loss, parse_updown, per_source


class LinkError(BadInput):
    """A link setting that cannot be honoured; the message names it and why."""


@dataclass(frozen=True)
class SourceLink:
    source: int
    up: int | None       # bit/s; None: not shaped
    down: int | None
    delay_ms: float = 0.0
    loss: float = 0.0


@dataclass(frozen=True)
class LinkPlan:
    medium: str                         # dedicated | shared
    sources: tuple[SourceLink, ...]
    channel: Rate | None = None         # the shared medium's rate(s)
    trace_up: Schedule | None = None
    trace_down: Schedule | None = None
    profile: str | None = None
    profile_delay_ms: float = 0.0       # a profile's delay (not an explicit --delay)
    split_directions: bool = False      # the rate was written UP/DOWN (or two trace files)

    @property
    def duplex(self) -> str:
        """A shared medium with one rate (one trace) is half duplex; UP/DOWN gives two channels."""
        return "half" if self.medium == "shared" and not self.split_directions else "full"

    def delay_ms(self, source: SourceLink, netem: bool) -> float:
        """The one-way delay a source's link gets: ``--delay``, else the profile's where the
        kernel can delay (netem), else none."""
        return source.delay_ms or (self.profile_delay_ms if netem else 0.0)

    @property
    def needs_netem(self) -> bool:
        return any(s.delay_ms or s.loss for s in self.sources)

    @property
    def label(self) -> str:
        """How figures name the link: ``5mbit shared``, ``2mbit/20mbit dedicated``, ``trace X``."""
        if self.trace_up is not None:
            names = self.trace_up.name if self.trace_down is self.trace_up else \
                f"{self.trace_up.name}/{self.trace_down.name}"
            rate = f"trace {names}"
        elif self.medium == "shared":
            rate = str(self.channel)
        else:
            rates = sorted({str(Rate(s.up, s.down)) for s in self.sources})
            rate = ",".join(rates)
        delays = sorted({s.delay_ms for s in self.sources if s.delay_ms})
        delay = f" {','.join(f'{d:g}' for d in delays)}ms" if delays else ""
        return (f"{self.profile} " if self.profile else "") + f"{rate} {self.medium}{delay}"

    def slowest_bps(self) -> float:
        """The lowest rate one source's message may get: its own slowest direction, a shared
        channel's rate over the sources contending for it, a trace's 10th percentile of
        1-second rates."""
        def low(trace, fixed):
            return trace.percentile_bps(0.1) if trace is not None else fixed
        if self.medium == "shared":
            rate = min(low(self.trace_up, self.channel.up), low(self.trace_down, self.channel.down))
            return rate / len(self.sources)
        return min(min(low(self.trace_up, s.up), low(self.trace_down, s.down)) for s in self.sources)

    def heartbeat_timeout_s(self, largest_message_bytes: int, floor_s: float) -> float:
        """Long enough for a heartbeat queued behind the largest message at the slowest rate
        (four times that message's time on the wire), never below ``floor_s``, at most 10 min."""
        wire_s = largest_message_bytes * 8 / max(1.0, self.slowest_bps())
        return round(min(600.0, max(floor_s, 4 * wire_s)), 1)

    def describe(self) -> dict:
        """The ``link`` event's facts (declared in workloads/events.py)."""
        return {"medium": self.medium, "duplex": self.duplex, "profile": self.profile, "label": self.label,
                "channel": None if self.channel is None else {"up_bps": self.channel.up, "down_bps": self.channel.down},
                "trace_up": self.trace_up.name if self.trace_up else None,
                "trace_down": self.trace_down.name if self.trace_down else None,
                "profile_delay_ms": self.profile_delay_ms or None,
                "sources": [{"source": s.source, "up_bps": s.up, "down_bps": s.down, "delay_ms": s.delay_ms,
                             "loss": s.loss, "trace_up": self.trace_up.name if self.trace_up else None,
                             "trace_down": self.trace_down.name if self.trace_down else None}
                            for s in self.sources]}


def wants_link(values: dict) -> bool:
    return any(values.get(k) for k in ("link", "bandwidth", "delay", "loss", "link_trace")) or \
        bool(values.get("medium"))


def plan_links(values: dict, sources: int) -> LinkPlan | None:
    """The plan for a run's option values (a RunSpec's ``values``); LinkError if the
    settings contradict each other."""
    if not wants_link(values):
        return None
    chosen = profile(values["link"]) if values.get("link") else None
    medium = values.get("medium") or (chosen.medium if chosen else "dedicated")
    rates = per_source(values.get("bandwidth") or (chosen.bandwidth if chosen else ""), parse_updown, "--bandwidth")
    delays = per_source(values.get("delay") or "", parse_delay, "--delay")
    losses = per_source(values.get("loss") or "", parse_loss, "--loss")
    profile_delay = parse_delay(chosen.delay, "--link") if chosen and not values.get("delay") else 0.0
    trace_up = trace_down = None
    if values.get("link_trace"):
        files = [f.strip() for f in str(values["link_trace"]).split(",")]
        if len(files) > 2 or not all(files):
            raise LinkError(f"--link-trace takes UP_FILE or UP_FILE,DOWN_FILE, got {values['link_trace']!r}")
        trace_up = read_schedule(files[0])
        trace_down = read_schedule(files[1]) if len(files) == 2 else trace_up
        if values.get("bandwidth"):
            raise LinkError("--link-trace and --bandwidth both set the link's rate: give one of them")
        rates = [Rate(trace_up.rate_at(0), trace_down.rate_at(0))]
    rate_text = values.get("bandwidth") or (chosen.bandwidth if chosen else "")
    split = "/" in rate_text or (trace_up is not None and trace_down is not trace_up)
    if not rates:
        raise LinkError("a link needs a rate: give --bandwidth, --link PROFILE or --link-trace "
                        "(delay and loss alone would leave the rate unshaped)")
    channel = None
    if medium == "shared":
        if len(rates) > 1 or len(delays) > 1 or len(losses) > 1:
            raise LinkError("--medium shared has one channel for every source: give one --bandwidth, --delay and "
                            "--loss (lists give one value per source on --medium dedicated)")
        channel = rates[0]
    per = [SourceLink(i, None if channel else r.up, None if channel else r.down, d or 0.0, lo or 0.0)
           for i, (r, d, lo) in enumerate(zip(cycle(rates, sources), cycle(delays, sources), cycle(losses, sources)))]
    return LinkPlan(medium, tuple(per), channel, trace_up, trace_down, chosen.name if chosen else None, profile_delay,
                    split)
