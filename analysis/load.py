"""Read a sweep's results folder (``--out``) into pandas.

The layout and the columns are the contract (``results.layout``, ``results.schema``; see
``docs/CONTRACTS.md``)::

    train/<trial_id>.parquet              one row per trial
    noise/<trial_id>.parquet              log p(x|z) samples under input noise
    attacks/<trial_id>/<task>.parquet     one row per attack
    gallery/<trial_id>/<task>.parquet     images of the selected attack of each pair
    sweep.json, tracking.json

The folder is a local path or any URI pyarrow can open (``s3://bucket/sweeps/x``, ``gs://...``):
the sweep may write to object storage and the analysis reads it in place, through the same
``results.store.Store`` (an S3-compatible endpoint other than AWS comes from
``AWS_ENDPOINT_URL``, as for the sweep).

Each folder is read as one pyarrow dataset: only the requested columns are read and filters are
pushed down to the Parquet scan (row groups whose statistics exclude the filter are skipped).
Files whose schemas differ a little (a column missing in older files, ``int`` in one and
``double`` in another, an all-null column) are unified; a column missing from every file comes
back as all-null. Unreadable files (truncated, corrupt, not Parquet) are skipped with an
:class:`~analysis.errors.AnalysisWarning` that lists them; the list is also kept in
``df.attrs["skipped_files"]`` so the report can show it. Temporary files of an atomic write
(names starting with ``.`` or ``_``) are ignored.

Filters are a dict ``{column: condition}`` (all must hold) where a condition is a scalar
(equality), a list/tuple/set of values (membership) or an ``(op, value)`` pair with op one of
``== != < <= > >=``; a ``pyarrow.compute.Expression`` is also accepted as is::

    load_attacks(out, filters={"model": ["tcvae", "vae"], "mode": LATENT, "beta": (">=", 4)})

with ``LATENT`` from ``results.vocabulary`` (the attack modes and similarities are named there).
"""

from __future__ import annotations

import json
import operator
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from analysis.errors import AnalysisError, AnalysisWarning
from results import layout, records, schema
from results.errors import UserError
from results.store import Store

__all__ = [
    "TRAIN_COLUMNS",
    "NOISE_COLUMNS",
    "ATTACK_COLUMNS",
    "GALLERY_COLUMNS",
    "GALLERY_IMAGE_COLUMNS",
    "ATTACK_KEY",
    "TRAIN_ELBO",
    "GRID_FIELDS",
    "results_dir",
    "list_parquet_files",
    "load_table",
    "load_train",
    "load_noise",
    "load_attacks",
    "load_gallery",
    "read_tracking",
    "read_sweep_config",
]

# the contract's columns (results.schema), as lists
GRID_FIELDS = list(schema.GRID_FIELDS)
TRAIN_COLUMNS = schema.TRAIN.names
NOISE_COLUMNS = schema.NOISE.names
ATTACK_COLUMNS = schema.ATTACKS.names
GALLERY_IMAGE_COLUMNS = list(schema.GALLERY_PANELS)
GALLERY_COLUMNS = schema.GALLERY.names
ATTACK_KEY = list(schema.ATTACK_KEY)
TRAIN_ELBO = schema.TRAIN_ELBO   # train/'s held-out ELBO (nats per image), a training metric

_OPS = {
    "==": operator.eq, "=": operator.eq, "!=": operator.ne, "<": operator.lt,
    "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}

Filters = Mapping[str, Any] | pc.Expression | None


Location = str | Path | Store


def results_dir(out_dir: Location) -> Store:
    """The results folder, a local path or a URI pyarrow can open (``s3://bucket/sweeps/x``; an
    S3-compatible endpoint comes from ``AWS_ENDPOINT_URL``, as for the sweep), opened to read.
    AnalysisError if it does not exist or is a file."""
    if isinstance(out_dir, Store):
        return out_dir
    try:
        store = Store(str(out_dir), create=False)
        if not store.exists():
            raise AnalysisError(
                f"results folder {out_dir} does not exist: pass the --out folder of a sweep "
                "(the one holding sweep.json, train/ and attacks/)"
            )
        if not store.is_dir():
            raise AnalysisError(f"{out_dir} is a file, not a results folder: pass the sweep's --out folder")
    except UserError as exc:  # the store says what it cannot open or reach
        raise AnalysisError(str(exc)) from exc
    return store


def list_parquet_files(folder: Location) -> list[str]:
    """All ``*.parquet`` files under ``folder`` (recursive, sorted) as paths on its store's
    filesystem, skipping hidden/temporary names (a leading ``.`` or ``_`` in any part of the
    relative path)."""
    store = folder if isinstance(folder, Store) else Store(str(folder), create=False)
    found = []
    for relpath in store.list_files("", ".parquet"):
        if not any(part.startswith((".", "_")) for part in relpath.split("/")):
            found.append(store.path(relpath))
    return found


def _filter_expression(filters: Filters) -> pc.Expression | None:
    if filters is None:
        return None
    if isinstance(filters, pc.Expression):
        return filters
    if not isinstance(filters, Mapping):
        raise AnalysisError(
            f"filters must be a dict {{column: condition}} or a pyarrow Expression, got {type(filters).__name__}"
        )
    expr = None
    for column, cond in filters.items():
        field = ds.field(column)
        if isinstance(cond, tuple) and len(cond) == 2 and isinstance(cond[0], str) and cond[0] in _OPS:
            term = _OPS[cond[0]](field, cond[1])
        elif isinstance(cond, (list, tuple, set, frozenset)):
            term = field.isin(list(cond))
        else:
            term = field == cond
        expr = term if expr is None else (expr & term)
    return expr


def _filter_columns(filters: Filters) -> set[str]:
    if isinstance(filters, Mapping):
        return set(filters)
    return set()


def _unify(schemas: Sequence[pa.Schema]) -> pa.Schema:
    try:
        return pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="permissive")
    except (pa.ArrowException, TypeError) as exc:  # incompatible types across files
        raise AnalysisError(
            f"the Parquet files have incompatible schemas ({exc}); they were written by different "
            "versions of the sweep: move the old files away or re-run the sweep into a new --out"
        ) from exc


def _empty_frame(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})


def load_table(
    folder: Location,
    columns: Sequence[str] | None = None,
    filters: Filters = None,
    *,
    known_columns: Sequence[str] | None = None,
    dedup_key: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read every Parquet file under ``folder`` as one dataset into a DataFrame.

    ``columns``: the columns to read (None: all). A requested column absent from every file comes
    back all-null. ``filters``: see the module docstring; pushed down to the scan. A filter on
    a column absent from every file matches no rows. ``dedup_key``: drop duplicate rows on these
    columns (keeping the last file's) when they are all read.
    """
    if not isinstance(folder, Store):
        folder = Store(str(folder), create=False)
    filesystem = folder.fs
    files = list_parquet_files(folder)
    wanted = list(columns) if columns is not None else None
    skipped: list[tuple[str, str]] = []

    good: list = []
    schemas: list[pa.Schema] = []
    for path in files:
        try:
            schemas.append(pq.read_schema(path, filesystem=filesystem))
            good.append(path)
        except (pa.ArrowException, OSError, ValueError) as exc:
            skipped.append((str(path), _short(exc)))

    if not good:
        df = _empty_frame(wanted if wanted is not None else list(known_columns or []))
        _note_skipped(df, skipped, folder)
        return df

    schema = _unify(schemas)
    names = set(schema.names)
    missing_filter = _filter_columns(filters) - names
    read_cols = [c for c in wanted if c in names] if wanted is not None else list(schema.names)
    if missing_filter:
        table = schema.empty_table().select(read_cols)
    else:
        expr = _filter_expression(filters)
        table = _scan(good, schema, read_cols, expr, skipped, filesystem)

    df = table.to_pandas(self_destruct=True, split_blocks=True)
    if wanted is not None:
        for c in wanted:
            if c not in df.columns:
                df[c] = pd.Series([None] * len(df), dtype="object", index=df.index)
        df = df[wanted]
    if dedup_key and all(k in df.columns for k in dedup_key) and len(df):
        dup = df.duplicated(subset=list(dedup_key), keep="last")
        if dup.any():
            df = df.loc[~dup].reset_index(drop=True)
    _note_skipped(df, skipped, folder)
    return df


def _scan(
    files: list,
    schema: pa.Schema,
    columns: list[str],
    expr: pc.Expression | None,
    skipped: list[tuple[str, str]],
    filesystem,
) -> pa.Table:
    try:
        dataset = ds.dataset([str(p) for p in files], schema=schema, format="parquet", filesystem=filesystem)
        return dataset.to_table(columns=columns, filter=expr, use_threads=True)
    except (pa.ArrowException, OSError, ValueError):
        pass
    # A file with a readable footer but corrupt pages: read file by file, skip the bad ones.
    tables = []
    for path in files:
        try:
            one = ds.dataset(str(path), schema=schema, format="parquet", filesystem=filesystem)
            tables.append(one.to_table(columns=columns, filter=expr, use_threads=True))
        except (pa.ArrowException, OSError, ValueError) as exc:
            skipped.append((str(path), _short(exc)))
    if not tables:
        return schema.empty_table().select(columns)
    return pa.concat_tables(tables)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _note_skipped(df: pd.DataFrame, skipped: list[tuple[str, str]], folder: Location) -> None:
    df.attrs["skipped_files"] = list(skipped)
    if skipped:
        listing = "; ".join(f"{p} ({why})" for p, why in skipped)
        warnings.warn(
            f"skipped {len(skipped)} unreadable Parquet file(s) in {folder}: {listing}. "
            "They are truncated or corrupt (a crashed writer?): delete them and re-run the sweep "
            "step that writes them to regenerate.",
            AnalysisWarning,
            stacklevel=3,
        )


def load_train(out_dir: Location, columns: Sequence[str] | None = None, filters: Filters = None) -> pd.DataFrame:
    """``train/``: one row per trial (deduplicated on trial_id, the last file wins)."""
    return load_table(results_dir(out_dir).sub(layout.TRAIN), columns, filters,
                      known_columns=TRAIN_COLUMNS, dedup_key=["trial_id"])


def load_noise(out_dir: Location, columns: Sequence[str] | None = None, filters: Filters = None) -> pd.DataFrame:
    """``noise/``: log p(x|z) of clean images with z ~ q(z | x + ε), one row per sample."""
    return load_table(results_dir(out_dir).sub(layout.NOISE), columns, filters, known_columns=NOISE_COLUMNS)


def load_attacks(out_dir: Location, columns: Sequence[str] | None = None, filters: Filters = None) -> pd.DataFrame:
    """``attacks/``: one row per attack; duplicate keys (trial_id, mode, similarity, pair, lam)
    are dropped when the key columns are read."""
    return load_table(results_dir(out_dir).sub(layout.ATTACKS), columns, filters,
                      known_columns=ATTACK_COLUMNS, dedup_key=ATTACK_KEY)


def load_gallery(out_dir: Location, columns: Sequence[str] | None = None, filters: Filters = None) -> pd.DataFrame:
    """``gallery/``: the six images (raw uint8 H×W×C bytes) of the selected attack of each pair."""
    return load_table(results_dir(out_dir).sub(layout.GALLERY), columns, filters, known_columns=GALLERY_COLUMNS,
                      dedup_key=["trial_id", "mode", "similarity", "pair"])


def _read_json(out: Store, name: str, what: str) -> dict | None:
    if not out.exists(name):
        return None
    try:
        data = json.loads(out.read_bytes(name).decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise AnalysisError(
            f"{out.uri_of(name)} is not readable JSON ({exc}): it holds the {what}; restore it or re-run "
            "the sweep with the same --out to rewrite it"
        ) from exc
    if not isinstance(data, dict):
        raise AnalysisError(f"{out.uri_of(name)} should hold a JSON object (the {what}), found {type(data).__name__}")
    return data


def read_tracking(out_dir: Location) -> dict | None:
    """``tracking.json`` as a dict (``results.records.TRACKING_KEYS``), None if absent."""
    return _read_json(results_dir(out_dir), layout.TRACKING_JSON, "MLflow tracking URI and run ids")


def read_sweep_config(out_dir: Location) -> dict | None:
    """``sweep.json`` (the resolved config, ``results.records``), None if absent. The units it
    records for the sweep's similarities are registered here, so a plugin similarity's Δ is
    labelled in its unit without importing the plugin."""
    config = _read_json(results_dir(out_dir), layout.SWEEP_JSON, "sweep's resolved config")
    records.register_recorded_units(config)
    return config


def iter_gallery_images(row: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    """The six images of one gallery row as (name, uint8 array H×W×C)."""
    import numpy as np

    h, w, c = int(row["height"]), int(row["width"]), int(row["channels"])
    for name in GALLERY_IMAGE_COLUMNS:
        raw = row.get(name)
        if raw is None or len(raw) != h * w * c:
            yield name, None
        else:
            yield name, np.frombuffer(raw, dtype=np.uint8).reshape(h, w, c)
