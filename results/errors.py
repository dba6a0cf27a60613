"""The project's error type for mistakes a user can make and fix, shared by every package.

The CLIs print a ``UserError`` as one line without a traceback and exit 2, so every message must
say what was wrong and what to do about it. Subclasses: ``ConfigError`` (here: a bad config
value, for the model, the sweep or the registries), ``models.errors.CheckpointError``,
``sweep.data.DatasetError`` and ``analysis.errors.AnalysisError``.
"""


class UserError(Exception):
    """A mistake the user can fix: bad config, unreadable file, missing data, no cluster."""


class ConfigError(UserError):
    """A config field has a value the project cannot use."""
