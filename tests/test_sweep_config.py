"""The sweep config: grid expansion, presets, file parsing and the errors for bad values."""

from __future__ import annotations

import subprocess
import sys

import pytest

from models.errors import ConfigError
from sweep.config import SweepConfig, from_dict, load_file
from sweep.config.presets import paper, repro, repro_full, smoke
from sweep.config.trials import expand_grid


def test_model_kinds_expand_only_where_they_exist():
    cfg = from_dict({"grid": {"models": ["vae", "tcvae", "tcdlgm", "seatbelt"], "betas": [1.0, 4.0],
                              "layers": [1, 2, 3], "z_dims": [10], "seeds": [0, 1]}})
    specs = expand_grid(cfg.grid)
    by_model = {m: [s for s in specs if s.model == m] for m in ("vae", "tcvae", "tcdlgm", "seatbelt")}
    assert {(s.beta, s.layers) for s in by_model["vae"]} == {(1.0, 1)}
    assert {(s.beta, s.layers) for s in by_model["tcvae"]} == {(1.0, 1), (4.0, 1)}
    for kind in ("tcdlgm", "seatbelt"):
        assert {(s.beta, s.layers) for s in by_model[kind]} == {(b, l) for b in (1.0, 4.0) for l in (2, 3)}
    # 2 seeds x (1 + 2 + 4 + 4) grid points
    assert len(specs) == 2 * 11
    assert len({s.trial_id for s in specs}) == len(specs)


def test_trial_ids_are_readable_and_stable():
    cfg = from_dict({"grid": {"models": ["seatbelt"], "betas": [2.5], "layers": [3], "z_dims": [10]}})
    assert [s.trial_id for s in expand_grid(cfg.grid)] == ["dsprites_generated-seatbelt-b2p5-L3-z10-s0"]


def test_presets_validate_and_smoke_is_small():
    small = smoke().validate()
    specs = expand_grid(small.grid)
    assert {s.model for s in specs} == {"vae", "tcvae", "tcdlgm", "seatbelt"}
    assert small.grid.datasets == ["dsprites_generated"]
    full = paper().validate()
    assert max(full.grid.betas) == 10 and max(full.grid.layers) == 5
    assert set(full.grid.datasets) == {"chairs", "faces", "celeba", "dsprites"}
    assert len(expand_grid(full.grid)) > 500
    regime = repro_full().validate()   # the repro grid, trained as benchmarks/fidelity.py trains
    assert regime.grid == repro().grid and regime.data.size is None
    assert regime.train.hidden_dim is None and regime.train.mig_size >= 3000


@pytest.mark.parametrize("data, field", [
    ({"grid": {"datasets": ["imagenet"]}}, "grid.datasets"),
    ({"grid": {"betas": [-1.0]}}, "grid.betas"),
    ({"grid": {"layers": [0]}}, "grid.layers"),
    ({"grid": {"models": ["tcdlgm"], "layers": [1]}}, "grid"),
    ({"grid": {"models": ["vae"], "betas": [4.0], "layers": [2]}}, "grid"),
    ({"train": {"tc_estimator": "exact"}}, "train.tc_estimator"),
    ({"train": {"precision": "half"}}, "train.precision"),
    ({"train": {"steps": 0}}, "train.steps"),
    ({"train": {"learning_rate": 0.1}}, "learning_rate"),
    ({"attack": {"n_pairs": 0}}, "n_pairs"),
    ({"resources": {"gpus_per_trial": -0.5}}, "resources.gpus_per_trial"),
    ({"health": {"min_recon_r2": -0.1}}, "health.min_recon_r2"),
    ({"health": {"min_recon_r2": "0.2"}}, "health.min_recon_r2"),
    ({"grid": {"datasets": ["chairs"]}}, "data.data_dirs"),
    ({"colour": "red"}, "colour"),
])
def test_bad_values_name_the_field(data, field):
    with pytest.raises(ConfigError) as error:
        from_dict(data)
    assert field in str(error.value)


def test_bad_value_error_lists_the_allowed_values():
    with pytest.raises(ConfigError, match="dsprites_generated"):
        from_dict({"grid": {"datasets": ["imagenet"]}})


DEEP = {"models": ["tcdlgm", "seatbelt"], "betas": [1.0, 4.0], "layers": [3]}  # every trial: L = 3


@pytest.mark.parametrize("grid, free_bits", [
    ({}, 0.5),
    ({}, 2),
    (DEEP, [0.5, 0.0, 1.0]),
    (DEEP, [1, 0, 2]),
])
def test_free_bits_take_a_number_or_one_per_layer_and_reach_the_model(grid, free_bits):
    from sweep.config import ModelData, model_config_for

    cfg = from_dict({"grid": grid, "train": {"free_bits": free_bits}})
    data = ModelData(channels=1, image_size=64, likelihood="bernoulli", train_size=1000)
    for spec in expand_grid(cfg.grid):
        model = model_config_for(spec, cfg.train, data).validate()
        assert model.free_bits == free_bits
        expected = [float(v) for v in free_bits] if isinstance(free_bits, list) else [float(free_bits)] * spec.layers
        assert model.free_bits_per_layer == expected


@pytest.mark.parametrize("grid, free_bits, words", [
    ({}, -0.5, ">= 0"),
    ({}, "1.0", ">= 0"),
    ({}, True, ">= 0"),
    (DEEP, [], "non-empty list"),
    (DEEP, [0.5, -1.0, 0.0], ">= 0"),
    (DEEP, [0.5, "x", 0.0], ">= 0"),
    (DEEP, [0.5, 1.0], "has 2 values but trial dsprites_generated-tcdlgm-b1-L3-z10-s0 has layers = 3"),
    ({"layers": [1, 2]}, [0.5, 1.0], "has 2 values but trial dsprites_generated-vae-b1-L1-z10-s0 has layers = 1"),
])
def test_free_bits_of_the_wrong_form_or_length_are_refused_by_name(grid, free_bits, words):
    with pytest.raises(ConfigError) as error:
        from_dict({"grid": grid, "train": {"free_bits": free_bits}})
    message = str(error.value)
    assert message.startswith(f"train.free_bits = {free_bits!r}: ") and words in message


def test_toml_and_yaml_files_give_the_same_config(tmp_path):
    toml = tmp_path / "sweep.toml"
    toml.write_text('name = "mine"\n[grid]\nbetas = [1.0, 8.0]\nlayers = [1, 3]\n[attack]\nmodes = ["latent"]\n')
    yaml_file = tmp_path / "sweep.yaml"
    yaml_file.write_text("name: mine\ngrid:\n  betas: [1.0, 8.0]\n  layers: [1, 3]\nattack:\n  modes: [latent]\n")
    a, b = load_file(toml), load_file(yaml_file)
    assert a.to_dict() == b.to_dict()
    assert a.fingerprint() == b.fingerprint() != SweepConfig().fingerprint()
    assert a.attack.modes == ("latent",)


def test_config_files_are_data_only(tmp_path):
    """A YAML tag that would build a Python object is refused, and nothing runs."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_file(evil)
    assert not marker.exists()


def test_dry_run_prints_counts_without_starting_ray():
    result = subprocess.run([sys.executable, "-m", "sweep.grid", "--preset", "paper", "--dry-run"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert "660 trials" in first and "673,200 attacks" in first
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: data.data_dirs.")]
    assert "ray" not in "\n".join(set(result.stderr.splitlines()) - set(warnings)).lower()


def test_dry_run_warns_about_a_missing_dataset_path_and_the_sweep_refuses_it(tmp_path):
    there, nowhere = tmp_path / "faces.npy", tmp_path / "no-such-chairs"
    there.write_bytes(b"")
    config = tmp_path / "two.toml"
    config.write_text(f'name = "two"\n[grid]\ndatasets = ["faces", "chairs"]\n'
                      f'[data]\ndata_dirs = {{ faces = "{there}", chairs = "{nowhere}" }}\n')
    command = [sys.executable, "-m", "sweep.grid", "--config", str(config), "--out", str(tmp_path / "out")]
    result = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "trials" in result.stdout.splitlines()[0]
    assert result.stderr.splitlines() == [
        f"warning: data.data_dirs.chairs = '{nowhere}' does not exist; point it at your local copy of "
        "chairs (see the README's datasets section; nothing is downloaded) (on this machine)"]
    result = subprocess.run([*command, "--no-tracking"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: data.data_dirs.chairs = '{nowhere}' does not exist" in result.stderr


def test_cli_reports_a_bad_config_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nlayers = [0]\n")
    result = subprocess.run([sys.executable, "-m", "sweep.grid", "--config", str(bad), "--dry-run"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "grid.layers" in result.stderr and "Traceback" not in result.stderr


def test_results_folders_keep_their_fingerprint_when_fields_are_added():
    """The default config's fingerprint is pinned: fields added at a default that changes no
    result (``plugins``, the warm-start fields) keep it, so re-running on an older folder
    resumes it; a config that uses warm starts gets its own. A default that changes results
    changes it on purpose: it moved from 34927b51ccebad82 when the output attack became an
    Expectation over K = 4 draws reported on 32 (issue 23) and health gained ``min_recon_r2``,
    so a folder attacked the old way is refused rather than mixed with new rows; then from
    df37f63fc7bf1d43 when ``train.precision`` (default auto: bf16 where measured faster, issue 24)
    was added, since a default-width model may now train in bf16; then from dc1c193aafdb5ea7 when
    ``train.encoder_input`` (default centred, where the models trained on the paper's 2x - 1 with
    most of their encoder's first layer dead, issue 31) and ``health.max_dead_first_layer`` were
    added: every model changes, and a folder of the old models is refused rather than mixed."""
    assert SweepConfig().fingerprint() == "14108e55d3f51a93"
    warm = from_dict({"attack": {"warm_start": ["latent"]}})
    assert warm.fingerprint() != SweepConfig().fingerprint()
    assert from_dict({"attack": {"warm_start": ["latent"], "warm_chain": 3}}).fingerprint() != warm.fingerprint()
    assert warm.attack.warm_start == ("latent",)
