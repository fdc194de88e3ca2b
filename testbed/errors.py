"""The testbed's exit statuses and errors, declared once.

Every command of ``testbed`` (run, sweep, reproduce, report, collect) exits with one of
:class:`Exit`; the README's table of exit statuses is generated from it. Every error the
testbed reports is a :class:`TestbedError`, which carries its exit status; ``main()``
prints it as one line (:func:`report`) and returns its status. An error of another
package (analysis, a file that cannot be read) is reported with the status its catcher
gives it.
"""
from __future__ import annotations

import sys
from typing import Callable

from workloads.errors import ExitStatus


class Exit(ExitStatus):
    """What ``testbed``'s exit status says."""

    OK = 0, "done: every arm (every trial of a sweep) finished and its summary and report are written"
    FAILED = 1, ("an arm failed (a process, pod or cluster call failed, the server died, or every source was lost); "
                 "a sweep: a trial failed (the others ran; running the command again retries it), or Ray could "
                 "not be started or joined")
    BAD_INPUT = 2, ("bad input (an argument, a spec, an experiment's claims, a run folder that cannot be made or "
                    "read), said in one line; nothing was started, nothing is left running")
    LOST_SOURCES = 3, ("finished, but sources were lost: every arm ran, `summary.json` and the report are written, "
                       "and the lost sources are named in one line, e.g. `testbed: error: arm filter lost source 3 "
                       "(killed by SIGKILL, injected by --drop 3@8); summary and report written`; a sweep: no trial "
                       "failed, but some lost sources (named in one line)")
    INTERRUPTED = 130, "interrupted (Ctrl-C, a second one included, or SIGTERM): every process was stopped and " \
                       "every cgroup, namespace and qdisc removed"


class TestbedError(Exception):
    """An error the testbed reports in one line; ``status`` is the exit status it ends with."""
    __test__ = False  # not a test class, whatever pytest thinks of the name
    status = Exit.FAILED


class BadInput(TestbedError, ValueError):
    """Bad input: an argument, a spec or a file the user gave; the message names it."""
    status = Exit.BAD_INPUT


class BackendError(TestbedError, RuntimeError):
    """A process, pod or cluster call of the run failed; the message says which and why."""


class CapError(TestbedError, RuntimeError):
    """A CPU cap or pinning could not be set; the message says which and why."""


class LostSources(TestbedError):
    """Every arm finished, but sources were lost (the summary and report are written)."""
    status = Exit.LOST_SOURCES


class TrialsFailed(TestbedError):
    """Trials of a sweep failed; the others ran."""


def report(error: BaseException, status: Exit | None = None) -> Exit:
    """``error`` on stderr in one line (``testbed: error: ...``); its exit status (``status``
    for an error that is not the testbed's own)."""
    print(f"testbed: error: {error}", file=sys.stderr)
    return Exit(status if status is not None else getattr(error, "status", Exit.FAILED))


def exit_status(body: Callable[[], int]) -> Exit:
    """What a command's ``main()`` returns: ``body()``'s exit status, or the status of the
    TestbedError it raised, reported in one line."""
    try:
        return Exit(body())
    except TestbedError as error:
        return report(error)


def warn(problem: str) -> None:
    print(f"testbed: warning: {problem}", file=sys.stderr)


def interrupted(what: str) -> Exit:
    """Ctrl-C or SIGTERM, after ``what`` was stopped."""
    print(f"testbed: interrupted; {what}", file=sys.stderr)
    return Exit.INTERRUPTED
