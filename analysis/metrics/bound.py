"""What bound an arm's throughput: the rule, its thresholds and its names."""
from __future__ import annotations

import statistics

# bound_by's rule (see there)
CAP_REACHED = 0.9   # sources that got at least this share of their cap while computing got their cap
WAIT_MOST = 0.5     # sources that waited for replies this share of each step or more wait "most of each step"
SERVER_BUSY = 0.8   # a server busy this share of its serving time or more is saturated
LINK_FULL = 0.8     # sources running at this share of what the link allows them or more filled it

HOST = "host CPU (oversubscribed)"
CAP = "sources' CPU cap"
SERVER = "the server"
ROUND_TRIP = "the round trip"
UNCAPPED = "the sources' CPU (uncapped)"
NETWORK = "the network"   # named with the link's label: "the network (5mbit shared)"


def bound_by(cpu_over_cap, reply_wait, server_busy, link_use=None, link=None) -> tuple[str | None, str]:
    """What bound an arm's throughput: (name, one sentence with the numbers).

    From the sources' CPU share over cap while computing (C, median over sources), their
    share of each step spent waiting for replies (W, median), the server's busy
    fraction (B) and, with an emulated link, its use (L: link_use, the sources' samples/s
    over what the link allows them, mean over sources); the first rule that holds names it:

    0. L >= LINK_FULL (80%) and W >= WAIT_MOST (50%): "the network (<link label>)" — the
       sources waited for replies most of each step and ran at nearly what the link allows
       them: the link's rate bound them, whatever the CPU or the server did. Without a
       link (L None) this rule never holds, and the rules below are as they were.
    1. C < CAP_REACHED (90%): "host CPU (oversubscribed)" — the sources did not get their
       cap even while computing, so the machine had fewer free cores than the caps (and
       the server) ask for; whatever they waited for shares that cause.
    2. W < WAIT_MOST (50%): "sources' CPU cap" — they got their cap and spent most of each
       step computing.
    3. B >= SERVER_BUSY (80%): "the server" — they waited for replies most of each step and
       the server was busy nearly all the time.
    4. otherwise "the round trip" — they waited most of each step, the server was often
       idle (or its busy time is not traced): the time went between them (link, queueing,
       message handling); with a link, its use is in the sentence.
    Without a cap (C unknown, --cap-method none), rules 1 and 2 become: W < 50%: "the
    sources' CPU (uncapped)". None when W is not known (traces without wait_s).
    """
    over = [v for v in cpu_over_cap if v is not None]
    wait = [v for v in reply_wait if v is not None]
    if not wait:
        return None, "not known: the traces hold no CPU time or reply wait per batch (cpu_s, wait_s)"
    w = statistics.median(wait)
    busy = "not traced" if server_busy is None else f"{server_busy:.0%}"
    if link_use is not None and link_use >= LINK_FULL and w >= WAIT_MOST:
        return (f"{NETWORK} ({link})" if link else NETWORK), (
            f"the sources ran at {link_use:.0%} of the samples/s the link ({link or 'emulated'}) allows them "
            f"(at least {LINK_FULL:.0%}: full) and waited for replies {w:.0%} of each step (median); the server "
            f"was busy {busy} of its training window")
    if not over:  # no cap to judge against (--cap-method none): only the waits tell
        if w < WAIT_MOST:
            return UNCAPPED, f"the sources ran uncapped and waited for replies only {w:.0%} of each step"
    else:
        c = statistics.median(over)
    if over and c < CAP_REACHED:
        return HOST, (f"while computing the sources got {c:.0%} of their CPU cap (median; min {min(over):.0%}), "
                      f"below {CAP_REACHED:.0%}, so the host had too few free cores; they waited for replies "
                      f"{w:.0%} of each step and the server was busy {busy}")
    if over and w < WAIT_MOST:
        return CAP, (f"the sources got {c:.0%} of their CPU cap while computing (median; min {min(over):.0%}) "
                     f"and waited for replies only {w:.0%} of each step")
    if server_busy is not None and server_busy >= SERVER_BUSY:
        return SERVER, (f"the sources waited for replies {w:.0%} of each step (median) and the server was busy "
                        f"{busy} of its training window")
    use = "" if link_use is None else f"; they used {link_use:.0%} of what the link ({link}) allows them"
    return ROUND_TRIP, (f"the sources waited for replies {w:.0%} of each step (median) while the server was busy "
                        f"{busy} of the time: the time went between them (link, queueing, message handling){use}")
