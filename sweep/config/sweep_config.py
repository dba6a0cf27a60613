"""The typed sweep config: a grid declared as data, plus training, attack and resource settings.

A config comes from a preset (``sweep.config.presets``) or a TOML/YAML file; both are plain data, parsed
with ``tomllib`` / ``yaml.safe_load`` (never anything that executes code). ``validate`` imports
the config's ``plugins``, then checks every field against the registries (model kinds,
datasets, architectures, latent similarities) and raises ``ConfigError`` naming the field and
what it may be (the checks and their one message shape: ``results.validation``).
``model_config_for`` is the one way from these configs to a ``ModelConfig``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from attacks.config import AttackConfig
from models.config import ARCHITECTURES, ENCODER_INPUTS, PRECISIONS, TC_ESTIMATORS, ModelConfig
from results import kinds, layout, records, vocabulary
from results import validation as check
from results.errors import ConfigError
from results.records import GridConfig
from results.store import Store
from sweep.config.plugins import import_plugins
from sweep.config.trials import TrialSpec, expand_grid
from sweep.data import IMAGE_SIZE, dataset_names, dataset_spec
from sweep.train.health import HealthConfig

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
    # nats per layer: one number for every layer, or a list of one per layer (layer 1 first),
    # which then fits only a grid whose trials all have that many layers
    free_bits: float | list[float] = 0.0
    tc_estimator: str = "mws"
    # auto: bf16 autocast where it was measured faster (CUDA; an AMX CPU for conv and wide MLPs),
    # else float32 (models.speed); float32 | bfloat16 force one
    precision: str = "auto"
    architecture: str = AUTO  # a registered architecture, or auto: mlp for dSprites, conv for the others
    hidden_dim: int | None = None  # None: the beta-TCVAE paper's widths
    condition_on_x: bool = False  # the paper's chain q(z^{i+1}|z^i); True: 2021's q(z^{i+1} | z^i, x)
    # what the image encoder reads: centred (x - the training mean image), pixels (x) or
    # symmetric (the paper's 2x - 1, which kills most of an MLP's first layer: docs/MODELS.md)
    encoder_input: str = "centred"
    checkpoint_every: int = 500  # steps between Tune checkpoints
    report_every: int = 50  # steps between metric reports (training curves)
    eval_size: int = 1024  # held-out images (a seeded random sample) for ELBO, TC, noise, health
    mig_size: int = 10_000  # held-out images for MIG (its estimator needs many); capped by the split
    noise_sigmas: list[float] = field(default_factory=lambda: [0.1, 0.5, 1.0])
    noise_samples: int = 256  # images per sigma for the noise histograms

    def architecture_for(self, dataset: str) -> str:
        """The architecture a trial on ``dataset`` builds."""
        return dataset_spec(dataset).architecture if self.architecture == AUTO else self.architecture


@dataclass(frozen=True)
class ModelData:
    """What a model takes from its dataset: image channels and size, the likelihood, and the
    training split's size (N of the TC estimators)."""

    channels: int
    image_size: int
    likelihood: str
    train_size: int

    @classmethod
    def of(cls, dataset) -> "ModelData":
        """From a loaded dataset (``sweep.data.ImageDataset``)."""
        return cls(dataset.channels, dataset.image_size, dataset.likelihood, len(dataset.train_indices))

    @classmethod
    def planned(cls, name: str) -> "ModelData":
        """For a cost estimate, without reading the dataset (``sweep.cli.plan``): its registered
        channels. The likelihood is only known once the images are read (binary ones are
        Bernoulli), so colour is taken as Gaussian and greyscale as Bernoulli; N is a stand-in.
        Neither changes what a training step costs."""
        channels = dataset_spec(name).channels
        return cls(channels, IMAGE_SIZE, "gaussian" if channels == 3 else "bernoulli", 100_000)


def model_config_for(trial: TrialSpec, train: TrainConfig, dataset) -> ModelConfig:
    """The model a trial trains: the one way from the sweep's configs to a ``ModelConfig``
    (the trainable, ``sweep.cli.plan`` and the benchmarks all build theirs here). ``dataset``: the
    loaded dataset, or its ``ModelData`` where none is loaded."""
    data = dataset if isinstance(dataset, ModelData) else ModelData.of(dataset)
    return ModelConfig(
        kind=trial.model,
        architecture=train.architecture_for(trial.dataset),
        channels=data.channels,
        image_size=data.image_size,
        z_dim=trial.z_dim,
        layers=trial.layers,
        beta=trial.beta,
        likelihood=data.likelihood,
        condition_on_x=train.condition_on_x,
        free_bits=train.free_bits,
        tc_estimator=train.tc_estimator,
        dataset_size=data.train_size,
        hidden_dim=train.hidden_dim,
        encoder_input=train.encoder_input,
    )


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
    plugins: list[str] = field(default_factory=list)  # modules imported first (sweep.config.plugins)
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
        if not content["attack"]["polish"]:  # likewise for folders from before polishing
            content["attack"].pop("polish")
        text = json.dumps(content, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def validate(self) -> "SweepConfig":
        _validate(self)
        return self

    def save(self, store: Store) -> None:
        """Write ``sweep.json`` (the contract's shape, ``results.records``) into a results folder."""
        units = {sim: vocabulary.unit_of(sim) for _, sim in self.attack.tasks()}
        records.write_sweep(store, self.to_dict(), self.fingerprint(), units)


def read_results_config(store: Store) -> SweepConfig:
    """The config of the sweep that wrote a results folder (its ``sweep.json``), validated."""
    record, _ = records.read_sweep(store)
    return from_dict(record, where=store.uri_of(layout.SWEEP_JSON))


# --- reading -------------------------------------------------------------------------------


def from_dict(data: dict[str, Any], where: str = "config") -> SweepConfig:
    """Build a config from plain data, refusing unknown sections and fields by name. A
    ``sweep.json`` record without its fingerprint reads back too: its similarity units are
    derived from the config, not part of it."""
    if isinstance(data, dict) and records.SIMILARITY_UNITS in data:
        data = {k: v for k, v in data.items() if k != records.SIMILARITY_UNITS}
    check.known_fields(where, data, check.field_names(SweepConfig))
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
    check.known_fields(where, value, check.field_names(section_type))
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
        raise check.problem("name", cfg.name, "must be a non-empty name without spaces or slashes")
    if not isinstance(cfg.plugins, list) or not all(isinstance(p, str) and p for p in cfg.plugins):
        raise check.problem("plugins", cfg.plugins, 'must be a list of module names, e.g. ["my_package.my_kinds"]')
    import_plugins(cfg.plugins)  # before any name is checked: they add to the registries
    _validate_grid(cfg.grid, cfg.data)
    _validate_data(cfg.data)
    _validate_train(cfg.train)
    cfg.attack.validate()
    _validate_health_and_resources(cfg.health, cfg.resources)
    _validate_grid_points(cfg.grid, cfg.train)


def _validate_grid(grid: GridConfig, data: DataConfig) -> None:
    check.values_from("grid.datasets", grid.datasets, dataset_names())
    for model in grid.models if isinstance(grid.models, list) else ():
        if model not in kinds.names():  # the wording tests/test_plugins.py pins
            raise ConfigError(f"grid.models: {model!r} is not allowed; choose one of {list(kinds.names())} "
                              "(a plugin's kind needs its module in plugins)")
    check.values_from("grid.models", grid.models, kinds.names())
    check.numbers("grid.betas", grid.betas, 0.0, strict=True)
    check.numbers("grid.layers", grid.layers, 1, integers=True)
    check.numbers("grid.z_dims", grid.z_dims, 1, integers=True)
    check.numbers("grid.seeds", grid.seeds, 0, integers=True)
    for dataset in grid.datasets:
        if dataset_spec(dataset).needs_path and dataset not in data.data_dirs:
            raise ConfigError(
                f"data.data_dirs: dataset {dataset!r} needs a local copy; add "
                f"data_dirs.{dataset} = \"/path/to/{dataset}\" (nothing is downloaded)"
            )


def _validate_data(data: DataConfig) -> None:
    if data.size is not None:
        check.integer("data.size", data.size, 16, also="or left out for the whole dataset")
    if not (check.is_number(data.held_out) and 0 < data.held_out < 1):
        raise check.problem("data.held_out", data.held_out, "must be a fraction in (0, 1)")


def _validate_train(train: TrainConfig) -> None:
    check.integer("train.steps", train.steps, 1)
    check.integer("train.batch_size", train.batch_size, 2)
    check.number("train.lr", train.lr, 0.0, strict=True)
    if isinstance(train.free_bits, list):
        check.numbers("train.free_bits", train.free_bits, 0.0, also="(nats, one per layer, layer 1 first)")
    else:
        check.number("train.free_bits", train.free_bits, 0.0,
                     also="(nats; a number for every layer, or a list of one per layer)")
    check.one_of("train.tc_estimator", train.tc_estimator, TC_ESTIMATORS)
    check.one_of("train.precision", train.precision, PRECISIONS)
    check.one_of("train.encoder_input", train.encoder_input, ENCODER_INPUTS)
    check.one_of("train.architecture", train.architecture, (AUTO, *ARCHITECTURES))
    if train.hidden_dim is not None:
        check.integer("train.hidden_dim", train.hidden_dim, 1, also="or left out for the paper's widths")
    check.integer("train.checkpoint_every", train.checkpoint_every, 1)
    check.integer("train.report_every", train.report_every, 1)
    check.integer("train.eval_size", train.eval_size, 2)
    check.integer("train.mig_size", train.mig_size, 3)
    check.numbers("train.noise_sigmas", train.noise_sigmas, 0.0)
    check.integer("train.noise_samples", train.noise_samples, 1)


def _validate_health_and_resources(health: HealthConfig, res: ResourceConfig) -> None:
    for name in ("min_elbo_gain", "min_recon_r2", "max_logvar_at_bound", "max_dead_first_layer"):
        check.number(f"health.{name}", getattr(health, name), 0.0)
    for name in ("cpus_per_trial", "cpus_per_attack_task"):
        check.number(f"resources.{name}", getattr(res, name), 0.0, strict=True)
    for name in ("gpus_per_trial", "gpus_per_attack_task"):
        check.number(f"resources.{name}", getattr(res, name), 0.0)
    if res.max_concurrent is not None:
        check.integer("resources.max_concurrent", res.max_concurrent, 1)
    check.integer("resources.max_failures", res.max_failures, 0)
    check.integer("resources.task_retries", res.task_retries, 0)
    if res.pairs_per_task is not None:
        check.integer("resources.pairs_per_task", res.pairs_per_task, 1)


def _validate_grid_points(grid: GridConfig, train: TrainConfig) -> None:
    """What only the expanded grid shows: a kind with no point, a free-bits list of the wrong length."""
    specs = expand_grid(grid)
    kinds_found = {spec.model for spec in specs}
    for model in grid.models:
        if model not in kinds_found:
            raise ConfigError(
                f"grid.models: {model!r} takes no point of this grid ({kinds.get(model).needs()}); "
                f"add the values it needs to grid.betas / grid.layers or remove it"
            )
    if isinstance(train.free_bits, list):
        for spec in specs:
            if spec.layers != len(train.free_bits):
                raise check.problem(
                    "train.free_bits", train.free_bits,
                    f"has {len(train.free_bits)} values but trial {spec.trial_id} has layers = {spec.layers}: "
                    f"a list needs every trial at layers = {len(train.free_bits)} (grid.layers = "
                    f"[{len(train.free_bits)}]); use a single number for a grid of several depths")
