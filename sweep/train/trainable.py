"""The Tune trainable: trains one grid point, checkpoints it, evaluates it, writes its results.

A trial writes its own results (final model file, the ``train/`` row, the ``noise/`` rows) into
the results folder before its last report, so a driver killed at any moment loses nothing: the
``train/`` row, written last, marks the trial finished. Training resumes from the latest Tune
checkpoint (model, optimiser, step and the batch stream's position).

Tune passes the trial its config as plain data (``TrialSetup.param_space``); the trainable
rebuilds the typed configs from it first thing (``TrialSetup.from_dict``), after importing the
sweep's plugins.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from models import build_model, load_checkpoint, save_checkpoint
from models.device import prepare_for_training
from models.speed import TrainingPrecision, adam, configure_device
from results import layout, schema
from results.store import Store, local_tmp_dir
from sweep.config import DataConfig, SweepConfig, TrainConfig, model_config_for
from sweep.config.plugins import import_plugins
from sweep.config.trials import TrialSpec
from sweep.data import load_dataset
from sweep.train.evaluate import evaluate
from sweep.train.health import HealthConfig, verdict

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"

# Fault injection for the reliability tests (tests/test_faults.py), off unless set:
# "TRIAL_ID=LR[,TRIAL_ID=LR...]" trains those trials with that learning rate, so a trial can be
# made to diverge for real (e.g. lr 1e30: the first Adam step sends the weights to ~1e30 and
# the next loss overflows) while the rest of the grid trains normally.
FAULT_LR_ENV = "SEATBELT_FAULT_LR"


@dataclass(frozen=True)
class TrialSetup:
    """Everything one trial needs, typed; crosses Tune as the plain dict of ``param_space``."""

    trial: TrialSpec
    train: TrainConfig
    data: DataConfig
    health: HealthConfig
    out: str                 # the results folder's URI
    sweep: str               # the sweep's name
    cpus: float              # CPUs the trial has: its torch threads
    plugins: tuple[str, ...] = ()

    @staticmethod
    def param_space(cfg: SweepConfig, trials: list[TrialSpec], out: str) -> dict[str, Any]:
        """Tune's param space: one trial per grid point (a grid search over ``trials``)."""
        return {"trial": tune.grid_search([t.to_dict() for t in trials]),
                "train": dataclasses.asdict(cfg.train), "data": dataclasses.asdict(cfg.data),
                "health": dataclasses.asdict(cfg.health), "out": out, "sweep": cfg.name,
                "cpus": cfg.resources.cpus_per_trial, "plugins": list(cfg.plugins)}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "TrialSetup":
        """The inverse of ``param_space`` for one trial (a Tune experiment of an older version
        has no plugins and no health settings: their defaults)."""
        return cls(TrialSpec.from_dict(config["trial"]), TrainConfig(**config["train"]),
                   DataConfig(**config["data"]), HealthConfig(**config.get("health", {})),
                   config["out"], config["sweep"], float(config.get("cpus", 1)),
                   tuple(config.get("plugins", ())))

    @property
    def identity(self) -> dict[str, Any]:
        """The identity columns of the trial's train row (``results.schema.IDENTITY_FIELDS``)."""
        return {"sweep": self.sweep, **self.trial.to_dict()}

    def learning_rate(self) -> float:
        for item in filter(None, os.environ.get(FAULT_LR_ENV, "").split(",")):
            trial_id, _, lr = item.partition("=")
            if trial_id.strip() == self.trial.trial_id:
                return float(lr)
        return self.train.lr


@functools.lru_cache(maxsize=2)
def cached_dataset(name: str, data_dir: str | None, size: int | None, split_seed: int, held_out: float):
    """One copy per worker process: trials that reuse a worker skip re-loading."""
    return load_dataset(name, data_dir=data_dir, size=size, seed=split_seed, held_out=held_out)


@functools.lru_cache(maxsize=2)
def training_pixel_statistics(dataset) -> tuple[torch.Tensor, float]:
    """The training split's mean image and residual std, once per dataset and worker: the
    decoder starts from that mean image, and the health check compares with it."""
    return dataset.pixel_statistics("train")


def dataset_for(trial: TrialSpec, data: DataConfig):
    name = trial.dataset
    return cached_dataset(name, data.data_dirs.get(name), data.size, data.split_seed, data.held_out)


def train_trial(config: dict[str, Any]) -> None:
    """Tune function trainable; ``config`` is one trial's ``TrialSetup.param_space``."""
    import_plugins(config.get("plugins", ()))  # before any kind, dataset or architecture is named
    setup = TrialSetup.from_dict(config)
    store = Store(setup.out)
    if _already_finished(store, setup.trial.trial_id):
        # A driver killed after this trial wrote its results resumes it as unfinished:
        # report and stop rather than train it again.
        tune.report({"step": setup.train.steps, "status": "ok"})
        return
    torch.set_num_threads(max(1, int(setup.cpus)))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = dataset_for(setup.trial, setup.data)
    run = _start(setup, dataset, device)
    if _train(setup, dataset, run, device):  # False: it diverged, and says so in its train row
        _finish(setup, store, dataset, run)


@dataclass
class _Run:
    """What the steps of ``train_trial`` hand on: the model, its optimiser and precision, and how
    far training got (``seconds``: training time so far, a resumed trial's earlier runs included)."""

    model: Any
    optimizer: Any
    precision: TrainingPrecision
    step: int = 0
    seconds: float = 0.0


def _start(setup: TrialSetup, dataset, device: torch.device) -> _Run:
    """A new model and optimiser, or the ones of the trial's latest Tune checkpoint."""
    train = setup.train
    model = build_model(model_config_for(setup.trial, train, dataset))
    model.set_mean_image(training_pixel_statistics(dataset)[0])
    model = prepare_for_training(model, device)   # channels_last for conv nets (issue 15)
    precision = TrainingPrecision.choose(model, device, train.precision)
    configure_device(device)
    lr = setup.learning_rate()
    run = _Run(model, adam(model.parameters(), lr, device), precision)
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            model, run.step, extra = load_checkpoint(Path(folder) / MODEL_FILE, map_location=device)
            run.model = prepare_for_training(model, device)
            run.model.train()
            run.optimizer = adam(run.model.parameters(), lr, device)
            run.optimizer.load_state_dict(torch.load(Path(folder) / OPTIMIZER_FILE, weights_only=True))
            run.seconds = extra.get("seconds", 0.0)
    return run


def _train(setup: TrialSetup, dataset, run: _Run, device: torch.device) -> bool:
    """Train to ``train.steps``, reporting and checkpointing to Tune; False if the loss diverged."""
    trial, train, model, optimizer = setup.trial, setup.train, run.model, run.optimizer
    # The batch stream is a function of (seed, step), so a resumed trial sees the batches it
    # would have seen without the interruption.
    generator = torch.Generator().manual_seed(trial.seed * 1_000_003 + run.step)
    torch.manual_seed(trial.seed * 7919 + run.step)
    started = time.perf_counter()
    while run.step < train.steps:
        x = dataset.sample_batch(generator, train.batch_size, split="train").to(device)
        with run.precision.autocast():
            out = model.objective(x)
        if not torch.isfinite(out.loss):
            _finish_diverged(setup, run.step, run.seconds + time.perf_counter() - started, float(out.loss))
            return False
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        run.step += 1
        step = run.step
        if step % train.report_every == 0 or step % train.checkpoint_every == 0:
            metrics = {"step": step, "loss": float(out.loss),
                       **{f"train_{k}": float(v) for k, v in out.parts.items()}}
            if step % train.checkpoint_every == 0 and step < train.steps:
                elapsed = run.seconds + time.perf_counter() - started
                with tempfile.TemporaryDirectory(dir=local_tmp_dir()) as folder:
                    _save(folder, model, optimizer, step, elapsed)
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            else:
                tune.report(metrics)
    run.seconds += time.perf_counter() - started
    return True


def _finish(setup: TrialSetup, store: Store, dataset, run: _Run) -> None:
    """Evaluate the trained model and write its results: model file, noise rows, train row last."""
    trial, train, step, seconds = setup.trial, setup.train, run.step, run.seconds
    images_per_s = (train.steps * train.batch_size) / max(seconds, 1e-9)
    row, noise_rows = _evaluate(run.model, dataset, train, trial, setup.data.split_seed)
    if not all(math.isfinite(v) for v in (row[schema.TRAIN_ELBO], row["recon_loglik"])):
        _finish_diverged(setup, step, seconds, row[schema.TRAIN_ELBO], what="held-out ELBO")
        return
    row["health"], row["health_reason"] = verdict(row, run.model, setup.health)
    row.update(setup.identity, status="ok", reason="", steps=step, seconds=seconds, images_per_s=images_per_s,
               precision=run.precision.name, node_id=ray.get_runtime_context().get_node_id())

    with tempfile.TemporaryDirectory(dir=local_tmp_dir()) as folder:
        _save(folder, run.model, run.optimizer, step, seconds)
        store.upload_file(Path(folder) / MODEL_FILE, layout.checkpoint_file(trial.trial_id))
        store.write_table(layout.noise_file(trial.trial_id),
                          schema.table([{**setup.identity, **r} for r in noise_rows], schema.NOISE))
        # Written last: a train row with status ok marks the trial done.
        store.write_table(layout.train_file(trial.trial_id), schema.table([row], schema.TRAIN))
        final = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        tune.report({**final, "step": step, "status": "ok"},
                    checkpoint=tune.Checkpoint.from_directory(folder))


def _already_finished(store: Store, trial_id: str) -> bool:
    relpath = layout.train_file(trial_id)
    if not store.exists(relpath):
        return False
    try:
        return store.read_table(relpath, columns=["status"]).column("status")[0].as_py() == "ok"
    except Exception:  # unreadable: train again
        return False


def _evaluate(model, dataset, train: TrainConfig, trial: TrialSpec, split_seed: int):
    """Evaluate on seeded random samples of the held-out split, the same for every trial of the
    dataset: ``eval_size`` images, and (nested in the same permutation) ``mig_size`` for MIG."""
    device = next(model.parameters()).device
    evaluation = dataset.evaluation_indices(train.eval_size, split_seed)
    mean_image, scale = training_pixel_statistics(dataset)
    mig_kwargs = {}
    if dataset.factors is not None:
        mig_indices = dataset.evaluation_indices(train.mig_size, split_seed)
        mig_kwargs = dict(mig_images=dataset.batch(mig_indices).to(device),
                          mig_factors=dataset.factors[mig_indices.numpy()],
                          factor_sizes=list(dataset.factor_sizes), factor_names=list(dataset.factor_names))
    return evaluate(
        model, dataset.batch(evaluation).to(device), mean_image,
        model.cfg.gaussian_scale or scale,
        noise_sigmas=train.noise_sigmas, noise_samples=train.noise_samples,
        batch_size=min(train.batch_size, 256), seed=trial.seed, **mig_kwargs,
    )


def _save(folder: str, model, optimizer, step: int, seconds: float) -> None:
    save_checkpoint(Path(folder) / MODEL_FILE, model, step=step, extra={"seconds": seconds})
    torch.save(optimizer.state_dict(), Path(folder) / OPTIMIZER_FILE)


def _finish_diverged(setup: TrialSetup, step: int, seconds: float, loss: float,
                     what: str = "loss") -> None:
    """A diverging trial stops with its reason recorded; it gets no model file, so it is never
    attacked, and the rest of the sweep goes on."""
    reason = f"{what} became {loss} at step {step}"
    row = {**setup.identity, "status": "diverged", "reason": reason, "steps": step,
           "seconds": seconds}
    Store(setup.out).write_table(layout.train_file(setup.trial.trial_id), schema.table([row], schema.TRAIN))
    tune.report({"step": step, "status": "diverged", "reason": reason})
