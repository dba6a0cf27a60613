"""The two JSON files of a results folder, their shape, and how they are read and written.

``sweep.json``: the sweep's resolved config (``SweepConfig.to_dict()`` of ``sweep.config``) and
its ``fingerprint``. Readers other than the sweep rely on two keys only: ``name``, and ``grid``,
whose fields are ``GridConfig``'s (``datasets``, ``models``, ``betas``, ``layers``, ``z_dims``,
``seeds``); the other sections belong to the sweep.

``tracking.json``: the MLflow store, experiment and parent run of the sweep (``TRACKING_KEYS``).
On a re-run (and for the attack CLI, the report and the query CLI) the tracking URI follows one
rule, ``tracking_uri``: the one given on the command line, else the one stored here, else
MLflow's default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from results import kinds, layout, vocabulary
from results.errors import UserError
from results.store import Store

FINGERPRINT = "fingerprint"
SIMILARITY_UNITS = "similarity_units"
TRACKING_KEYS = ("tracking_uri", "experiment_name", "experiment_id", "parent_run_id")


@dataclass
class GridConfig:
    """The sweep's axes; every combination a model kind can take becomes one trial."""

    datasets: list[str] = field(default_factory=lambda: ["dsprites_generated"])
    models: list[str] = field(default_factory=lambda: [spec.name for spec in kinds.BUILT_IN])
    betas: list[float] = field(default_factory=lambda: [1.0, 4.0])
    layers: list[int] = field(default_factory=lambda: [1, 2])
    z_dims: list[int] = field(default_factory=lambda: [10])
    seeds: list[int] = field(default_factory=lambda: [0])


def sweep_record(config: dict[str, Any], fingerprint: str,
                 units: dict[str, str] | None = None) -> dict[str, Any]:
    """What ``sweep.json`` holds: the config with its fingerprint and, if given, the unit of
    each attack similarity it uses (so the analysis labels a plugin similarity without
    importing the plugin). The config must have a ``name`` and a ``grid`` of exactly
    ``GridConfig``'s fields."""
    grid = config.get("grid")
    axes = {f.name for f in dataclasses.fields(GridConfig)}
    if not isinstance(config.get("name"), str) or not isinstance(grid, dict) or set(grid) != axes:
        raise ValueError(f"a sweep record needs a name and a grid with the fields {sorted(axes)}")
    return {**config, FINGERPRINT: fingerprint, **({SIMILARITY_UNITS: dict(units)} if units else {})}


def write_sweep(store: Store, config: dict[str, Any], fingerprint: str,
                units: dict[str, str] | None = None) -> None:
    store.write_json(layout.SWEEP_JSON, sweep_record(config, fingerprint, units))


def register_recorded_units(record: Any) -> None:
    """Register the similarity units a ``sweep.json`` record carries that this process does
    not know yet (a plugin similarity whose module is not imported here)."""
    units = record.get(SIMILARITY_UNITS) if isinstance(record, dict) else None
    for name, unit in (units.items() if isinstance(units, dict) else ()):
        if name not in vocabulary.similarity_names() and isinstance(unit, str) and unit:
            vocabulary.register_similarity_unit(name, unit)


def read_sweep(store: Store) -> tuple[dict[str, Any], str | None]:
    """(the config, its fingerprint) from ``sweep.json``; UserError if it is missing or not a
    JSON object."""
    where = store.uri_of(layout.SWEEP_JSON)
    if not store.exists(layout.SWEEP_JSON):
        raise UserError(f"--out {store.uri} has no {layout.SWEEP_JSON}; point it at the results folder of a sweep")
    try:
        record = store.read_json(layout.SWEEP_JSON)
    except (OSError, ValueError) as exc:
        raise UserError(f"{where} is unreadable ({exc}); delete it or pass --reuse-out") from None
    if not isinstance(record, dict):
        raise UserError(f"{where} should hold a JSON object, found {type(record).__name__}")
    record = dict(record)
    record.pop(SIMILARITY_UNITS, None)   # derived from the config, not part of it
    return record, record.pop(FINGERPRINT, None)


def grid_of(record: Any) -> GridConfig | None:
    """The grid of a ``sweep.json`` record, or None if it has none of the contract's shape."""
    grid = record.get("grid") if isinstance(record, dict) else None
    axes = {f.name for f in dataclasses.fields(GridConfig)}
    if not isinstance(grid, dict) or not set(grid) <= axes \
            or not all(isinstance(v, list) for v in grid.values()):
        return None
    return GridConfig(**grid)


def write_tracking(store: Store, info: dict[str, Any]) -> None:
    store.write_json(layout.TRACKING_JSON, {key: info.get(key) for key in TRACKING_KEYS})


def read_tracking(store: Store) -> dict[str, Any]:
    """``tracking.json`` as a dict, empty if the sweep ran without tracking (or never started)."""
    if not store.exists(layout.TRACKING_JSON):
        return {}
    record = store.read_json(layout.TRACKING_JSON)
    return record if isinstance(record, dict) else {}


def tracking_uri(given: str | None, stored: dict[str, Any] | None) -> str | None:
    """The tracking URI of a run on an existing results folder: the one given (--tracking-uri),
    else the one the sweep stored in ``tracking.json`` (its runs are there), else None, i.e.
    MLflow's default (``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``)."""
    return given or (stored or {}).get("tracking_uri") or None
