"""The source's end of the connection: one persistent DEALER socket, request/reply,
with the exact stream bytes of every message in both directions and the parts of its
round trip (see :meth:`Exchange.parts`)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import protocol, security, settings
from .errors import Exit, WorkloadError
from .protocol import Message, ProtocolError

# A source has one request in flight; a high-water mark of a few messages keeps
# pyzmq from queueing (and hiding) traffic that a shaped link has not carried yet.
SEND_HWM = 4
# a source that does not say how large a reply may be: no frame beyond this is taken in
DEFAULT_MAX_REPLY = 64 * 1024 * 1024
# ZMTP heartbeats: a ping every second; a connection that brings nothing back for 5 s
# is closed (and the server drops a source it has not heard from for 5 s: the TTL).
HEARTBEAT_IVL_MS = 1000
# what the source watches on its socket monitor; after a disconnect, the DEALER's own
# reconnect (within ~0.1 s) tells a closed port (refused) from a silent peer (accepted)
WATCHED = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED
PROBE_S = 1.0
# the parts Exchange.parts takes or derives from the server's account (None without one)
FROM_SERVER = protocol.SERVER_PARTS + ("server_s", "network_s", "net_up_s", "net_down_s")


class ServerError(WorkloadError, RuntimeError):
    """The server answered with an error message."""


class ServerTimeout(WorkloadError, RuntimeError):
    """No reply within the timeout."""


class ServerGone(WorkloadError, RuntimeError):
    """The connection to the server was lost while a reply was awaited (no heartbeat
    within the heartbeat timeout, or the server closed it): it is not coming back."""
    status = Exit.SERVER_GONE


@dataclass
class Exchange:
    reply: Message
    bytes_sent: int
    bytes_received: int
    payload_sent: int
    payload_received: int
    wait_s: float = 0.0      # from handing the request to the socket to having the reply (time.perf_counter)
    encode_s: float = 0.0    # the protocol's encode of the request
    decode_s: float = 0.0    # the protocol's decode of the reply (and its checks)
    sent_at: float = 0.0     # time.time() as the request was handed to the socket
    received_at: float = 0.0  # time.time() as the reply was in hand
    server: dict = field(default_factory=dict)  # the reply's protocol.SERVER_TIMES, seconds ({}: none)

    def parts(self) -> dict:
        """The round trip's parts as traced, in seconds (6 decimals; None where the server
        did not say): rtt_s (= wait_s); the server's queue_s, server_decode_s,
        server_compute_s, server_encode_s and server_s (their sum); network_s = rtt_s -
        server_s - queue_s (the wire both ways and the sockets; each side's own clock,
        clamped at 0); net_up_s = arrived_at - sent_at and net_down_s = received_at -
        replied_at (two wall clocks: meaningful only where source and server share one)."""
        s = self.server
        parts = {"rtt_s": self.wait_s, **dict.fromkeys(FROM_SERVER)}
        if s:
            server_s = s["server_decode_s"] + s["server_compute_s"] + s["server_encode_s"]
            parts.update({name: s[name] for name in protocol.SERVER_PARTS}, server_s=server_s,
                         network_s=max(0.0, self.wait_s - server_s - s["queue_s"]),
                         net_up_s=s["arrived_at"] - self.sent_at, net_down_s=self.received_at - s["replied_at"])
        return {name: None if v is None else round(v, 6) for name, v in parts.items()}


def largest_reply(batch_size: int, cut_shape) -> int:
    """The largest frame a server can legitimately answer a source with: the gradient
    of a float32 tensor no larger than the cut (or the predictions), plus the header."""
    size = 4 * batch_size
    for d in cut_shape:
        size *= int(d)
    return protocol.message_bytes(size + 8 * batch_size, arrays=2)


def exchange(message: Message, frames: list, reply_frames: list, *, curve: bool, encode_s: float, sent: float,
             sent_at: float, received: float, received_at: float) -> Exchange:
    """The reply to ``message`` (sent as ``frames``), decoded and checked, with the exchange's
    bytes and times: what every transport does with the frames that came back. ``sent`` and
    ``received``: time.perf_counter() at the send and with the reply in hand."""
    reply = protocol.decode(reply_frames)
    server = protocol.read_times(reply.fields)
    if reply.fields.get("seq") != message.fields.get("seq") and not (reply.op == "error" and "seq" not in reply.fields):
        raise ProtocolError(f"reply to {message.op} seq {message.fields.get('seq')!r} carries seq "
                            f"{reply.fields.get('seq')!r}")
    if reply.op == "error":
        raise ServerError(f"server refused {message.op}: {reply.fields.get('reason', 'no reason given')}")
    decoded = time.perf_counter()
    return Exchange(reply, protocol.stream_bytes(frames, curve), protocol.stream_bytes(reply_frames, curve),
                    protocol.payload_bytes(frames), protocol.payload_bytes(reply_frames),
                    wait_s=received - sent, encode_s=encode_s, decode_s=decoded - received,
                    sent_at=sent_at, received_at=received_at, server=server)


class Connection:
    def __init__(self, address: str, timeout_s: float, keys: str = "", max_reply_bytes: int = DEFAULT_MAX_REPLY,
                 heartbeat_timeout_s: float | None = None):
        """``keys``: the run's key folder (CURVE), empty for plaintext. ``max_reply_bytes``:
        a larger frame from the server closes the connection (ZMQ_MAXMSGSIZE)."""
        self.address, self.timeout_ms = address, int(timeout_s * 1000)
        self.curve = bool(keys)
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, protocol.frame_bytes(max_reply_bytes, self.curve))
        if keys:
            security.connect_securely(self._sock, security.load(keys, security.SOURCE))
        self._sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        self._sock.setsockopt(zmq.RCVHWM, SEND_HWM)
        self._sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        # --heartbeat-timeout (its declared default when not given): a slow link needs longer
        self.heartbeat_timeout_s = heartbeat_timeout_s or settings.option("heartbeat-timeout").default
        self._sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(self.heartbeat_timeout_s * 1000))
        self._sock.setsockopt(zmq.HEARTBEAT_TTL, int(self.heartbeat_timeout_s * 1000))
        self._monitor = self._sock.get_monitor_socket(WATCHED)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._sock.connect(address)

    def request(self, message: Message, timeout_s: float | None = None) -> Exchange:
        """``message``'s reply; ``timeout_s`` instead of the connection's reply timeout."""
        began = time.perf_counter()
        frames = protocol.encode(message)
        timeout_ms = self.timeout_ms if timeout_s is None else int(timeout_s * 1000)
        # a DEALER with no peer to queue for (a handshake the server refused) blocks its send:
        # no longer than the reply may take
        self._sock.setsockopt(zmq.SNDTIMEO, max(1, timeout_ms))
        sent, sent_at = time.perf_counter(), time.time()
        try:
            self._sock.send_multipart(frames, copy=False)
        except zmq.Again:
            raise ServerTimeout(f"could not send to {self.address} within {timeout_ms / 1000:.0f} s: "
                                f"no connection to it") from None
        self._await_reply(sent, timeout_ms)
        reply_frames = self._sock.recv_multipart(copy=False)
        received, received_at = time.perf_counter(), time.time()
        return exchange(message, frames, reply_frames, curve=self.curve, encode_s=sent - began, sent=sent,
                        sent_at=sent_at, received=received, received_at=received_at)

    def _await_reply(self, sent: float, timeout_ms: int | None = None) -> None:
        """Until the reply is readable; ServerTimeout after the timeout, ServerGone as
        soon as the socket monitor says the connection to the server was lost."""
        timeout_ms = self.timeout_ms if timeout_ms is None else timeout_ms
        deadline = sent + timeout_ms / 1000
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise ServerTimeout(f"no reply from {self.address} within {timeout_ms / 1000:.0f} s")
            ready = dict(self._poller.poll(max(1, int(left * 1000))))
            if self._sock in ready:
                return
            if self._monitor in ready:
                while self._monitor.poll(0, zmq.POLLIN):
                    if recv_monitor_message(self._monitor)["event"] == zmq.EVENT_DISCONNECTED:
                        raise ServerGone(self._why_gone())

    def _why_gone(self) -> str:
        """The DEALER reconnects at once: refused means nobody listens any more (the
        server closed the connection); accepted means the peer is there but silent.
        (libzmq reports the reconnect it schedules after a disconnect as a first retry.)"""
        end, retried = time.perf_counter() + PROBE_S, 0
        while (left := end - time.perf_counter()) > 0:
            if not self._monitor.poll(max(1, int(left * 1000)), zmq.POLLIN):
                break
            event = recv_monitor_message(self._monitor)["event"]
            retried += event == zmq.EVENT_CONNECT_RETRIED
            if retried >= 2:  # a reconnect was refused
                break
            if event == zmq.EVENT_CONNECTED:
                return f"the server is gone: no heartbeat for {self.heartbeat_timeout_s:g} s ({self.address})"
        return f"the server is gone: it closed the connection ({self.address})"

    def close(self) -> None:
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self._sock.close(linger=0)


class InProcessConnection:
    """The same contract as :class:`Connection` without a socket: ``request`` encodes the
    message with the protocol, hands the frame to ``respond`` (the server's handler in this
    process: request frames in, reply frames out) and decodes the reply exactly as
    :class:`Connection` does. The bytes are those the frames would occupy on a plaintext
    ZMTP stream (``--insecure``). ``before_send`` (optional) is called after the encode and
    before the send's timestamp: the in-process runner waits there for the source's turn,
    so that the round trip holds only the server's handling.

    Both frames cross as copies (``bytearray``, writable, as pyzmq's received frames are):
    neither side's arrays are views on the other's buffers."""

    curve = False

    def __init__(self, respond, before_send=None, address: str = "inproc"):
        self.address = address
        self._respond, self._before_send = respond, before_send

    def request(self, message: Message, timeout_s: float | None = None) -> Exchange:
        """``message``'s reply. ``timeout_s`` is accepted for the contract's sake: the
        handler answers before it returns, there is nothing to time out."""
        began = time.perf_counter()
        frames = protocol.encode(message)
        encoded = time.perf_counter()
        if self._before_send is not None:
            self._before_send()
        sent, sent_at = time.perf_counter(), time.time()
        reply_frames = [bytearray(frame) for frame in self._respond([bytearray(f) for f in frames])]
        received, received_at = time.perf_counter(), time.time()
        return exchange(message, frames, reply_frames, curve=False, encode_s=encoded - began, sent=sent,
                        sent_at=sent_at, received=received, received_at=received_at)

    def close(self) -> None:
        pass
