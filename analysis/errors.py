"""The error type of ``analysis`` for mistakes a user can make and fix.

``analysis`` must run without torch, so it cannot import ``models.errors.UserError``; it has its
own type, printed the same way by its CLIs: one line, no traceback, exit status 2. Every message
says what was wrong and what to do about it.
"""


class AnalysisError(Exception):
    """A mistake the user can fix: wrong results folder, bad --where, unknown experiment."""


class AnalysisWarning(UserWarning):
    """Something was skipped (a corrupt file, a missing figure) but the analysis went on."""
