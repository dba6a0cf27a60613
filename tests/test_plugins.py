"""A researcher's own model kind, dataset, architecture and latent similarity, from modules outside
the package (tests/plugin_kinds/) that a sweep config lists in ``plugins``: each is one registry
entry, and a kind of one's own runs through the whole sweep without editing the package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from results import kinds
from results.errors import ConfigError
from tests.sweep_helpers import TINY_CONFIG, read_rows, run_sweep, sweep_command, sweep_env

PLUGINS = Path(__file__).resolve().parent / "plugin_kinds"


@pytest.fixture
def plugin_path(monkeypatch):
    """The plugins' folder on sys.path; what they register is forgotten after the test (a similarity
    left registered made tests/test_results.py's unknown-similarity check fail in a full run)."""
    from attacks.objectives import LATENT_SIMILARITIES
    from models.config import ARCHITECTURES
    from results import vocabulary
    from sweep.data.loaders import DATASETS

    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setattr(kinds, "_KINDS", dict(kinds._KINDS))
    # restored in place: other modules hold these dicts by name
    registries = [(r, dict(r)) for r in (LATENT_SIMILARITIES, ARCHITECTURES, vocabulary._UNITS, DATASETS)]
    yield
    for name in ("betavae", "extras"):
        sys.modules.pop(name, None)
    for registry, before in registries:
        registry.clear()
        registry.update(before)


def test_a_plugin_kind_is_one_registry_entry(plugin_path):
    from models import ModelConfig, build_model
    from sweep.config import from_dict
    from sweep.config.trials import expand_grid

    cfg = from_dict({"plugins": ["betavae"], "grid": {"models": ["vae", "betavae"], "betas": [1.0, 4.0],
                                                      "layers": [1, 2], "z_dims": [4]}})
    assert [s.trial_id for s in expand_grid(cfg.grid)] == [
        "dsprites_generated-vae-b1-L1-z4-s0", "dsprites_generated-betavae-b1-L1-z4-s0",
        "dsprites_generated-betavae-b4-L1-z4-s0"]

    # the kind's regulariser: beta weighs the whole KL of z (free bits 0: loss = -recon + beta KL)
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="betavae", beta=4.0, z_dim=4, hidden_dim=16, dataset_size=100))
    out = model.objective((torch.rand(8, 1, 64, 64) > 0.5).float())
    assert out.loss.item() == pytest.approx(-out.parts["recon_loglik"].item() + 4.0 * out.parts["kl_1"].item(),
                                            rel=1e-5)
    with pytest.raises(ConfigError, match="layers=2 with kind='betavae': β-VAE takes layers = 1"):
        ModelConfig(kind="betavae", layers=2).validate()


def test_a_plugin_that_cannot_be_imported_is_a_config_error():
    from sweep.config import from_dict

    with pytest.raises(ConfigError, match="plugins: cannot import 'no_such_plugin' .*PYTHONPATH"):
        from_dict({"plugins": ["no_such_plugin"]})
    with pytest.raises(ConfigError, match="grid.models: 'betavae' is not allowed"):
        from_dict({"grid": {"models": ["betavae"]}})  # a plugin's kind, its plugin not listed


def test_datasets_architectures_and_similarities_from_a_plugin(plugin_path):
    from attacks.objectives import build_objective
    from models import ModelConfig, build_model
    from sweep.config import from_dict
    from sweep.data import load_dataset

    cfg = from_dict({"plugins": ["extras"], "grid": {"datasets": ["blobs"], "models": ["vae"], "layers": [1]},
                     "train": {"architecture": "narrow_mlp"}, "attack": {"similarities": ["kl", "l1_mean"]}})
    assert cfg.train.architecture_for("blobs") == "narrow_mlp"
    assert from_dict({"plugins": ["extras"]}).train.architecture_for("blobs") == "mlp"  # the dataset's own
    data = load_dataset("blobs", size=32)
    assert data.batch(data.train_indices[:2]).shape == (2, 1, 64, 64)
    model = build_model(ModelConfig(architecture="narrow_mlp", z_dim=3, hidden_dim=500))
    assert model.inference.head.in_features == 32
    x = data.batch(data.train_indices[:2])
    objective = build_objective(model, "latent", "l1_mean", x, x.flip(0), torch.tensor([0.0, 1.0]),
                                [torch.Generator().manual_seed(i) for i in range(2)])
    assert objective(torch.zeros_like(x)).shape == (2,)


@pytest.mark.slow
def test_a_kind_from_a_plugin_module_is_trained_attacked_and_reported(tmp_path, ray_tmp):
    """The real CLI, real Ray and MLflow, on a grid of the VAE and the plugin's β-VAE."""
    config = tmp_path / "mine.toml"
    config.write_text('plugins = ["betavae"]\n' + TINY_CONFIG.format(
        name="plugged", models='["vae", "betavae"]', steps=30, checkpoint_every=15))
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    env = sweep_env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGINS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    run_sweep(sweep_command(config, out, uri, ray_tmp=ray_tmp), tmp_path, env=env)

    plugged = {"dsprites_generated-betavae-b1-L1-z4-s0", "dsprites_generated-betavae-b4-L1-z4-s0"}
    train = read_rows(out / "train")
    assert set(train["trial_id"]) == plugged | {"dsprites_generated-vae-b1-L1-z4-s0"}
    assert (train["status"] == "ok").all() and (train["steps"] == 30).all()
    assert set(train.loc[train["model"] == "betavae", "trial_id"]) == plugged
    attacks = read_rows(out / "attacks")
    betavae = attacks.loc[attacks["model"] == "betavae"]
    assert set(betavae["trial_id"]) == plugged and set(betavae["mode"]) == {"latent", "output"}
    assert len(betavae) == 2 * 2 * 3 * 2  # trials x pairs x lambdas x (latent kl, output)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["plugged"], filter_string="params.model = 'betavae'")
    assert set(runs["tags.trial_id"]) == plugged and (runs["status"] == "FINISHED").all()

    # the sweep's report knows the kind (its process imported the plugin) ...
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert "β-VAE ('betavae'): 2" in page and all(t in page for t in plugged)
    assert "No finished trial of model kind" not in page
    # ... and a report made where the plugin is not importable names it by its name
    result = subprocess.run([sys.executable, "-m", "analysis.report", "--out", str(out), "--no-mlflow"],
                            capture_output=True, text=True, timeout=300, env=sweep_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert "betavae ('betavae'): 2" in page
