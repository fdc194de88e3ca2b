"""Named link profiles (``--link NAME``): the rate each way, the medium and the
one-way delay of links that the papers' devices have, each with where its numbers
come from. A profile is only a default: ``--bandwidth``, ``--medium`` and ``--delay``
given beside it win. Where this kernel has no netem, a profile's delay cannot be
emulated: the run says so and records it (an explicit ``--delay`` is refused)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    bandwidth: str      # RATE or UP/DOWN, in --bandwidth's syntax
    medium: str         # "dedicated" or "shared"
    delay: str          # one way, in --delay's syntax
    about: str          # what the link is
    source: str         # where the numbers come from


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("ethernet", "1gbit", "dedicated", "0.335ms",
            "switched Gigabit Ethernet, full duplex, one port per device",
            "1000BASE-T line rate (IEEE 802.3ab); delay: half the 0.670 ms round trip paper 002 measured between "
            "its two Ethernet nodes (section 4.1)"),
    Profile("fast-ethernet", "100mbit", "dedicated", "0.335ms",
            "switched Fast Ethernet, full duplex, one port per device",
            "100BASE-TX line rate (IEEE 802.3u); delay as ethernet"),
    Profile("wifi", "65mbit", "shared", "2ms",
            "Wi-Fi 4 (802.11n, 2.4 GHz, 20 MHz, one spatial stream): every device shares the air, both directions",
            "72.2 Mbit/s PHY rate at MCS 7 with short guard interval (IEEE 802.11n-2009) x ~0.9 for MAC framing "
            "with A-MPDU aggregation; delay: a typical uncontended 802.11n access"),
    Profile("wifi-g", "22mbit", "shared", "2ms",
            "Wi-Fi 3 (802.11g): every device shares the air, both directions",
            "54 Mbit/s PHY rate (IEEE 802.11g-2003); ~22 Mbit/s is the TCP goodput 802.11g reaches without "
            "aggregation"),
    Profile("lte", "5.95mbit/5.03mbit", "dedicated", "20ms",
            "LTE, one cell connection per device (the uplink first)",
            "mean rates of the Verizon LTE traces (Winstein, Sivaraman, Balakrishnan, NSDI 2013; mahimahi "
            "traces/Verizon-LTE-short.up/.down); delay: LTE's ~40 ms round trip to a nearby server"),
    Profile("3g", "0.94mbit/2.02mbit", "dedicated", "50ms",
            "UMTS/HSPA, one connection per device (the uplink first)",
            "mean rates of the T-Mobile UMTS traces (Winstein et al., NSDI 2013; mahimahi "
            "traces/TMobile-UMTS-driving.up/.down); delay: UMTS's ~100 ms round trip"),
)}


def profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown --link {name!r}; known: {', '.join(PROFILES)}") from None
