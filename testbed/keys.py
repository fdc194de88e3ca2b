"""Per-run CURVE keys: one server pair and one source pair, in pyzmq's format.

``make_run_keys(run_dir)`` writes them under ``<run_dir>/private/keys/`` (folder mode
0700, files 0600) and returns that folder, which the programs take as ``--keys``.
"""
from __future__ import annotations

import os
from pathlib import Path

import zmq
import zmq.auth

from workloads.security import SERVER, SOURCE


def make_run_keys(run_dir: Path) -> Path:
    """Create the run's key pairs; an existing folder is replaced (new run, new keys)."""
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq has no CURVE support: run with --insecure")
    private = Path(run_dir) / "private"
    folder = private / "keys"
    old = os.umask(0o077)  # nothing below is ever readable by others, not even briefly
    try:
        private.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
        for path in folder.iterdir():
            path.unlink()
        for name in (SERVER, SOURCE):
            zmq.auth.create_certificates(str(folder), name)
    finally:
        os.umask(old)
    os.chmod(private, 0o700)
    os.chmod(folder, 0o700)
    for path in folder.iterdir():
        os.chmod(path, 0o600)
    return folder
