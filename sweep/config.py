"""The typed sweep config: a grid declared as data, plus training, attack and resource settings.

A config comes from a preset (``sweep.presets``) or a TOML/YAML file; both are plain data, parsed
with ``tomllib`` / ``yaml.safe_load`` (never anything that executes code). ``validate`` imports
the config's ``plugins``, then checks every field against the registries (model kinds,
datasets, architectures, latent similarities) and raises ``ConfigError`` naming the field and
what it may be.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attacks.config import AttackConfig
from models.config import ARCHITECTURES, PRECISIONS, TC_ESTIMATORS
from results import kinds, layout, records
from results.errors import ConfigError
from results.records import GridConfig
from results.store import Store
from sweep.data import dataset_names, dataset_spec
from sweep.health import HealthConfig
from sweep.plugins import import_plugins
from sweep.trials import expand_grid

AUTO = "auto"  # train.architecture: the dataset's own (its DatasetSpec.architecture)


@dataclass
class DataConfig:
    """Where each dataset lives and how much of it a sweep uses."""

    data_dirs: dict[str, str] = field(default_factory=dict)  # dataset name -> local folder or file
    size: int | None = None  # random subset by seed; None = whole dataset
    held_out: float = 0.1  # fraction kept out of training; attack pairs come from it
    split_seed: int = 0  # same split for every trial of a dataset


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    free_bits: float = 0.0  # nats per layer (hierarchical models)
    tc_estimator: str = "mws"
    # auto: bf16 autocast where it was measured faster (CUDA; an AMX CPU for conv and wide MLPs),
    # else float32 (models.speed); float32 | bfloat16 force one
    precision: str = "auto"
    architecture: str = AUTO  # a registered architecture, or auto: mlp for dSprites, conv for the others
    hidden_dim: int | None = None  # None: the beta-TCVAE paper's widths
    condition_on_x: bool = False  # the paper's chain q(z^{i+1}|z^i); True: 2021's q(z^{i+1} | z^i, x)
    checkpoint_every: int = 500  # steps between Tune checkpoints
    report_every: int = 50  # steps between metric reports (training curves)
    eval_size: int = 1024  # held-out images (a seeded random sample) for ELBO, TC, noise, health
    mig_size: int = 10_000  # held-out images for MIG (its estimator needs many); capped by the split
    noise_sigmas: list[float] = field(default_factory=lambda: [0.1, 0.5, 1.0])
    noise_samples: int = 256  # images per sigma for the noise histograms

    def architecture_for(self, dataset: str) -> str:
        """The architecture a trial on ``dataset`` builds."""
        return dataset_spec(dataset).architecture if self.architecture == AUTO else self.architecture


@dataclass
class ResourceConfig:
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    cpus_per_attack_task: float = 1.0
    gpus_per_attack_task: float = 0.0
    custom_per_trial: dict[str, float] = field(default_factory=dict)
    custom_per_attack_task: dict[str, float] = field(default_factory=dict)
    max_concurrent: int | None = None
    max_failures: int = 2  # Tune retries of a failed trial, from its last checkpoint
    task_retries: int = 3  # Ray retries of an attack task whose worker died
    # attack pairs per Ray task (each pair: all its lambdas); None = 1 with the scipy solver
    # (many small tasks spread over the cluster), all pairs with the batched one (one batch of
    # every pair × lambda of a checkpoint and mode, which it then chunks to its device)
    pairs_per_task: int | None = None

    def resolved_pairs_per_task(self, attack: AttackConfig) -> int:
        if self.pairs_per_task is not None:
            return self.pairs_per_task
        from attacks.solvers import solves_in_batches

        return attack.n_pairs if solves_in_batches(attack.solver) else 1


@dataclass
class SweepConfig:
    name: str = "smoke"
    plugins: list[str] = field(default_factory=list)  # modules imported first (sweep.plugins)
    grid: GridConfig = field(default_factory=GridConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    resources: ResourceConfig = field(default_factory=ResourceConfig)
    health: HealthConfig = field(default_factory=HealthConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A hash of what decides the results (not resources): two sweeps with the same
        fingerprint may share a results folder."""
        content = self.to_dict()
        content.pop("resources")
        if not content["plugins"]:  # so folders written before plugins existed keep their hash
            content.pop("plugins")
        if not content["attack"]["warm_start"]:  # likewise for folders from before warm starts
            content["attack"].pop("warm_start")
            content["attack"].pop("warm_chain")
        text = json.dumps(content, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def validate(self) -> "SweepConfig":
        _validate(self)
        return self

    def save(self, store: Store) -> None:
        """Write ``sweep.json`` (the contract's shape, ``results.records``) into a results folder."""
        records.write_sweep(store, self.to_dict(), self.fingerprint())


def read_results_config(store: Store) -> SweepConfig:
    """The config of the sweep that wrote a results folder (its ``sweep.json``), validated."""
    record, _ = records.read_sweep(store)
    return from_dict(record, where=store.uri_of(layout.SWEEP_JSON))


# --- reading -------------------------------------------------------------------------------


def from_dict(data: dict[str, Any], where: str = "config") -> SweepConfig:
    """Build a config from plain data, refusing unknown sections and fields by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table of settings at the top level")
    sections = {f.name: f for f in dataclasses.fields(SweepConfig)}
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(sections)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        section_type = _SECTION_TYPES.get(name)
        if section_type is None:
            kwargs[name] = value
        else:
            kwargs[name] = _section(section_type, value, f"{where}: [{name}]")
    return SweepConfig(**kwargs).validate()


def load_file(path: str | Path) -> SweepConfig:
    """Read a TOML or YAML sweep config as data only."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --config with a TOML or YAML file")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"config file {path}: use a .toml, .yaml or .yml file")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:].upper()}: {exc}") from None
    return from_dict(data or {}, where=str(path))


def _section(section_type: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table of settings, got {value!r}")
    allowed = {f.name for f in dataclasses.fields(section_type)}
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    if section_type is AttackConfig:  # its sequence fields are tuples
        value = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    return section_type(**value)


_SECTION_TYPES = {
    "grid": GridConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "attack": AttackConfig,
    "resources": ResourceConfig,
    "health": HealthConfig,
}


# --- validation ----------------------------------------------------------------------------


def _validate(cfg: SweepConfig) -> None:
    if not isinstance(cfg.name, str) or not cfg.name or any(c in cfg.name for c in "/\\ "):
        raise ConfigError(f"name: {cfg.name!r} must be a non-empty name without spaces or slashes")
    if not isinstance(cfg.plugins, list) or not all(isinstance(p, str) and p for p in cfg.plugins):
        raise ConfigError(f"plugins: {cfg.plugins!r} must be a list of module names, e.g. [\"my_package.my_kinds\"]")
    import_plugins(cfg.plugins)  # before any name is checked: they add to the registries
    grid = cfg.grid
    _choices("grid.datasets", grid.datasets, dataset_names())
    _choices("grid.models", grid.models, kinds.names())
    _numbers("grid.betas", grid.betas, minimum=0.0, strict=True, kind=float)
    _numbers("grid.layers", grid.layers, minimum=1, kind=int)
    _numbers("grid.z_dims", grid.z_dims, minimum=1, kind=int)
    _numbers("grid.seeds", grid.seeds, minimum=0, kind=int)
    for dataset in grid.datasets:
        if dataset_spec(dataset).needs_path and dataset not in cfg.data.data_dirs:
            raise ConfigError(
                f"data.data_dirs: dataset {dataset!r} needs a local copy; add "
                f"data_dirs.{dataset} = \"/path/to/{dataset}\" (nothing is downloaded)"
            )

    data = cfg.data
    if data.size is not None:
        _number("data.size", data.size, minimum=16, kind=int)
    if not (isinstance(data.held_out, (int, float)) and 0 < data.held_out < 1):
        raise ConfigError(f"data.held_out: {data.held_out!r} must be a fraction in (0, 1)")

    train = cfg.train
    _number("train.steps", train.steps, minimum=1, kind=int)
    _number("train.batch_size", train.batch_size, minimum=2, kind=int)
    _number("train.lr", train.lr, minimum=0.0, strict=True, kind=float)
    _number("train.free_bits", train.free_bits, minimum=0.0, kind=float)
    _choice("train.tc_estimator", train.tc_estimator, TC_ESTIMATORS)
    _choice("train.precision", train.precision, PRECISIONS)
    _choice("train.architecture", train.architecture, (AUTO, *ARCHITECTURES))
    if train.hidden_dim is not None:
        _number("train.hidden_dim", train.hidden_dim, minimum=1, kind=int)
    _number("train.checkpoint_every", train.checkpoint_every, minimum=1, kind=int)
    _number("train.report_every", train.report_every, minimum=1, kind=int)
    _number("train.eval_size", train.eval_size, minimum=2, kind=int)
    _number("train.mig_size", train.mig_size, minimum=3, kind=int)
    _numbers("train.noise_sigmas", train.noise_sigmas, minimum=0.0, kind=float)
    _number("train.noise_samples", train.noise_samples, minimum=1, kind=int)

    cfg.attack.validate()
    _number("health.min_elbo_gain", cfg.health.min_elbo_gain, minimum=0.0, kind=float)
    _number("health.min_recon_r2", cfg.health.min_recon_r2, minimum=0.0, kind=float)
    _number("health.max_logvar_at_bound", cfg.health.max_logvar_at_bound, minimum=0.0, kind=float)
    res = cfg.resources
    for name in ("cpus_per_trial", "cpus_per_attack_task"):
        _number(f"resources.{name}", getattr(res, name), minimum=0.0, strict=True, kind=float)
    for name in ("gpus_per_trial", "gpus_per_attack_task"):
        _number(f"resources.{name}", getattr(res, name), minimum=0.0, kind=float)
    if res.max_concurrent is not None:
        _number("resources.max_concurrent", res.max_concurrent, minimum=1, kind=int)
    _number("resources.max_failures", res.max_failures, minimum=0, kind=int)
    _number("resources.task_retries", res.task_retries, minimum=0, kind=int)
    if res.pairs_per_task is not None:
        _number("resources.pairs_per_task", res.pairs_per_task, minimum=1, kind=int)

    kinds_found = {spec.model for spec in expand_grid(grid)}
    for model in grid.models:
        if model not in kinds_found:
            raise ConfigError(
                f"grid.models: {model!r} takes no point of this grid ({kinds.get(model).needs()}); "
                f"add the values it needs to grid.betas / grid.layers or remove it"
            )


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: {value!r} is not allowed; choose one of {list(allowed)}")


def _choices(name: str, values: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{name}: expected a non-empty list drawn from {list(allowed)}")
    for value in values:
        _choice(name, value, allowed)


def _number(name: str, value: Any, minimum: float, kind: type, strict: bool = False) -> None:
    ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok_type = isinstance(value, int) and not isinstance(value, bool)
    if not ok_type or not math.isfinite(value) or value < minimum or (strict and value == minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name}: {value!r} must be {what} {bound}")


def _numbers(name: str, values: Any, minimum: float, kind: type, strict: bool = False) -> None:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{name}: expected a non-empty list of numbers")
    for value in values:
        _number(name, value, minimum, kind, strict)
