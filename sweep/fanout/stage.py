"""The attack stage on the driver: the tasks still to do (``sweep.fanout.tasks``) run as Ray
tasks against every finished checkpoint, each writing Parquet.

Each task writes its rows as its own Parquet file with a deterministic name, atomically: a re-run
skips the files already written (their keys are done) and rewrites a file it cannot read, so
nothing is attacked or written twice. The driver counts progress, reports the tasks that failed
after their retries, and logs each trial's attack summaries to MLflow.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray

from results import layout
from results.errors import UserError
from results.store import Store
from results.vocabulary import LATENT, OUTPUT
from sweep.config import SweepConfig
from sweep.fanout.tasks import AttackTask, attack_pairs, attack_task, plan_tasks
from sweep.infra.progress import Progress
from sweep.infra.tracking import Tracker


@dataclass
class FanoutTiming:
    """How long a fan-out took against the compute its tasks did.

    ``ideal`` is the makespan of the measured task times list-scheduled in the order the tasks
    finished on ``slots`` parallel slots with nothing in between: what the fan-out would take if Ray cost
    nothing (no scheduling, worker start-up or result transfer). ``overhead`` = wall / ideal − 1.
    """

    wall: float                 # first submission to last result, seconds
    task_seconds: list[float]   # each finished task's own time, measured inside the task
    slots: int                  # tasks the cluster runs at once

    @property
    def compute(self) -> float:
        return float(sum(self.task_seconds))

    @property
    def ideal(self) -> float:
        free = [0.0] * max(1, self.slots)
        for seconds in self.task_seconds:
            heapq.heapreplace(free, free[0] + seconds)
        return max(free)

    @property
    def overhead(self) -> float:
        return self.wall / self.ideal - 1.0 if self.ideal > 0 else 0.0

    def summary(self) -> str:
        return (f"{len(self.task_seconds)} tasks in {self.wall:.1f}s wall, {self.compute:.1f}s of "
                f"task compute on {self.slots} slot(s); ideal {self.ideal:.1f}s, Ray overhead "
                f"{100 * self.overhead:.1f}%")


def run_attacks(cfg: SweepConfig, store: Store, rows: dict[str, dict[str, Any]],
                tracker: Tracker | None) -> dict[str, str]:
    """Run the attack tasks still to do; returns trial_id -> reason for the trials whose attacks
    failed (after retries), which are also tagged in their MLflow runs."""
    todo, done = plan_tasks(cfg, rows, store)
    total = len(todo) + done
    lams_per_pair = len(cfg.attack.resolved_lams())
    failed: dict[str, str] = {}
    if not todo:
        print(f"attacks: all {total} tasks already written")
    else:
        print(f"attacks: {len(todo)} of {total} tasks to run "
              f"({sum(len(t.pairs) for t in todo) * lams_per_pair:,} attacks)")
        failed, _ = run_tasks(cfg, store, todo, done, total)
    if tracker is not None:
        log_attack_summaries(store, tracker, rows)
        for trial_id, reason in failed.items():
            if trial_id in rows:
                tracker.finish(rows[trial_id], "FAILED", tags={"attack_status": "failed",
                                                               "attack_reason": reason[:5000]})
    return failed


def run_tasks(cfg: SweepConfig, store: Store, todo: list[AttackTask], done: int = 0,
              total: int | None = None) -> tuple[dict[str, str], FanoutTiming]:
    """Run ``todo`` as Ray tasks; returns trial_id -> why its tasks failed (after retries), and
    the fan-out's timing."""
    total = len(todo) + done if total is None else total
    res = cfg.resources
    remote = attack_task.options(
        num_cpus=res.cpus_per_attack_task,
        num_gpus=res.gpus_per_attack_task,
        resources=res.custom_per_attack_task or None,
        max_retries=res.task_retries,
    )
    pair_refs = {name: ray.put(attack_pairs(cfg, name))
                 for name in sorted({t.trial["dataset"] for t in todo})}
    tasks = {}
    for task in todo:
        ref = remote.remote(task, pair_refs[task.trial["dataset"]], cfg.attack, store.uri, cfg.name,
                            res.cpus_per_attack_task, tuple(cfg.plugins))
        tasks[ref] = task
    pending = list(tasks)
    progress = Progress("attacks", total, done, unit="task")
    finished, task_seconds, started = done, [], time.monotonic()
    failures: dict[str, list[str]] = {}  # trial_id -> why each of its failed tasks failed
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
        for ref in ready:
            try:
                task_seconds.append(ray.get(ref))
                finished += 1
            except ray.exceptions.RayError as exc:  # retries used up: the rest goes on
                failures.setdefault(tasks[ref].trial["trial_id"], []).append(_why(exc))
        failed = sum(len(v) for v in failures.values())
        progress.update(finished + failed, f"{len(pending)} queued or running"
                        + (f", {failed} failed" if failed else ""))
    progress.close()
    timing = FanoutTiming(time.monotonic() - started, task_seconds, _slots(res))
    print(f"attacks: {timing.summary()}")
    if failures:
        count = sum(len(v) for v in failures.values())
        print(f"attacks: {count} task(s) of {len(failures)} trial(s) failed; their trials are marked "
              f"failed (fix the cause, then re-run the command to redo them):")
        for trial_id, reasons in sorted(failures.items()):
            print(f"  {trial_id}: {len(reasons)} task(s): {reasons[0]}")
    return {trial_id: reasons[0] for trial_id, reasons in failures.items()}, timing


def _slots(res) -> int:
    """Attack tasks the cluster can run at once: its CPUs (or GPUs) over a task's request."""
    total = ray.cluster_resources()
    counts = [total.get("CPU", 0) / res.cpus_per_attack_task if res.cpus_per_attack_task else None,
              total.get("GPU", 0) / res.gpus_per_attack_task if res.gpus_per_attack_task else None]
    counts = [int(c) for c in counts if c is not None]
    return max(1, min(counts)) if counts else 1


def _why(exc: Exception) -> str:
    """One line saying why a task failed: the user error it raised, else the exception's end."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, UserError):
        return f"{type(cause).__name__}: {cause}"[:1000]
    lines = str(exc).strip().splitlines()
    return (lines[-1] if lines else type(exc).__name__)[:300]


def read_attack_rows(store: Store, columns: list[str] | None = None):
    """Every readable attack file of the results folder as one pandas frame."""
    import pyarrow as pa

    tables = []
    for relpath in store.list_files(layout.ATTACKS, ".parquet"):
        try:
            tables.append(store.read_table(relpath, columns=columns))
        except Exception:  # unreadable files are reported and redone by plan_tasks
            continue
    if not tables:
        return None
    return pa.concat_tables(tables).to_pandas()


def log_attack_summaries(store: Store, tracker: Tracker, rows: dict[str, dict[str, Any]]) -> None:
    """Per trial and (mode, similarity) into the trial's MLflow run: the mean over pairs of the
    minimum objective, the mean objective over pairs and lambdas, the mean AUDDC, the mean
    adversarial-target distance at the selected lambda, the attacks flagged worse than not
    attacking, and (latent attack) the mean distortion budget that removes half the clean
    distance."""
    frame = read_attack_rows(store, ["trial_id", "mode", "similarity", "pair", "objective",
                                     "auddc", "selected", "adv_target_l2", "worse_than_clean",
                                     "budget_50"])
    if frame is None:
        return
    # MLflow metric prefixes: latent_<similarity> per latent similarity, output for the one output attack
    frame["attack"] = np.where(frame["mode"] == LATENT, f"{LATENT}_" + frame["similarity"], OUTPUT)
    for (trial_id, attack_name), group in frame.groupby(["trial_id", "attack"]):
        if trial_id not in rows:
            continue
        per_pair = group.groupby("pair")
        metrics = {
            f"{attack_name}_objective_min_mean": per_pair["objective"].min().mean(),
            f"{attack_name}_objective_mean": group["objective"].mean(),
            f"{attack_name}_auddc_mean": per_pair["auddc"].first().mean(),
            f"{attack_name}_selected_adv_target_l2_mean": group.loc[group["selected"], "adv_target_l2"].mean(),
            f"{attack_name}_worse_than_clean": int(group["worse_than_clean"].fillna(False).astype(bool).sum()),
        }
        if attack_name != OUTPUT:
            metrics[f"{attack_name}_budget_50_mean"] = per_pair["budget_50"].first().mean()
        tracker.log_metrics(rows[trial_id], metrics, step=int(rows[trial_id].get("steps") or 0))
