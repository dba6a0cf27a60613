"""A sweep config's ``plugins``: modules that register what the package does not ship (a model
kind, a dataset, an architecture, a latent similarity), imported before anything reads a name.

They are imported on the driver before the config is validated (``SweepConfig.validate``), and
by every trial and attack task before it builds a model or loads a dataset, so each Ray worker
knows what the driver knows. A plugin must be importable on every node: installed there, or on
``PYTHONPATH`` (a local Ray instance inherits the driver's; on a cluster pass ``--worker-env
PYTHONPATH`` with a folder every node has).
"""

from __future__ import annotations

import importlib
from typing import Iterable

from results.errors import ConfigError


def import_plugins(modules: Iterable[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any failure of the plugin's own import is the user's to fix
            raise ConfigError(
                f"plugins: cannot import {name!r} ({type(exc).__name__}: {exc}); make it importable "
                "here and on every Ray node: install it, or put its folder on PYTHONPATH") from None
