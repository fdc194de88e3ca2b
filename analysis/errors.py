"""The base of every error analysis reports in one line.

``analysis`` has no command of its own: the testbed's commands meet these errors and end
with the exit status each carries (``status``: 2 when the files given are not what they
should be, 1 when a run's own traces say it failed), as the testbed's own errors do."""


class AnalysisError(ValueError):
    """An error in one line; ``status``: the exit status a command that meets it ends with."""
    status = 2
