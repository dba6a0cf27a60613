"""What a trial's MLflow run holds besides params and metrics, so a researcher who finds a run
in MLflow can get its model:

- ``checkpoint/<trial_id>.pt``: the trial's model file, read with ``models.load_checkpoint``;
- ``reconstructions.png``: once the trial is attacked, the attack pairs' source images (top row)
  above the model's reconstructions of them (bottom row), taken from ``gallery/``, so it costs
  no model pass.

Logged from the driver after the stage that wrote the files. A run that holds a file already is
skipped, so a re-run back-fills what a lost tracking server missed and adds nothing twice.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from results import layout
from results.store import Store, local_tmp_dir
from sweep.infra.tracking import Tracker

CHECKPOINT_DIR = "checkpoint"
RECONSTRUCTIONS = "reconstructions.png"


def log_checkpoints(tracker: Tracker, store: Store, rows: dict[str, dict[str, Any]]) -> None:
    if tracker.artifacts_unreachable:
        print(f"MLflow: model files not logged: {tracker.artifacts_unreachable}")
        return
    with tempfile.TemporaryDirectory(dir=local_tmp_dir()) as folder:
        for trial_id, row in sorted(rows.items()):
            relpath = layout.checkpoint_file(trial_id)
            if row.get("status") != "ok" or not store.exists(relpath) or _has(tracker, row, CHECKPOINT_DIR):
                continue
            local = store.download(relpath, Path(folder) / f"{trial_id}.pt")
            tracker.log_trial_artifact(row, local, CHECKPOINT_DIR)
            local.unlink()


def log_reconstructions(tracker: Tracker, store: Store, rows: dict[str, dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory(dir=local_tmp_dir()) as folder:
        for trial_id, row in sorted(rows.items()):
            files = store.list_files(f"{layout.GALLERY}/{trial_id}", ".parquet")
            if row.get("status") != "ok" or not files or _has(tracker, row, RECONSTRUCTIONS):
                continue
            picture = reconstruction_strip(store, files)
            if picture is not None:
                path = Path(folder) / RECONSTRUCTIONS
                picture.save(path)
                tracker.log_trial_artifact(row, path)


def reconstruction_strip(store: Store, files: list[str]):
    """A PIL image: each pair's source above its reconstruction, pairs left to right."""
    from PIL import Image

    columns = ["pair", "channels", "height", "width", "input", "reconstruction"]
    seen: dict[int, dict[str, Any]] = {}
    for relpath in files:
        try:
            for picture in store.read_table(relpath, columns=columns).to_pylist():
                seen.setdefault(picture["pair"], picture)  # every mode shows the same two panels
        except Exception:  # an unreadable part is redone by the attack stage; use the rest
            continue
    if not seen:
        return None
    tiles = []
    for _, picture in sorted(seen.items()):
        shape = (picture["height"], picture["width"], picture["channels"])
        panels = [np.frombuffer(picture[name], dtype=np.uint8).reshape(shape) for name in ("input", "reconstruction")]
        tiles.append(np.concatenate(panels, axis=0))
    strip = np.concatenate(tiles, axis=1)
    return Image.fromarray(strip[..., 0] if strip.shape[-1] == 1 else strip)


def _has(tracker: Tracker, row: dict[str, Any], artifact: str) -> bool:
    """True if the run holds ``artifact``, or if its artifacts cannot be listed (then nothing is
    logged now; the failure is counted and a re-run tries again)."""
    have = tracker.artifacts_of(row)
    return have is None or artifact in have
