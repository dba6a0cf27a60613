"""The project's error type for mistakes a user can make and fix.

The CLIs print a ``UserError`` as one line without a traceback and exit non-zero, so every
message must say what was wrong and what to do about it.
"""


class UserError(Exception):
    """A mistake the user can fix: bad config, unreadable file, missing data, no cluster."""


class ConfigError(UserError):
    """A config field has a value the project cannot use."""


class CheckpointError(UserError):
    """A checkpoint file is missing, corrupt, or not one of ours."""
