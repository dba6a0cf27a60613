"""The attack stage's unit of work: one task per (trial, mode, similarity, chunk of pairs), with
every lambda of those pairs, so a task can apply the paper's lambda-selection rule and keep the
pictures of the selected attack. Here: what a task is and the name of the file it writes
(``results.layout``), which tasks are still to do, and what one does in its Ray worker. The
driver that runs them: ``sweep.fanout.stage``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

from attacks.config import AttackConfig
from results import layout, schema
from results.store import Store, local_tmp_dir
from sweep.config import SweepConfig
from sweep.config.plugins import import_plugins


@dataclass(frozen=True)
class AttackTask:
    trial: dict[str, Any]  # the train row's identity fields
    mode: str
    similarity: str
    pairs: tuple[int, ...]  # pair numbers of this chunk

    @property
    def relpath(self) -> str:
        return layout.attack_file(self.trial["trial_id"], self.mode, self.similarity, self.pairs[0], self.pairs[-1])

    parse_relpath = staticmethod(layout.parse_attack_file)

    @property
    def gallery_relpath(self) -> str:
        return layout.gallery_file(self.relpath)


def attack_pairs(cfg: SweepConfig, dataset_name: str) -> dict[str, Any]:
    """The input-target pairs of a dataset, drawn by seed from the held-out split that no
    model trained on; the same for every model, so their attacks compare like with like."""
    from attacks.metrics import sample_pairs
    from sweep.train.trainable import cached_dataset

    data = cfg.data
    dataset = cached_dataset(dataset_name, data.data_dirs.get(dataset_name), data.size,
                             data.split_seed, data.held_out)
    pairs = sample_pairs(dataset.held_out_indices.tolist(), cfg.attack.n_pairs, cfg.attack.seed)
    sources = [s for s, _ in pairs]
    targets = [t for _, t in pairs]
    origin = dataset.origin_index
    return {
        "sources": dataset.batch(sources).numpy(),
        "targets": dataset.batch(targets).numpy(),
        # recorded indices are the images' indices in the full source dataset
        "source_indices": [int(origin[i]) for i in sources],
        "target_indices": [int(origin[i]) for i in targets],
    }


def plan_tasks(cfg: SweepConfig, rows: dict[str, dict[str, Any]], store: Store) -> tuple[list[AttackTask], int]:
    """The tasks still to run, and how many were already done (files that read back).

    What is done is read from the files' names (``<mode>-<similarity>-p<first>-<last>``), not
    matched against this run's chunking, so a re-run with another ``pairs_per_task`` (or the
    other solver, whose default task size differs) attacks only the pairs no readable file
    covers, in contiguous runs of at most that many pairs, and never writes a pair twice.
    """
    size = cfg.resources.resolved_pairs_per_task(cfg.attack)
    n_pairs = cfg.attack.n_pairs
    covered: dict[tuple[str, str, str], set[int]] = {}
    done = 0
    for relpath in store.list_files(layout.ATTACKS, ".parquet"):
        key = AttackTask.parse_relpath(relpath)
        if key is None or not _readable(store, relpath):
            continue
        trial_id, mode, similarity, first, last = key
        covered.setdefault((trial_id, mode, similarity), set()).update(range(first, last + 1))
        done += 1
    todo = []
    for row in rows.values():
        if row["status"] != "ok" or not store.exists(layout.checkpoint_file(row["trial_id"])):
            continue
        trial = {k: row[k] for k in schema.TRIAL_FIELDS}
        for mode, similarity in cfg.attack.tasks():
            have = covered.get((row["trial_id"], mode, similarity), set())
            missing = [p for p in range(n_pairs) if p not in have]
            for run in _contiguous_runs(missing):
                for i in range(0, len(run), size):
                    todo.append(AttackTask(trial, mode, similarity, tuple(run[i:i + size])))
    return todo, done


def _contiguous_runs(values: list[int]) -> list[list[int]]:
    """[0, 1, 2, 5, 6, 9] -> [[0, 1, 2], [5, 6], [9]] (values ascending)."""
    runs: list[list[int]] = []
    for v in values:
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return runs


def _readable(store: Store, relpath: str) -> bool:
    try:
        store.read_table(relpath, columns=["lam"])
        return True
    except Exception:  # truncated or corrupt: report and redo
        print(f"attacks: {relpath} is unreadable; its attacks will be redone")
        store.delete(relpath)
        return False



@ray.remote
def attack_task(task: AttackTask, pairs: dict[str, Any], config: AttackConfig, out: str,
                sweep_name: str, cpus: float, plugins: tuple[str, ...] = ()) -> float:
    """Attack one chunk of pairs of one checkpoint; write its rows and pictures; return the
    seconds of compute it took."""
    import_plugins(plugins)  # before the checkpoint names its kind and the config its similarity
    import torch

    from attacks.run import run_attacks as attack
    from models import load_checkpoint
    from models.errors import CheckpointError

    started = time.perf_counter()
    torch.set_num_threads(max(1, int(cpus)))
    store = Store(out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    relpath = layout.checkpoint_file(task.trial["trial_id"])
    with tempfile.TemporaryDirectory(dir=local_tmp_dir()) as folder:
        local = store.download(relpath, Path(folder) / "model.pt")
        try:
            model, _, _ = load_checkpoint(local, map_location=device)
        except CheckpointError as exc:  # name the results folder's file, not the local copy
            raise CheckpointError(str(exc).replace(str(local), store.uri_of(relpath))) from None
    chunk = list(task.pairs)
    rows, gallery = attack(
        model,
        torch.from_numpy(pairs["sources"][chunk]),
        torch.from_numpy(pairs["targets"][chunk]),
        pair_ids=chunk,
        source_indices=[pairs["source_indices"][i] for i in chunk],
        target_indices=[pairs["target_indices"][i] for i in chunk],
        lams=config.resolved_lams(),
        mode=task.mode,
        similarity=task.similarity,
        config=config,
    )
    identity = {"sweep": sweep_name, **task.trial}
    for picture in gallery:
        for panel in schema.GALLERY_PANELS:
            picture[panel] = np.ascontiguousarray(picture[panel]).tobytes()
    # Pictures first, rows last: a rows file on disk means the task is complete.
    store.write_table(task.gallery_relpath, schema.table([{**identity, **g} for g in gallery], schema.GALLERY))
    store.write_table(task.relpath, schema.table([{**identity, **r} for r in rows], schema.ATTACKS))
    return time.perf_counter() - started
