"""The link options on Kubernetes: what a cluster can enforce, and the chart values
that carry it.

A cluster shapes a pod's traffic only through the pod annotations
``kubernetes.io/egress-bandwidth`` (what the pod sends: a source's uplink) and
``kubernetes.io/ingress-bandwidth`` (what it receives: its downlink), which the CNI
bandwidth plugin (a token bucket on the pod's interface, set up once when the pod's
network is made) or Cilium's bandwidth manager enforce. So ``--bandwidth`` (and a
``--link`` profile's rate) become the chart's ``link`` values, one rate per source pod,
cycled by source index as locally. What needs more than a fixed rate per pod is refused
with a one-line reason: ``--medium shared`` (one channel every source contends for: each
pod is shaped on its own, on its own node), ``--delay`` and ``--loss`` (the plugin shapes
rate only; netem in a pod needs NET_ADMIN, which the chart's restricted Pod Security
Standard drops), ``--link-trace`` (a rate that changes during the run). ``--sweep-bandwidth``
is fine: it is a sweep whose trials (an arm at a rate each) run one after another, each
with its ``--bandwidth`` at that rate.

This module reads the spec's values only (``spec.bandwidth``, ``spec.link``, ...): it
does not import ``testbed.spec``, so ``spec.validate`` can call ``link_values``.
"""
from __future__ import annotations

from ..links.profiles import Profile
from ..links.profiles import profile as find_profile
from ..links.values import Rate, cycle, parse_delay, parse_loss, parse_updown, per_source

PLUGIN = "the CNI bandwidth plugin"
ANNOTATIONS = ("kubernetes.io/egress-bandwidth", "kubernetes.io/ingress-bandwidth")
LOCAL = "use the local backend, which emulates it"


def link_values(spec) -> dict:
    """The chart's ``link`` block for ``spec``: ``{"bandwidth": RATE, "perSource": []}``
    when every source gets the same link, ``{"bandwidth": "", "perSource": [RATE, ...]}``
    (the chart cycles it by source index) when they differ; RATE is ``UP`` or
    ``UP/DOWN`` in ``--bandwidth``'s syntax, spelled exactly (``5950kbit``). Raises
    ValueError, one line saying why, for a link setting a cluster cannot enforce."""
    refuse_unenforceable(spec)
    rates = source_rates(spec)
    if not rates:
        return {"bandwidth": "", "perSource": []}
    texts = [rate_text(rate) for rate in rates]
    if len(set(cycle(texts, spec.sources))) == 1:
        return {"bandwidth": texts[0], "perSource": []}
    return {"bandwidth": "", "perSource": texts[:spec.sources]}  # source i: texts[i % len]


def link_warnings(spec) -> list[str]:
    """What of ``spec``'s link a cluster runs without, or may: a profile's delay (not
    emulated), and that the rates hold only where the cluster's CNI enforces the
    annotations. One line each, for the caller to print as warnings."""
    warnings = []
    chosen = _profile(spec)
    if chosen is not None and not spec.delay and parse_delay(chosen.delay, f"--link {chosen.name}") > 0:
        warnings.append(f"--link {chosen.name}: its {chosen.delay} one-way delay is not emulated on Kubernetes "
                        f"({PLUGIN} shapes rate only); the pods see the cluster network's own delay")
    if source_rates(spec):
        warnings.append(f"the link rates are the source pods' {' and '.join(ANNOTATIONS)} annotations: only a "
                        "cluster whose CNI chain has the bandwidth plugin (or Cilium's bandwidth manager) enforces "
                        "them, "
                        "others ignore them without a word (README: Links on Kubernetes)")
    return warnings


def source_rates(spec) -> list[Rate]:
    """``--bandwidth`` as given (one Rate per item, not cycled), else the ``--link``
    profile's rate; [] when neither (no shaping)."""
    chosen = _profile(spec)
    text = spec.bandwidth or (chosen.bandwidth if chosen is not None else "")
    return per_source(text, parse_updown, "--bandwidth" if spec.bandwidth else f"--link {spec.link}")


def rate_text(rate: Rate) -> str:
    """A Rate in ``--bandwidth``'s syntax, exactly: ``5mbit``, ``5950kbit/5030kbit``."""
    up, down = exact_rate(rate.up), exact_rate(rate.down)
    return up if up == down else f"{up}/{down}"


def exact_rate(bps: int) -> str:
    """5_000_000 -> '5mbit', 5_950_000 -> '5950kbit': the largest unit that is exact."""
    for unit, scale in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bps % scale == 0:
            return f"{bps // scale}{unit}"
    return f"{bps}bit"


def refuse_unenforceable(spec) -> None:
    """ValueError (one line: the setting, why a cluster cannot enforce it, what to do)
    for a link setting beyond a fixed rate per source pod."""
    if spec.link_trace:
        raise ValueError(f"--link-trace cannot be enforced on Kubernetes: {PLUGIN} sets a pod's rate once, when "
                         f"its network is set up, so the rate cannot follow a trace during the run; {LOCAL} "
                         "(or --sweep-bandwidth for a few fixed rates)")
    why_netem = (f"{PLUGIN} shapes rate only, and netem in a source pod would need NET_ADMIN, which the chart's "
                 "restricted Pod Security Standard drops")
    if any(ms > 0 for ms in per_source(spec.delay, parse_delay, "--delay")):
        raise ValueError(f"--delay cannot be enforced on Kubernetes: {why_netem}; {LOCAL}")
    if any(p > 0 for p in per_source(spec.loss, parse_loss, "--loss")):
        raise ValueError(f"--loss cannot be enforced on Kubernetes: {why_netem}; {LOCAL}")
    why_shared = (f"{PLUGIN} shapes each source pod on its own (on its own node), so there is no one channel for "
                  "the sources to contend for")
    if spec.medium == "shared":
        raise ValueError(f"--medium shared cannot be enforced on Kubernetes: {why_shared}; use --medium dedicated "
                         f"(each source pod at its own --bandwidth), or {LOCAL}")
    chosen = _profile(spec)
    if chosen is not None and chosen.medium == "shared" and not spec.medium:
        rate = spec.bandwidth or chosen.bandwidth
        raise ValueError(f"--link {chosen.name} is a shared medium (every source contends for one {rate} channel), "
                         f"which Kubernetes cannot enforce: {why_shared}; add --medium dedicated to give each source "
                         f"pod {rate} of its own, or {LOCAL}")


def _profile(spec) -> Profile | None:
    return find_profile(spec.link) if spec.link else None
