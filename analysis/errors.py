"""The error type of ``analysis`` for mistakes a user can make and fix.

``AnalysisError`` is the project's ``UserError`` (``results.errors``, which imports no torch),
raised by the analysis and printed the same way by its CLIs: one line, no traceback, exit
status 2. Every message says what was wrong and what to do about it.
"""

from results.errors import UserError


class AnalysisError(UserError):
    """A mistake the user can fix: wrong results folder, bad --where, unknown experiment."""


class AnalysisWarning(UserWarning):
    """Something was skipped (a corrupt file, a missing figure) but the analysis went on."""
