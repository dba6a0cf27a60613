"""The attack fan-out's bookkeeping: its timing summary (the ideal wall time is the tasks'
measured compute list-scheduled on the cluster's slots, checked against schedules worked out by
hand) and its planning (what is done is read from the files, whatever chunking wrote them)."""

from __future__ import annotations

import pytest

from sweep.fanout.stage import FanoutTiming


@pytest.mark.parametrize("tasks, slots, ideal", [
    ([4.0, 3.0, 2.0, 1.0], 1, 10.0),        # one slot: the sum
    ([4.0, 3.0, 2.0, 1.0], 2, 5.0),         # 4 | 3+2 -> 4+1=5, 5
    ([1.0, 1.0, 1.0, 1.0, 8.0], 2, 10.0),   # 1+1 | 1+1 | the 8 starts at 2 -> 10
    ([5.0], 4, 5.0),                         # more slots than tasks: the longest task
    ([], 2, 0.0),
])
def test_ideal_is_the_list_schedule(tasks, slots, ideal):
    timing = FanoutTiming(wall=12.0, task_seconds=tasks, slots=slots)
    assert timing.ideal == pytest.approx(ideal)
    assert timing.compute == pytest.approx(sum(tasks))
    if ideal:
        assert timing.overhead == pytest.approx(12.0 / ideal - 1)
    assert "Ray overhead" in timing.summary()


# --- planning: what is done is read from the files, whatever chunking wrote them -------------

def _config(n_pairs: int, pairs_per_task: int | None, solver: str = "scipy"):
    from attacks.config import AttackConfig
    from sweep.config import ResourceConfig, SweepConfig

    return SweepConfig(attack=AttackConfig(n_pairs=n_pairs, modes=("latent",), solver=solver),
                       resources=ResourceConfig(pairs_per_task=pairs_per_task))


def _store_with(tmp_path, files: dict[str, bytes | None]):
    """A results folder with one checkpoint and the given attack files (None: a readable
    Parquet file; bytes: those bytes, e.g. a truncated file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from results.store import Store

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "t1.pt").write_bytes(b"model")
    for name, content in files.items():
        path = tmp_path / "attacks" / "t1" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            pq.write_table(pa.table({"lam": [0.0, 1.0]}), path)
        else:
            path.write_bytes(content)
    return Store(str(tmp_path))


ROW = {"trial_id": "t1", "status": "ok", "dataset": "d", "model": "vae", "beta": 1.0,
       "layers": 1, "z_dim": 2, "seed": 0}


def test_plan_attacks_only_the_pairs_no_file_covers(tmp_path):
    from sweep.fanout.tasks import plan_tasks

    # written by an earlier run with 2 pairs per task, one file truncated since
    store = _store_with(tmp_path, {"latent-kl-p000-001.parquet": None,
                                   "latent-kl-p004-004.parquet": None,
                                   "latent-kl-p006-007.parquet": b"PAR1 truncated"})
    todo, done = plan_tasks(_config(n_pairs=9, pairs_per_task=3), {"t1": ROW}, store)
    assert done == 2
    assert [t.pairs for t in todo] == [(2, 3), (5, 6, 7), (8,)]
    assert not (tmp_path / "attacks" / "t1" / "latent-kl-p006-007.parquet").exists()
    assert {t.relpath for t in todo} == {"attacks/t1/latent-kl-p002-003.parquet",
                                         "attacks/t1/latent-kl-p005-007.parquet",
                                         "attacks/t1/latent-kl-p008-008.parquet"}


def test_default_task_size_follows_the_solver(tmp_path):
    from sweep.fanout.tasks import plan_tasks

    store = _store_with(tmp_path, {})
    scipy_tasks, _ = plan_tasks(_config(n_pairs=4, pairs_per_task=None), {"t1": ROW}, store)
    batched_tasks, _ = plan_tasks(_config(n_pairs=4, pairs_per_task=None, solver="batched"),
                                  {"t1": ROW}, store)
    assert [t.pairs for t in scipy_tasks] == [(0,), (1,), (2,), (3,)]
    assert [t.pairs for t in batched_tasks] == [(0, 1, 2, 3)]


def test_task_size_asks_the_solver_what_it_is(tmp_path, monkeypatch):
    """A solver added to the registry under any name is asked whether it batches (its
    ``batched`` attribute), not recognised by the name "batched"."""
    from attacks import solvers
    from sweep.fanout.tasks import plan_tasks

    class OneBatch(solvers.ScipyLBFGSB):
        name, batched = "my-lbfgs", True

    monkeypatch.setitem(solvers.SOLVERS, "my-lbfgs", OneBatch)
    tasks, _ = plan_tasks(_config(n_pairs=3, pairs_per_task=None, solver="my-lbfgs"), {"t1": ROW},
                          _store_with(tmp_path, {}))
    assert [t.pairs for t in tasks] == [(0, 1, 2)]
    assert solvers.solves_in_batches("batched") and not solvers.solves_in_batches("scipy")


def test_relpath_parses_back():
    from attacks.objectives import LATENT_SIMILARITIES
    from sweep.fanout.tasks import AttackTask

    for mode, similarity in [("latent", s) for s in LATENT_SIMILARITIES] + [("output", "elbo")]:
        task = AttackTask({"trial_id": "dsprites-seatbelt-b6-L2-z6-s0"}, mode, similarity, (7, 8, 9))
        assert AttackTask.parse_relpath(task.relpath) == (
            "dsprites-seatbelt-b6-L2-z6-s0", mode, similarity, 7, 9)
    assert AttackTask.parse_relpath("attacks/t1/notes.parquet") is None
