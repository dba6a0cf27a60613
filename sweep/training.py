"""The training stage: the grid as Ray Tune trials, resumable, tracked from the driver."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any

# Tune's own console output would interleave with the sweep's progress line: keep it quiet
# (set before Tune is imported, which reads them at import).
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

from ray import tune  # noqa: E402

from sweep import schema
from sweep.config import SweepConfig
from sweep.progress import Progress
from sweep.store import Store
from sweep.tracking import Tracker
from sweep.trials import TrialSpec

TUNE_NAME = "tune"

# The driver's tracker. Tune pickles callbacks into its experiment state and restores them on
# resume, so the callbacks hold no connection themselves: they use whatever tracker the
# current driver process set here.
_TRACKER: Tracker | None = None


def finished_trials(store: Store) -> dict[str, dict[str, Any]]:
    """trial_id -> train row, for every trial whose row is readable (ok, diverged or failed)."""
    rows = {}
    for relpath in store.list_files("train", ".parquet"):
        try:
            for row in store.read_table(relpath).to_pylist():
                rows[row["trial_id"]] = row
        except Exception:  # a corrupt row file means the trial is not finished
            store.delete(relpath)
    return rows


def run_training(cfg: SweepConfig, specs: list[TrialSpec], store: Store, tracker: Tracker | None) -> None:
    global _TRACKER
    done = finished_trials(store)
    # failed trials run again; ok and diverged ones are final
    pending = [s for s in specs if done.get(s.trial_id, {}).get("status") not in ("ok", "diverged")]
    if not pending:
        print(f"training: all {len(specs)} trials already finished")
        return

    _TRACKER = tracker
    res = cfg.resources
    resources = {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial, **res.custom_per_trial}
    from sweep.trainable import train_trial

    trainable = tune.with_resources(train_trial, resources)
    experiment = store.uri_of(TUNE_NAME)
    progress_callback = ProgressCallback(len(specs), len(specs) - len(pending))
    if tune.Tuner.can_restore(experiment):
        print(f"training: resuming the interrupted Tune experiment at {experiment}")
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        print(f"training: {len(pending)} of {len(specs)} trials to run")
        tuner = tune.Tuner(
            trainable,
            param_space={
                "trial": tune.grid_search([s.to_dict() for s in pending]),
                "train": asdict(cfg.train), "data": asdict(cfg.data), "health": asdict(cfg.health),
                "out": store.uri, "sweep": cfg.name, "cpus": res.cpus_per_trial,
            },
            # Reused workers keep their dataset cache (cached_dataset) from trial to trial: a
            # fresh process per trial re-imports torch and re-builds the dataset, which made
            # tiny trials ~4x slower (benchmarks/load.py).
            tune_config=tune.TuneConfig(max_concurrent_trials=res.max_concurrent, reuse_actors=True),
            run_config=tune.RunConfig(
                name=TUNE_NAME,
                storage_path=store.uri,
                failure_config=tune.FailureConfig(max_failures=res.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=[TrackingCallback(), progress_callback],
                verbose=0,
            ),
        )
    results = tuner.fit()
    _record_failures(cfg, store, results)


def _record_failures(cfg: SweepConfig, store: Store, results) -> None:
    """A trial that kept failing (after its retries) gets a train row saying why."""
    done = finished_trials(store)
    for result in results:
        trial = (result.config or {}).get("trial")
        if result.error is None or trial is None or trial["trial_id"] in done:
            continue
        reason = f"{type(result.error).__name__}: {str(result.error).strip().splitlines()[-1][:500]}"
        row = {"sweep": cfg.name, **trial, "status": "failed", "reason": reason}
        store.write_table(f"train/{trial['trial_id']}.parquet", schema.table([row], schema.TRAIN))


class TrackingCallback(tune.Callback):
    """Logs each trial's reports to its MLflow child run, from the driver."""

    def on_trial_start(self, iteration, trials, trial, **info):
        if _TRACKER is not None:
            _TRACKER.child(trial.config["trial"])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if _TRACKER is not None and "step" in result:
            metrics = {k: v for k, v in result.items() if k == "loss" or k.startswith("train_")
                       or result.get("status") == "ok"}
            _TRACKER.log_metrics(trial.config["trial"], metrics, step=int(result["step"]))

    def on_trial_complete(self, iteration, trials, trial, **info):
        if _TRACKER is not None:
            status = (trial.last_result or {}).get("status", "ok")
            _TRACKER.finish(trial.config["trial"], "FINISHED" if status == "ok" else "FAILED",
                            tags={"status": status})

    def on_trial_error(self, iteration, trials, trial, **info):
        if _TRACKER is not None:
            _TRACKER.finish(trial.config["trial"], "FAILED", tags={"status": "failed"})


class ProgressCallback(tune.Callback):
    """One compact progress line: trials finished / running / pending and an ETA."""

    def __init__(self, total: int, already_done: int):
        self.progress = Progress("training", total, already_done, unit="trials")
        self.last_print = 0.0

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self.last_print < 5:
            return
        self.last_print = time.monotonic()
        running = sum(1 for t in trials if t.status == "RUNNING")
        ended = sum(1 for t in trials if t.status in ("TERMINATED", "ERROR"))
        self.progress.update(self.progress.already_done + ended, extra=f"{running} running")

    def on_experiment_end(self, trials, **info):
        ended = sum(1 for t in trials if t.status in ("TERMINATED", "ERROR"))
        self.progress.update(self.progress.already_done + ended, final=True)
