"""The errors of ``models``: the project's ``UserError`` and ``ConfigError`` (``results.errors``)
and the one that only models raise, ``CheckpointError``.

The CLIs print a ``UserError`` as one line without a traceback and exit non-zero, so every
message must say what was wrong and what to do about it.
"""

from results.errors import ConfigError, UserError

__all__ = ["UserError", "ConfigError", "CheckpointError"]


class CheckpointError(UserError):
    """A checkpoint file is missing, corrupt, or not one of ours."""
