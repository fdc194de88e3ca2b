"""The emulated network of one arm, built with Netlink (pyroute2), no ``ip``/``tc`` parsing.

Topology: a hub namespace holds a bridge; the server's namespace and one namespace per
source hang off it by veth pairs (``eth0`` inside, ``srv``/``h<i>`` on the hub). The
server listens on ``SERVER_ADDRESS`` (not loopback); source ``i`` is ``10.77.x.y``.

Shaping (htb: a root class at the link's rate, a FIFO of ``QUEUE_S`` at that rate under it;
a deeper queue only adds delay: a ZeroMQ heartbeat waits behind every queued byte):

- dedicated: a source's uplink on its own ``eth0``, its downlink on the hub's ``h<i>``;
- shared, one rate (half duplex): every hub port's egress is redirected (u32 + mirred)
  to one IFB device whose htb is the channel, so all sources' packets in both
  directions queue for the one medium;
- shared, UP/DOWN: the same with one IFB for the uplinks (``srv``'s egress) and one for
  the downlinks (every ``h<i>``'s egress).

Delay and loss go into a netem leaf where the kernel has netem (``probe_kernel`` says).
Segmentation offload is off on every end (``gso_max_segs`` 1), so the interface counters
count wire packets and every header. A process joins its namespace between fork and exec
(after its cgroup: ``join``). ``remove`` deletes the namespaces, which takes every veth,
IFB and qdisc with them; namespaces left by a testbed that was killed are removed by the
next one (their names carry the owner's pid).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import threading
import uuid
from pathlib import Path

from ..errors import BackendError, warn
from ..joining import CLONE_NEWNET, Join
from .plan import LinkPlan

NETNS_DIR = Path("/run/netns")
SERVER_ADDRESS = "10.77.0.1"
PREFIX = 16
FIRST_SOURCE_HOST = 10
QUEUE_S = 0.2                   # the leaf FIFO holds this long at the link's rate ...
QUEUE_PACKETS = (16, 1000)      # ... within these many packets (1000: Linux's default txqueuelen)
BURST_S = 0.002                 # htb burst: 2 ms at the rate, at least two packets
ETH_P_ALL = 3
CLSACT_EGRESS = "ffff:fff3"
NAME = re.compile(r"^splittest-(\d+)-")
PROBED_QDISCS = ("htb", "tbf", "netem", "pfifo", "bfifo")


class NetworkError(BackendError):
    """The network could not be built; the message says what and why."""


def source_address(index: int) -> str:
    host = FIRST_SOURCE_HOST + index
    return f"10.77.{host // 256}.{host % 256}"


# Namespaces are made, entered and removed in this process, without pyroute2's helper
# processes (it forks one per namespaced socket, and creates a namespace that is missing
# instead of failing): a thread of its own makes a namespace, and a netlink socket is
# opened inside one by entering it for a moment with setns (which moves the calling
# thread only).
_libc = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2
MS_BIND = 4096


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def create_namespace(name: str) -> None:
    """A new network namespace, bound at /run/netns/NAME (as ``ip netns add`` does)."""
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    path = NETNS_DIR / name
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0)
    os.close(fd)
    failure: list[BaseException] = []

    def make() -> None:  # in a thread: unshare moves only this thread into the new namespace
        try:
            _check(_libc.unshare(CLONE_NEWNET), f"cannot create network namespace {name}")
            _check(_libc.mount(b"/proc/thread-self/ns/net", os.fsencode(path), None, MS_BIND, None),
                   f"cannot bind network namespace {name}")
        except BaseException as exc:  # noqa: BLE001 -- handed to the caller
            failure.append(exc)
    thread = threading.Thread(target=make, name=f"netns-{name}")
    thread.start()
    thread.join()
    if failure:
        with contextlib.suppress(OSError):
            path.unlink()
        raise failure[0]


def remove_namespace(name: str) -> None:
    path = os.fsencode(NETNS_DIR / name)
    _libc.umount2(path, MNT_DETACH)
    os.unlink(path)


def list_namespaces() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


@contextlib.contextmanager
def inside(namespace: str):
    """This thread in ``namespace`` for the ``with`` block, then back where it was."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(NETNS_DIR / namespace, os.O_RDONLY)
    try:
        _check(_libc.setns(target, CLONE_NEWNET), f"cannot enter network namespace {namespace}")
        try:
            yield
        finally:
            _check(_libc.setns(home, CLONE_NEWNET), "cannot return to the testbed's network namespace")
    finally:
        os.close(target)
        os.close(home)


def _ipr(namespace: str | None = None):
    """A netlink socket (pyroute2 IPRoute) in ``namespace`` (None: this process's)."""
    from pyroute2 import IPRoute
    if not namespace:
        return IPRoute()
    with inside(namespace):
        return IPRoute()  # the socket is opened here, so it stays in that namespace


def namespace_fd(namespace: str) -> int:
    return os.open(NETNS_DIR / namespace, os.O_RDONLY)


def _index(ip, name: str) -> int:
    found = ip.link_lookup(ifname=name)
    if not found:
        raise NetworkError(f"interface {name} not found")
    return found[0]


def _rate(bps: int) -> str:
    return f"{int(bps)}bit"


def queue_packets(bps: int) -> int:
    low, high = QUEUE_PACKETS
    return max(low, min(high, round(bps * QUEUE_S / 8 / 1500)))


def _burst(bps: int) -> int:
    return max(3200, int(bps * BURST_S / 8))


def _why(exc: BaseException) -> str:
    code = getattr(exc, "code", None) or getattr(exc, "errno", None)
    if code in (errno.EPERM, errno.EACCES):
        return "permission denied (creating network namespaces needs CAP_SYS_ADMIN and CAP_NET_ADMIN: run as root)"
    return os.strerror(code) if isinstance(code, int) and code > 0 else str(exc) or type(exc).__name__


# -- what this kernel and these rights allow -----------------------------------------

def probe_kernel() -> dict:
    """Whether namespaces can be made here and which qdiscs the kernel has, tried in a
    throwaway namespace: ``{"rights": True|"why not", "qdiscs": [...], "netem": bool}``."""
    name = f"splittest-{os.getpid()}-probe{uuid.uuid4().hex[:4]}"
    try:
        create_namespace(name)
    except Exception as exc:  # noqa: BLE001 -- pyroute2 raises several kinds
        return {"rights": _why(exc), "qdiscs": [], "netem": False}
    found = []
    try:
        with _ipr(name) as ip:
            for n, kind in enumerate(PROBED_QDISCS):  # a fresh device each: nothing left over between tries
                ip.link("add", ifname=f"p{n}", kind="veth", peer={"ifname": f"q{n}"})
                with contextlib.suppress(Exception):
                    ip.tc("add", kind, index=_index(ip, f"p{n}"), handle="1:", **_probe_args(kind))
                    found.append(kind)
    except Exception as exc:  # noqa: BLE001 -- no veth, no netlink: no emulated links here
        return {"rights": f"cannot make a veth pair in a network namespace: {_why(exc)}", "qdiscs": [], "netem": False}
    finally:
        with contextlib.suppress(Exception):
            remove_namespace(name)
    return {"rights": True, "qdiscs": found, "netem": "netem" in found}


def _probe_args(kind: str) -> dict:
    return {"htb": {"default": 0x10}, "tbf": {"rate": "1mbit", "burst": 3200, "latency": 50},
            "netem": {"delay": 1000}, "pfifo": {"limit": 10}, "bfifo": {"limit": 10000}}.get(kind, {})


def remove_stale(say=warn) -> list[str]:
    """Remove the namespaces a dead testbed left (their owner pid is gone); ``say`` (a
    warning) names them."""
    removed = []
    for name in list_namespaces():
        match = NAME.match(name)
        if match and not _alive(int(match.group(1))):
            with contextlib.suppress(Exception):
                remove_namespace(name)
                removed.append(name)
    if removed:
        say(f"removed {len(removed)} network namespace(s) left by a testbed that was killed: "
            f"{', '.join(removed)}")
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- one arm's network ---------------------------------------------------------------------

class Network:
    """Build with :meth:`build`; always :meth:`remove` (idempotent)."""

    def __init__(self, plan: LinkPlan, netem: bool, tag: str | None = None):
        self.plan, self.netem = plan, netem
        self.tag = tag or f"splittest-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.hub, self.server_ns = f"{self.tag}-hub", f"{self.tag}-srv"
        self.source_ns = [f"{self.tag}-s{s.source}" for s in plan.sources]
        self.created: list[str] = []
        self.shapers: list[dict] = []   # what the controller may re-rate, and the capacity events' facts

    # building
    def build(self) -> None:
        try:
            for name in (self.hub, self.server_ns, *self.source_ns):
                create_namespace(name)
                self.created.append(name)
            with _ipr(self.hub) as hub:
                hub.link("add", ifname="br0", kind="bridge")
                bridge = _index(hub, "br0")
                hub.link("set", index=bridge, state="up")
                self._attach(hub, bridge, "srv", self.server_ns, SERVER_ADDRESS)
                for s, ns in zip(self.plan.sources, self.source_ns):
                    self._attach(hub, bridge, f"h{s.source}", ns, source_address(s.source))
                if self.plan.medium == "shared":
                    self._shape_channel(hub)
            if self.plan.medium == "dedicated":
                for s, ns in zip(self.plan.sources, self.source_ns):
                    with _ipr(ns) as ip:
                        self._shape(ip, ns, "eth0", s.up, "up", s.source, self.plan.delay_ms(s, self.netem), s.loss,
                                    self._mean("up"))
                    with _ipr(self.hub) as hub:
                        self._shape(hub, self.hub, f"h{s.source}", s.down, "down", s.source,
                                    self.plan.delay_ms(s, self.netem), s.loss, self._mean("down"))
        except NetworkError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise NetworkError(f"cannot build the emulated network: {_why(exc)}") from None

    def _attach(self, hub, bridge: int, port: str, namespace: str, address: str) -> None:
        """A veth pair: ``port`` on the hub's bridge, ``eth0`` in ``namespace`` with ``address``."""
        fd = namespace_fd(namespace)
        try:
            hub.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": fd})
        finally:
            os.close(fd)
        idx = _index(hub, port)
        hub.link("set", index=idx, master=bridge, gso_max_segs=1)
        hub.link("set", index=idx, state="up")
        with _ipr(namespace) as ip:
            inner = _index(ip, "eth0")
            ip.link("set", index=inner, gso_max_segs=1)
            ip.addr("add", index=inner, address=address, prefixlen=PREFIX)
            ip.link("set", index=inner, state="up")
            ip.link("set", index=_index(ip, "lo"), state="up")

    def _shape(self, ip, namespace: str, device: str, bps: int | None, direction: str, source: int | None,
               delay_ms: float = 0.0, loss: float = 0.0, queue_bps: int | None = None) -> None:
        """htb at ``bps``; the FIFO sized for ``queue_bps`` (a trace's mean rate), else ``bps``."""
        if bps is None:
            return
        limit = queue_packets(queue_bps or bps)
        idx = _index(ip, device)
        ip.tc("add", "htb", index=idx, handle="1:", default=0x10)
        ip.tc("add-class", "htb", index=idx, handle="1:10", parent="1:", rate=_rate(bps), ceil=_rate(bps),
              burst=_burst(bps), cburst=_burst(bps))
        if (delay_ms or loss) and self.netem:
            ip.tc("add", "netem", index=idx, handle="10:", parent="1:10", delay=int(delay_ms * 1000),
                  loss=loss * 100, limit=limit)
        else:
            ip.tc("add", "pfifo", index=idx, handle="10:", parent="1:10", limit=limit)
        self.shapers.append({"namespace": namespace, "device": device, "direction": direction, "source": source,
                             "bps": int(bps), "queue_packets": limit})

    def _mean(self, direction: str) -> int | None:
        """A trace-driven direction's mean rate (None: a fixed rate)."""
        trace = self.plan.trace_down if direction == "down" else self.plan.trace_up
        return round(trace.mean_bps) if trace is not None else None

    def _shape_channel(self, hub) -> None:
        """The shared medium: hub port egress -> IFB (one, or one per direction) -> htb."""
        channel = self.plan.channel
        if self.plan.duplex == "half":
            groups = {"both": (channel.up, ["srv", *[f"h{s.source}" for s in self.plan.sources]])}
        else:
            groups = {"up": (channel.up, ["srv"]), "down": (channel.down, [f"h{s.source}" for s in self.plan.sources])}
        for direction, (bps, ports) in groups.items():
            ifb = f"ifb{direction[0]}"
            hub.link("add", ifname=ifb, kind="ifb")
            ifb_index = _index(hub, ifb)
            hub.link("set", index=ifb_index, state="up")
            first = self.plan.sources[0]  # a shared medium has one delay and loss (the plan checks)
            self._shape(hub, self.hub, ifb, bps, direction, None, self.plan.delay_ms(first, self.netem), first.loss,
                        queue_bps=self._mean(direction))
            for port in ports:
                idx = _index(hub, port)
                hub.tc("add", "clsact", index=idx)
                hub.tc("add-filter", "u32", index=idx, parent=CLSACT_EGRESS, protocol=ETH_P_ALL, prio=1,
                       target=0x10010, keys=["0x0/0x0+0"],
                       action={"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": ifb_index})

    # joining (in the child, before its program runs; see testbed/joining.py)
    def join(self, namespace: str) -> Join:
        return Join(netns=str(NETNS_DIR / namespace))

    def server_join(self):
        return self.join(self.server_ns)

    def source_join(self, index: int):
        return self.join(self.source_ns[index])

    # counting
    def counters(self, index: int) -> dict:
        """Source ``index``'s interface counters (tx: towards the server)."""
        try:
            with _ipr(self.source_ns[index]) as ip:
                link = ip.get_links(_index(ip, "eth0"))[0]
        except NetworkError:
            raise
        except Exception as exc:  # noqa: BLE001 -- netlink and OS errors alike
            raise NetworkError(f"cannot read source {index}'s interface counters: {_why(exc)}") from None
        stats = link.get_attr("IFLA_STATS64")
        return {k: int(stats[k]) for k in ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets")}

    # removing
    def remove(self) -> None:
        left = []
        for name in reversed(self.created):
            try:
                remove_namespace(name)
            except Exception as exc:  # noqa: BLE001
                if (NETNS_DIR / name).exists():
                    left.append(f"{name} ({_why(exc)})")
        self.created = []
        if left:
            raise NetworkError(f"could not remove network namespace(s) {', '.join(left)}")


