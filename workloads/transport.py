"""The source's end of the connection: one persistent DEALER socket, request/reply,
with the exact stream bytes of every message in both directions."""
from __future__ import annotations

import time
from dataclasses import dataclass

import zmq

from . import protocol
from .protocol import Message

# A source has one request in flight; a high-water mark of a few messages keeps
# pyzmq from queueing (and hiding) traffic that a shaped link has not carried yet.
SEND_HWM = 4


class ServerError(RuntimeError):
    """The server answered with an error message."""


class ServerTimeout(RuntimeError):
    """No reply within the timeout."""


@dataclass
class Exchange:
    reply: Message
    bytes_sent: int
    bytes_received: int
    payload_sent: int
    payload_received: int
    wait_s: float = 0.0  # from handing the request to the socket to having the reply (time.perf_counter)


class Connection:
    def __init__(self, address: str, timeout_s: float):
        self.address, self.timeout_ms = address, int(timeout_s * 1000)
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, SEND_HWM)
        self._sock.setsockopt(zmq.RCVHWM, SEND_HWM)
        self._sock.connect(address)

    def request(self, message: Message) -> Exchange:
        frames = protocol.encode(message)
        sent = time.perf_counter()
        self._sock.send_multipart(frames, copy=False)
        if not self._sock.poll(self.timeout_ms, zmq.POLLIN):
            raise ServerTimeout(f"no reply from {self.address} within {self.timeout_ms / 1000:.0f} s")
        reply_frames = self._sock.recv_multipart(copy=False)
        wait_s = time.perf_counter() - sent
        reply = protocol.decode(reply_frames)
        if reply.op == "error":
            raise ServerError(f"server refused {message.op}: {reply.fields.get('reason', 'no reason given')}")
        return Exchange(reply, protocol.stream_bytes(frames), protocol.stream_bytes(reply_frames),
                        protocol.payload_bytes(frames), protocol.payload_bytes(reply_frames), wait_s)

    def close(self) -> None:
        self._sock.close(linger=0)
