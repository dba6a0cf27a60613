"""The error a user gets for a dataset that cannot be used as given."""

from __future__ import annotations

from results.errors import UserError


class DatasetError(UserError):
    """A dataset folder or file is missing, empty, unreadable or not in the expected layout.

    The message names the path, what was found, the layout that was expected and what to do.
    """
