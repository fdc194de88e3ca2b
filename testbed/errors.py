"""Errors shared by the backends."""


class BackendError(RuntimeError):
    """A process, pod or cluster call of the run failed; the message says which and why."""
