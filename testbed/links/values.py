"""The link options' values as text: rates (``5mbit``, ``2mbit/20mbit``), delays
(``20ms``), loss (``1%``) and per-source lists (``2mbit,5mbit``: one value per
source, cycled when shorter than the fleet). Every error is one line naming the
option and the value."""
from __future__ import annotations

import re
from dataclasses import dataclass

# tc's units: bit/s multiples of 1000 (tc-htb(8): kbit, mbit, gbit; bps = bytes/s)
RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9,
              "bps": 8, "kbps": 8 * 10**3, "mbps": 8 * 10**6, "gbps": 8 * 10**9}
MIN_RATE_BPS = 8_000        # below 1 kB/s a 1500-byte packet takes longer than any reply timeout
MAX_RATE_BPS = 100 * 10**9
DELAY_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}

_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-z]+)\s*$", re.IGNORECASE)


def _quantity(text: str, units: dict, what: str, example: str, option: str) -> float:
    """A number and a unit (``5mbit``, ``20ms``) in the unit the table's values scale to."""
    match = _QUANTITY.match(str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in units:
        raise ValueError(f"{option}: {text!r} is not a {what}; write a number and a unit, e.g. {example} "
                         f"(units: {', '.join(units)})")
    return float(match.group(1)) * units[unit]


def parse_rate(text: str, option: str = "--bandwidth") -> int:
    """``5mbit`` -> 5_000_000 (bit/s)."""
    bps = round(_quantity(text, RATE_UNITS, "rate", "5mbit", option))
    if not MIN_RATE_BPS <= bps <= MAX_RATE_BPS:
        raise ValueError(f"{option}: {text} is outside {format_rate(MIN_RATE_BPS)}..{format_rate(MAX_RATE_BPS)}")
    return bps


def format_rate(bps: float | None) -> str:
    """5_000_000 -> '5mbit' (the shortest exact tc spelling, else 3 significant digits)."""
    if bps is None:
        return "unshaped"
    for unit, scale in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bps >= scale:
            value = bps / scale
            return f"{value:.3g}{unit}" if value != int(value) else f"{int(value)}{unit}"
    return f"{int(bps)}bit"


@dataclass(frozen=True)
class Rate:
    """One link's rate each way, in bit/s (None: that direction is not shaped)."""
    up: int | None
    down: int | None

    @property
    def symmetric(self) -> bool:
        return self.up == self.down

    def __str__(self) -> str:
        return format_rate(self.up) if self.symmetric else f"{format_rate(self.up)}/{format_rate(self.down)}"


def parse_updown(text: str, option: str = "--bandwidth") -> Rate:
    """``5mbit`` (both ways) or ``UP/DOWN`` (``2mbit/20mbit``)."""
    parts = str(text).split("/")
    if len(parts) == 1:
        rate = parse_rate(parts[0], option)
        return Rate(rate, rate)
    if len(parts) == 2:
        return Rate(parse_rate(parts[0], option), parse_rate(parts[1], option))
    raise ValueError(f"{option}: {text!r} is not RATE or UP/DOWN (e.g. 5mbit or 2mbit/20mbit)")


def parse_delay(text: str, option: str = "--delay") -> float:
    """``20ms`` / ``0.5s`` / ``300us`` -> milliseconds (one way, each direction)."""
    ms = _quantity(text, DELAY_UNITS, "delay", "20ms", option)
    if ms > 10_000:
        raise ValueError(f"{option}: {text} is more than 10 s")
    return ms


def parse_loss(text: str, option: str = "--loss") -> float:
    """``1%`` or ``0.01`` -> a probability in [0, 1)."""
    value = str(text).strip()
    try:
        loss = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise ValueError(f"{option}: {text!r} is not a loss rate; write e.g. 1% or 0.01") from None
    if not 0 <= loss < 1:
        raise ValueError(f"{option}: {text} must be at least 0 and below 100%")
    return loss


def per_source(text: str, parse, option: str) -> list:
    """A comma-separated list, each parsed (an empty text: [])."""
    if text is None or str(text).strip() == "":
        return []
    items = [item.strip() for item in str(text).split(",")]
    if any(not item for item in items):
        raise ValueError(f"{option}: {text!r} has an empty item")
    return [parse(item, option) for item in items]


def cycle(values: list, count: int) -> list:
    """One value per source: ``values`` repeated when shorter than ``count``."""
    return [values[i % len(values)] for i in range(count)] if values else [None] * count


def check_list(parse, option: str):
    """A validator for an Option: the list must parse."""
    def validate(text) -> None:
        per_source(text, parse, option)
    return validate
