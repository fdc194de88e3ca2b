"""The programs' exit statuses and the base of their errors, declared once.

``python -m workloads.source``, ``workloads.server`` and ``workloads.inprocess`` exit
with one of :class:`Exit` (the README's table is generated from it); every error they
report in one line is a :class:`WorkloadError`, which carries its status (a module's
``ValueError`` about its settings counts as ``Exit.ERROR`` too)."""
from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Exit statuses, each declared with its meaning (``meaning``: the README's table says
    it); the programs' below, the testbed's in testbed/errors.py."""

    def __new__(cls, code: int, meaning: str):
        member = int.__new__(cls, code)
        member._value_ = code
        member.meaning = meaning
        return member


class Exit(ExitStatus):
    """What a program's exit status says."""

    OK = 0, "done"
    BUG = 1, "an unexpected error (a bug): its traceback in the log, its message in the trace's `end` event"
    ERROR = 2, ("an error, said in one line on stderr and in the trace's `end` event: a bad setting or bad data, "
                "a refused request, no reply within `--timeout`")
    SERVER_GONE = 3, ("a source lost its server (ZeroMQ heartbeats every second: a server that dies or hangs is "
                      "noticed within about 5 s, not after `--timeout`)")
    INTERRUPTED = 130, "interrupted (Ctrl-C or SIGTERM): the request in hand finished, the trace closed"


class WorkloadError(Exception):
    """An error a program reports in one line; ``status`` is the exit status it ends with."""
    status = Exit.ERROR
