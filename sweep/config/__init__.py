"""The sweep's config stage: the typed config and its validation (``sweep_config``), the named
presets (``presets``), the plugins a config imports first (``plugins``) and the grid expanded
into trials (``trials``). ``from sweep.config import SweepConfig, from_dict, ...`` is the public
path; the modules import each other directly, never this package."""

from attacks.config import AttackConfig
from results.records import GridConfig
from sweep.config.plugins import import_plugins
from sweep.config.presets import PRESETS, preset
from sweep.config.sweep_config import (AUTO, DataConfig, ModelData, ResourceConfig, SweepConfig, TrainConfig,
                                       from_dict, load_file, model_config_for, read_results_config)
from sweep.config.trials import TrialSpec, expand_grid
from sweep.train.health import HealthConfig

__all__ = ["AUTO", "AttackConfig", "DataConfig", "GridConfig", "HealthConfig", "ModelData", "PRESETS",
           "ResourceConfig", "SweepConfig", "TrainConfig", "TrialSpec", "expand_grid", "from_dict",
           "import_plugins", "load_file", "model_config_for", "preset", "read_results_config"]
