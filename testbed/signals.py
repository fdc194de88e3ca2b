"""Cleanup that a second Ctrl-C cannot cut short: shared by the backends."""
from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def signals_deferred(signums=(signal.SIGINT, signal.SIGTERM)):
    """Hold SIGINT and SIGTERM off while the block runs, then deliver the first one
    that came (to the handler that was there: Ctrl-C raises KeyboardInterrupt).

    The handlers are swapped rather than the signals blocked: ``pthread_sigmask`` only
    masks the calling thread, and the kernel would hand the signal to another thread,
    whose Python handler still runs in the main thread. Outside the main thread
    (where handlers cannot be set) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum, _frame):
        pending.append(signum)

    previous = {}
    for signum in signums:
        handler = signal.getsignal(signum)
        if handler is not None:  # None: set outside Python, cannot be put back
            previous[signum] = signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if pending:
            signal.raise_signal(pending[0])
