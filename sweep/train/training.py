"""The training stage: the grid as Ray Tune trials, resumable, tracked from the driver."""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
from pathlib import Path
from typing import Any

# Tune's own console output would interleave with the sweep's progress bar: keep it quiet
# (set before Tune is imported, which reads them at import).
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

from ray import tune  # noqa: E402

from results import layout, schema
from results.store import Store, local_tmp_dir
from sweep.config import SweepConfig
from sweep.config.trials import TrialSpec
from sweep.infra import debug_dump
from sweep.infra.progress import Progress
from sweep.infra.tracking import Tracker

TUNE_NAME = layout.TUNE

# The driver's tracker and progress bar. Tune pickles callbacks into its experiment state and
# restores them on resume, so the callbacks hold no connection or terminal themselves: they use
# whatever the current driver process set here.
_TRACKER: Tracker | None = None
_PROGRESS: "TrainingProgress | None" = None


def finished_trials(store: Store) -> dict[str, dict[str, Any]]:
    """trial_id -> train row, for every trial whose row is readable (ok, diverged or failed)."""
    rows = {}
    for relpath in store.list_files(layout.TRAIN, ".parquet"):
        try:
            for row in store.read_table(relpath).to_pylist():
                rows[row["trial_id"]] = row
        except Exception:  # a corrupt row file means the trial is not finished
            store.delete(relpath)
    return rows


def run_training(cfg: SweepConfig, specs: list[TrialSpec], store: Store, tracker: Tracker | None) -> None:
    global _TRACKER, _PROGRESS
    retrain_broken(store, finished_trials(store), tracker)
    done = finished_trials(store)
    # failed trials run again; ok and diverged ones are final
    pending = [s for s in specs if done.get(s.trial_id, {}).get("status") not in ("ok", "diverged")]
    if not pending:
        print(f"training: all {len(specs)} trials already finished")
        return

    _TRACKER = tracker
    debug_dump.install()
    experiment = store.uri_of(TUNE_NAME)
    restore = tune.Tuner.can_restore(experiment) and prepare_restore(store)
    if restore:
        print(f"training: resuming the interrupted Tune experiment at {experiment}")
    else:
        print(f"training: {len(pending)} of {len(specs)} trials to run")
    _PROGRESS = TrainingProgress(len(specs), cfg.train.steps, len(specs) - len(pending))
    try:
        if restore:
            tuner = tune.Tuner.restore(experiment, trainable=_trainable(cfg), resume_unfinished=True,
                                       resume_errored=True)
            _record_failures(cfg, store, tuner.fit())
            # Tune reruns only what its experiment left unfinished or errored. A trial it counts
            # as finished whose results were removed since (retrain_broken) can only run in a
            # new experiment; every trial of this one has ended, so it has nothing left to resume.
            done = finished_trials(store)
            pending = [s for s in specs if s.trial_id not in done]
            if not pending:
                return
            store.delete(f"{TUNE_NAME}/tuner.pkl")  # first: a folder left half-deleted is not restored
            store.delete_dir(TUNE_NAME)
            _PROGRESS.progress.note(f"training: {len(pending)} of {len(specs)} trials to run")
        _record_failures(cfg, store, _new_tuner(cfg, pending, store).fit())
    finally:
        _PROGRESS.close()
        _PROGRESS = None


def prepare_restore(store: Store) -> bool:
    """Whether the interrupted Tune experiment in ``tune/`` can be resumed; made safe first.

    Tune (Ray 2.60) keeps an experiment's trial list (``experiment_state-*.json``) and its
    searcher (``basic-variant-state-*.json``) in two files, uploaded to the results folder one
    beside the other after each save. A kill between the two uploads leaves them torn: the
    searcher counts as running a trial that the trial list has ended or does not hold (seen in
    an S3 bucket for 0.1-0.25 s at every trial boundary). Restored, such a searcher never sees
    that trial end, so with ``max_concurrent_trials`` it never hands out another one, and Tune's
    controller waits in ``_update_trial_queue`` forever with trials left (issue 33).

    The searcher only says which grid points are left to hand out, which the ``train/`` rows
    say too. Its files are removed: the restored experiment finishes the trials its list holds
    (from their checkpoints) and hands out none, and the rest of the grid runs in a new
    experiment (run_training). An experiment killed before its first save (or with no trial
    saved yet), or whose newest state file is unreadable, is not resumed but started anew
    (finished trials stay finished: their rows are in ``train/``).
    """
    files = [f for f in store.list_files(TUNE_NAME) if f.count("/") == 1]
    states = sorted(f for f in files if posixpath.basename(f).startswith("experiment_state-"))
    problem = None if states else "has no saved state (killed before its first save)"
    if states:
        try:
            state = json.loads(store.read_bytes(states[-1]))  # the file Tune would restore from
            if not state.get("trial_data"):
                problem = "has no trial saved yet"
        except (ValueError, OSError, AttributeError) as exc:
            problem = f"has an unreadable state file ({posixpath.basename(states[-1])}: {str(exc)[:100]})"
    if problem:
        print(f"training: the interrupted Tune experiment at {store.uri_of(TUNE_NAME)} {problem}; "
              "starting it anew", flush=True)
        store.delete(f"{TUNE_NAME}/tuner.pkl")  # first: a folder left half-deleted is not restored
        store.delete_dir(TUNE_NAME)
        return False
    for relpath in files:
        if posixpath.basename(relpath).startswith("basic-variant-state-"):
            store.delete(relpath)
    return True


def _trainable(cfg: SweepConfig):
    from sweep.train.trainable import train_trial  # torch, imported when a stage trains

    res = cfg.resources
    return tune.with_resources(train_trial, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial,
                                             **res.custom_per_trial})


def _new_tuner(cfg: SweepConfig, pending: list[TrialSpec], store: Store) -> tune.Tuner:
    from sweep.train.trainable import TrialSetup

    res = cfg.resources
    return tune.Tuner(
        _trainable(cfg),
        param_space=TrialSetup.param_space(cfg, pending, store.uri),
        # Reused workers keep their dataset cache (cached_dataset) from trial to trial: a
        # fresh process per trial re-imports torch and re-builds the dataset, which made
        # tiny trials ~4x slower (benchmarks/load.py).
        tune_config=tune.TuneConfig(max_concurrent_trials=res.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(
            name=TUNE_NAME,
            storage_path=store.uri,
            failure_config=tune.FailureConfig(max_failures=res.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=[TrackingCallback(), ProgressCallback()],
            verbose=0,
        ),
    )


def retrain_broken(store: Store, rows: dict[str, dict[str, Any]], tracker: Tracker | None) -> list[str]:
    """Trials marked ok whose model file is missing or unreadable are trained again: their
    results (which came from that model) are removed, the ``train/`` row last, so a re-run
    that stops half-way finds the trial still broken. Returns their ids."""
    broken = broken_checkpoints(store, rows)
    for trial_id, why in broken.items():
        print(f"training: {store.uri_of(layout.checkpoint_file(trial_id))} {why}; retraining {trial_id} "
              "(its noise, attack and gallery rows go with it)", flush=True)
        for folder in (layout.ATTACKS, layout.GALLERY):
            store.delete_dir(f"{folder}/{trial_id}")
        store.delete(layout.noise_file(trial_id))
        store.delete(layout.checkpoint_file(trial_id))
        if tracker is not None:
            tracker.forget(rows[trial_id], reason=f"retrained: checkpoint {why}")
        store.delete(layout.train_file(trial_id))
    return sorted(broken)


def broken_checkpoints(store: Store, rows: dict[str, dict[str, Any]]) -> dict[str, str]:
    """trial_id -> what is wrong with its model file, for the trials marked ok. Each file is
    read with the project's loader (the check the attack tasks would make)."""
    from models import load_checkpoint
    from models.errors import CheckpointError

    broken = {}
    with tempfile.TemporaryDirectory(dir=local_tmp_dir()) as folder:
        for trial_id, row in sorted(rows.items()):
            relpath = layout.checkpoint_file(trial_id)
            if row.get("status") != "ok":
                continue
            if not store.exists(relpath):
                broken[trial_id] = "is missing"
                continue
            local = store.path(relpath) if store.is_local else store.download(relpath, Path(folder) / "model.pt")
            try:
                load_checkpoint(local, map_location="cpu")
            except CheckpointError as exc:  # "checkpoint PATH is corrupt or truncated: what to do"
                cause = str(exc).split(str(local), 1)[-1].strip()
                broken[trial_id] = cause.split(": ")[0].split(" [")[0]
    return broken


def _record_failures(cfg: SweepConfig, store: Store, results) -> None:
    """A trial that kept failing (after its retries) gets a train row saying why."""
    done = finished_trials(store)
    for result in results:
        trial = (result.config or {}).get("trial")
        if result.error is None or trial is None or trial["trial_id"] in done:
            continue
        reason = f"{type(result.error).__name__}: {str(result.error).strip().splitlines()[-1][:500]}"
        row = {"sweep": cfg.name, **trial, "status": "failed", "reason": reason}
        store.write_table(layout.train_file(trial["trial_id"]), schema.table([row], schema.TRAIN))


class TrackingCallback(tune.Callback):
    """Logs each trial's training curves to its MLflow child run, from the driver. Only what the
    trainable reports as curves (``loss``, ``train_*``) is logged: Tune adds its own fields to
    every result (pid, timestamp, time_this_iter_s, training_iteration, ...) and the final
    result repeats the grid fields, none of which are metrics of the model. The evaluation is
    logged from the ``train/`` row (pipeline.record_trials)."""

    def on_trial_start(self, iteration, trials, trial, **info):
        if _TRACKER is not None:
            _TRACKER.child(trial.config["trial"])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        curves = {k: v for k, v in result.items() if k == "loss" or k.startswith("train_")}
        if _TRACKER is not None and "step" in result and curves:
            _TRACKER.log_metrics(trial.config["trial"], curves, step=int(result["step"]))

    def on_trial_complete(self, iteration, trials, trial, **info):
        if _TRACKER is not None:
            status = (trial.last_result or {}).get("status", "ok")
            _TRACKER.finish(trial.config["trial"], "FINISHED" if status == "ok" else "FAILED",
                            tags={"status": status})

    def on_trial_error(self, iteration, trials, trial, **info):
        if _TRACKER is not None:
            _TRACKER.finish(trial.config["trial"], "FAILED", tags={"status": "failed"})


class TrainingProgress:
    """The training stage's bar, counted in training steps over all trials (a trial is a coarse
    unit: the smoke sweep has 7, two running at a time), with trials ended and running beside."""

    def __init__(self, trials: int, steps_per_trial: int, already_done: int):
        self.trials, self.steps_per_trial, self.already_done = trials, steps_per_trial, already_done
        self.steps: dict[str, int] = {}  # trial_id -> last step reported in this run
        self.ended: set[str] = set()
        self.progress = Progress("training", trials * steps_per_trial,
                                 already_done * steps_per_trial, unit="step")

    def result(self, trial_id: str, result: dict[str, Any]) -> None:
        if result.get("status") in ("ok", "diverged"):  # a diverged trial has nothing left to do
            self.steps[trial_id] = self.steps_per_trial
        elif "step" in result:
            self.steps[trial_id] = int(result["step"])

    def ended_trial(self, trial_id: str) -> None:
        self.ended.add(trial_id)
        self.steps[trial_id] = self.steps_per_trial

    def show(self, running: int) -> None:
        done = self.already_done * self.steps_per_trial + sum(self.steps.values())
        ended = self.already_done + len(self.ended)
        self.progress.update(min(done, self.progress.total),
                             f"{ended}/{self.trials} trials, {running} running")

    def close(self) -> None:
        self.progress.close()


class ProgressCallback(tune.Callback):
    """Feeds the driver's TrainingProgress (held at module level for the reason _TRACKER is)."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if _PROGRESS is not None:
            _PROGRESS.result(trial.config["trial"]["trial_id"], result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if _PROGRESS is not None:
            _PROGRESS.ended_trial(trial.config["trial"]["trial_id"])

    on_trial_error = on_trial_complete

    def on_step_end(self, iteration, trials, **info):
        if _PROGRESS is not None:
            _PROGRESS.show(sum(1 for t in trials if t.status == "RUNNING"))
