"""``--plan``'s evaluations per attack: the mean of the sweep's own attack rows when its results
folder holds some (same config fingerprint, same solver), else a calibration on briefly trained
models; ``--evals-per-attack`` overrides both, and the plan says which it used. Results folders
written before the ``evaluations`` column still load (the plan calibrates, the analysis reads
the column as missing)."""

from __future__ import annotations

import math
import re

import pyarrow as pa
import pytest
import torch

from results import schema
from sweep.config import load_file
from sweep.cli.plan import (calibrate_evaluations, evaluation_counts, evaluations_from_rows,
                        plan_sweep)
from results.store import Store
from sweep.config.trials import expand_grid
from tests.sweep_helpers import write_config

CPU = torch.device("cpu")
TASKS = ["latent/kl", "output/elbo"]


@pytest.fixture
def cfg(tmp_path):
    return load_file(write_config(tmp_path, name="planned", models='["vae"]'))


def identity(cfg, trial: int) -> dict:
    return {"sweep": cfg.name, "trial_id": f"t{trial}", "dataset": "dsprites_generated", "model": "vae",
            "beta": 1.0, "layers": 1, "z_dim": 4, "seed": 0}


def other_solver(cfg) -> str:
    return "scipy" if cfg.attack.solver == "batched" else "batched"


def attack_row(cfg, trial: int, mode: str, evaluations: int, solver: str | None = None) -> dict:
    return {**identity(cfg, trial), "mode": mode, "similarity": "kl" if mode == "latent" else "elbo",
            "pair": 0, "lam": 1.0, "solver": solver or cfg.attack.solver, "iterations": evaluations - 1,
            "evaluations": evaluations, "seconds": 0.1}


def results_folder(path, cfg, fingerprint: str | None = None) -> Store:
    """A results folder as the sweep leaves it: sweep.json with the config's fingerprint."""
    store = Store(str(path))
    store.write_json("sweep.json", {**cfg.to_dict(), "fingerprint": fingerprint or cfg.fingerprint()})
    return store


def write_old_attack_file(store: Store, cfg, relpath: str) -> None:
    """Attack rows as written before the evaluations column existed."""
    old = pa.schema([f for f in schema.ATTACKS if f.name != "evaluations"])
    rows = [attack_row(cfg, 9, "latent", 7777), attack_row(cfg, 9, "output", 7777)]
    store.write_table(relpath, schema.table(rows, old))


def evals_column(text: str) -> dict[str, float]:
    """task -> the evals column of the plan's attack table (one architecture here: mlp)."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"\s+mlp\s+1\s+(\S+/\S+)\s+\d+\s+(\d+)\s", line)
        if m:
            found[m.group(1)] = float(m.group(2))
    return found


def test_plan_uses_the_mean_of_the_sweeps_attack_rows_and_says_so(tmp_path, cfg):
    store = results_folder(tmp_path / "out", cfg)
    rows = [attack_row(cfg, 0, "latent", 10), attack_row(cfg, 0, "latent", 21),
            attack_row(cfg, 1, "latent", 41), attack_row(cfg, 0, "output", 60),
            attack_row(cfg, 1, "output", 81),
            attack_row(cfg, 1, "latent", 5000, solver=other_solver(cfg))]  # another solver: left out
    store.write_table("attacks/t0/latent.parquet", schema.table(rows[:2], schema.ATTACKS))
    store.write_table("attacks/t1/all.parquet", schema.table(rows[2:], schema.ATTACKS))
    write_old_attack_file(store, cfg, "attacks/t9/latent.parquet")  # no evaluations: skipped

    counts, why_not = evaluations_from_rows(cfg, str(tmp_path / "out"))
    assert why_not == "" and counts.per_task == {("mlp", "latent/kl"): 24.0, ("mlp", "output/elbo"): 70.5}

    text = plan_sweep(cfg, expand_grid(cfg.grid), gpus=2, out=str(tmp_path / "out"))
    assert ("evaluations per attack: measured: the mean over this sweep's 5 attack rows "
            f"({store.uri_of('attacks')}, solver {cfg.attack.solver})") in text
    assert "calibrated" not in text
    assert evals_column(text) == {"latent/kl": 24.0, "output/elbo": 70.0}  # 70.5 printed as %.0f
    assert re.search(r"GPU-hours: [\d.,]+ training \+ [\d.,]+ attacks = [\d.,]+ "
                     r"\(training \d+%, attacks \d+%\)", text)

    # the analysis reads the old file alongside: its evaluations are missing, the rest is there
    from analysis.load import load_attacks

    df = load_attacks(str(tmp_path / "out"), columns=["trial_id", "mode", "evaluations"])
    old = df[df["trial_id"] == "t9"]
    assert len(old) == 2 and old["evaluations"].isna().all()
    assert sorted(df.loc[df["trial_id"] != "t9", "evaluations"]) == [10, 21, 41, 60, 81, 5000]


@pytest.mark.parametrize("case", ["other config", "no rows", "only rows from before the column",
                                  "another solver", "no folder"])
def test_no_usable_rows_falls_back_to_calibration(tmp_path, cfg, case):
    out = tmp_path / "out"
    if case != "no folder":
        store = results_folder(out, cfg, fingerprint="0123456789abcdef" if case == "other config" else None)
        if case == "other config":
            store.write_table("attacks/t0.parquet", schema.table([attack_row(cfg, 0, "latent", 10),
                                                                  attack_row(cfg, 0, "output", 10)],
                                                                 schema.ATTACKS))
        elif case == "only rows from before the column":
            write_old_attack_file(store, cfg, "attacks/t0.parquet")
        elif case == "another solver":
            store.write_table("attacks/t0.parquet", schema.table(
                [attack_row(cfg, 0, m, 10, solver=other_solver(cfg)) for m in ("latent", "output")], schema.ATTACKS))
    counts, why_not = evaluations_from_rows(cfg, str(out))
    assert counts is None
    expected = {"other config": "holds another sweep config's results (fingerprint 0123456789abcdef",
                "no folder": "no results folder"}.get(case, f"has no attack rows with evaluations (solver {cfg.attack.solver})")
    assert expected in why_not

    counts = evaluation_counts(cfg, ["mlp"], CPU, out=str(out), calibration_steps=2)
    assert counts.source.startswith(f"calibrated ({why_not}): 2 pairs x 3 lambdas per mode on a VAE (mlp:")
    assert set(counts.per_task) == {("mlp", t) for t in TASKS}
    assert all(math.isfinite(v) and v >= 1 for v in counts.per_task.values())


def test_calibration_gives_a_positive_count_per_architecture_and_mode_and_the_plan_names_it(tmp_path, cfg):
    counts = calibrate_evaluations(cfg, ["conv", "mlp"], CPU, steps=2)
    assert set(counts.per_task) == {(a, t) for a in ("conv", "mlp") for t in TASKS}
    assert all(math.isfinite(v) and v >= 1 for v in counts.per_task.values())
    # the tiny config stops at maxiter 8: a mean of at most a few evaluations per iteration
    assert all(v <= 8 * cfg.attack.maxiter for v in counts.per_task.values())
    assert f"trained 2 steps on generated dSprites, solver {cfg.attack.solver}" in counts.source

    text = plan_sweep(cfg, expand_grid(cfg.grid), gpus=2, out=str(tmp_path / "nowhere"), calibration_steps=2)
    assert (f"evaluations per attack: calibrated (no results folder {tmp_path / 'nowhere'}): "
            "2 pairs x 3 lambdas per mode on a VAE (mlp: L 1, z 6, width 256) trained 2 steps") in text
    assert set(evals_column(text)) == set(TASKS)


def test_rows_for_some_architectures_and_a_calibration_for_the_others(tmp_path, cfg):
    store = results_folder(tmp_path / "out", cfg)
    store.write_table("attacks/t0.parquet", schema.table(
        [attack_row(cfg, 0, "latent", 30), attack_row(cfg, 0, "output", 50)], schema.ATTACKS))
    counts = evaluation_counts(cfg, ["conv", "mlp"], CPU, out=str(tmp_path / "out"), calibration_steps=1)
    assert counts.per_task[("mlp", "latent/kl")] == 30.0 and counts.per_task[("mlp", "output/elbo")] == 50.0
    assert all(math.isfinite(counts.per_task[("conv", t)]) for t in TASKS)
    measured, calibrated = counts.source.split("; ")
    assert measured.startswith("measured: the mean over this sweep's 2 attack rows") and measured.endswith(" for mlp")
    assert calibrated.startswith("calibrated (this sweep has no attack rows of them yet): ")
    assert "VAE (conv:" in calibrated


def test_evals_per_attack_overrides_rows_and_calibration(tmp_path, cfg):
    store = results_folder(tmp_path / "out", cfg)
    store.write_table("attacks/t0.parquet", schema.table(
        [attack_row(cfg, 0, "latent", 30), attack_row(cfg, 0, "output", 50)], schema.ATTACKS))
    text = plan_sweep(cfg, expand_grid(cfg.grid), gpus=2, out=str(tmp_path / "out"), evals_per_attack=123)
    assert "evaluations per attack: given (--evals-per-attack)" in text
    assert "measured: the mean" not in text and "calibrated" not in text
    assert evals_column(text) == {"latent/kl": 123.0, "output/elbo": 123.0}
    with pytest.raises(Exception, match="--evals-per-attack must be > 0"):
        plan_sweep(cfg, expand_grid(cfg.grid), gpus=2, evals_per_attack=0)
