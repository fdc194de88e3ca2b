"""Only the run's own sources take part: ZeroMQ CURVE with ZAP authentication.

A run's keys live in one folder (``--keys DIR``, or ``SPLITTEST_KEYS``), in either of
two layouts. The local testbed makes pyzmq's certificate format
(``testbed.keys.make_run_keys``, ``zmq.auth.create_certificates``)::

    server.key          the server's public key
    server.key_secret   the server's public and secret keys
    source.key          the sources' public key
    source.key_secret   the sources' public and secret keys

The Helm chart makes the other (``charts/templates/secret.yaml``): a Secret, mounted
read-only into the server, source and ``helm test`` pods, with two files that hold only
a secret key each, Z85-encoded (40 characters; Helm's ``randAlphaNum 40`` is one: every
alphanumeric character is in the Z85 alphabet and no 5-character group of them can
overflow 32 bits)::

    server-secret       the server's secret key
    source-secret       the sources' secret key

The public keys follow from them (``zmq.curve_public``). Both kinds of pod mount both
secrets (one Secret): the run's own pods are trusted with each other's keys, since
they are one release of one chart; what CURVE keeps out is everyone else, and outsiders
never see the keys (they are in no image, value, ConfigMap, log or trace, only in the
release's Secret and the pods' read-only mounts).

The server reads its secret and the sources' public key; its socket is a CURVE server,
and a ZAP authenticator accepts only that one public key: a client without it never
completes the handshake, so the server's loop never sees a byte from it. A source reads
its own pair and the server's public key. Keys never appear in a message, trace event
or log line: errors name the file, never its content.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .errors import WorkloadError

SERVER, SOURCE = "server", "source"
DOMAIN = "splittest"


class KeysError(WorkloadError, ValueError):
    """The key folder is missing a file or holds one that is not a key."""


@dataclass(frozen=True, repr=False)
class Keys:
    public: bytes
    secret: bytes = field(default=b"")
    peer_public: bytes = field(default=b"")

    def __repr__(self) -> str:  # never the keys themselves
        return "Keys(<redacted>)"


def available() -> bool:
    return bool(zmq.has("curve"))


def _load(folder: Path, name: str, secret: bool) -> tuple[bytes, bytes | None]:
    path = folder / (f"{name}.key_secret" if secret else f"{name}.key")
    if not path.is_file():
        raise KeysError(f"--keys {folder}: no {path.name} there")
    try:
        public, private = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeysError(f"--keys {folder}: {path.name} is not a key file ({type(exc).__name__})") from None
    if len(public or b"") != 40 or (secret and len(private or b"") != 40):
        raise KeysError(f"--keys {folder}: {path.name} is not a key file")
    return public, private


SECRET_FILE = "{}-secret"  # the chart's layout: server-secret, source-secret
_Z85 = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


def _chart_layout(folder: Path) -> bool:
    """The chart's layout: a ``NAME-secret`` file there and no pyzmq ``NAME.key_secret``."""
    names = (SERVER, SOURCE)
    return (any((folder / SECRET_FILE.format(n)).exists() for n in names)
            and not any((folder / f"{n}.key_secret").exists() for n in names))


def _load_secret(folder: Path, name: str) -> tuple[bytes, bytes]:
    """(public, secret) from the chart's file holding only ``name``'s Z85 secret key."""
    path = folder / SECRET_FILE.format(name)
    if not path.is_file():
        raise KeysError(f"--keys {folder}: no {path.name} there")
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise KeysError(f"--keys {folder}: {path.name} cannot be read ({type(exc).__name__})") from None
    # checked here, not by libzmq, so that no message can carry a piece of the content
    if len(secret) != 40 or not _Z85.issuperset(secret):
        raise KeysError(f"--keys {folder}: {path.name} is not a Z85 secret key (40 characters)")
    try:
        public = zmq.curve_public(secret)
    except zmq.ZMQError:  # a 5-character group over 2^32
        raise KeysError(f"--keys {folder}: {path.name} is not a Z85 secret key (40 characters)") from None
    return public, secret


def load(folder: str | Path, role: str) -> Keys:
    """The keys ``role`` (server or source) needs from the run's key folder, in either
    layout (pyzmq's certificate files, or the chart's secret-key files)."""
    if not available():
        raise KeysError("--keys given, but this libzmq has no CURVE support")
    folder = Path(folder)
    if not folder.is_dir():
        raise KeysError(f"--keys {folder}: not a folder")
    mine, other = (SERVER, SOURCE) if role == SERVER else (SOURCE, SERVER)
    if _chart_layout(folder):
        public, secret = _load_secret(folder, mine)
        peer, _ = _load_secret(folder, other)
        return Keys(public, secret, peer)
    public, secret = _load(folder, mine, secret=True)
    peer, _ = _load(folder, other, secret=False)
    return Keys(public, secret, peer)


def serve_securely(sock: zmq.Socket, keys: Keys, context: zmq.Context | None = None) -> ThreadAuthenticator:
    """Make ``sock`` (before it binds) a CURVE server that only the holder of the
    sources' secret key can talk to. Returns the started authenticator (stop it last)."""
    auth = ThreadAuthenticator(context or zmq.Context.instance(), log=_quiet_log())
    auth.start()
    auth.configure_curve_callback(domain=DOMAIN, credentials_provider=_OnlyKey(keys.peer_public))
    sock.setsockopt(zmq.ZAP_DOMAIN, DOMAIN.encode())
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True
    return auth


def connect_securely(sock: zmq.Socket, keys: Keys) -> None:
    """Make ``sock`` (before it connects) a CURVE client of the run's server."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = keys.peer_public


class _OnlyKey:
    def __init__(self, public: bytes):
        self._public = bytes(public)  # Z85, as the authenticator hands keys over

    def callback(self, domain: str, key: bytes) -> bool:
        return hmac.compare_digest(bytes(key), self._public)


def _quiet_log():
    """The authenticator logs each refused client with its key; keep that out of logs."""
    import logging

    log = logging.getLogger("splittest.zap")
    log.addHandler(logging.NullHandler())
    log.propagate = False
    return log
