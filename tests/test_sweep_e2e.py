"""End to end: the real CLI on a tiny grid, with real Ray (local, 127.0.0.1) and real MLflow
(SQLite in a temp folder): training, checkpoints, the train and attack Parquet, the MLflow runs,
resume after a kill, and a simulated two-node cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import mlflow
import pytest
import torch

from models import load_checkpoint
from tests.sweep_helpers import read_rows, run_sweep, sweep_command, sweep_env, write_config

pytestmark = pytest.mark.slow

TRIALS = {"dsprites_generated-vae-b1-L1-z4-s0", "dsprites_generated-tcvae-b1-L1-z4-s0",
          "dsprites_generated-tcvae-b4-L1-z4-s0", "dsprites_generated-seatbelt-b1-L2-z4-s0",
          "dsprites_generated-seatbelt-b4-L2-z4-s0"}
ATTACKS_PER_TRIAL = 2 * 3 * 2  # pairs x lambdas x (latent kl, output)


def child_runs(tracking_uri: str, experiment: str):
    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=[experiment])
    parents = runs[runs["tags.seatbelt.role"] == "sweep"]
    children = runs[runs["tags.seatbelt.role"] != "sweep"]
    return parents, children


def test_tiny_sweep_trains_attacks_tracks_and_resumes(tmp_path, ray_tmp):
    config = write_config(tmp_path)
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    result = run_sweep(sweep_command(config, out, uri, ray_tmp=ray_tmp), tmp_path)
    assert "started a local Ray instance on 127.0.0.1" in result.stdout
    assert (out / "report" / "index.html").stat().st_size > 0  # the sweep ends with its report

    train = read_rows(out / "train")
    assert set(train["trial_id"]) == TRIALS and len(train) == len(TRIALS)
    assert (train["status"] == "ok").all()
    assert (train["steps"] == 30).all() and train["elbo"].lt(0).all()
    assert train["encoder_l2"].gt(0).all() and train["mig"].notna().all()
    assert [len(k) for k in train.sort_values("layers")["kl_layers"]] == [1, 1, 1, 2, 2]

    noise = read_rows(out / "noise")
    assert set(noise["sigma"]) == {0.5, 1.0} and len(noise) == len(TRIALS) * 2 * 16

    for trial_id in TRIALS:  # every checkpoint rebuilds its model on its own
        model, step, _ = load_checkpoint(out / "checkpoints" / f"{trial_id}.pt")
        assert step == 30
        assert model.reconstruct(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 64, 64)

    attacks = read_rows(out / "attacks")
    assert len(attacks) == len(TRIALS) * ATTACKS_PER_TRIAL
    key = ["trial_id", "mode", "similarity", "pair", "lam"]
    assert not attacks.duplicated(key).any()
    assert set(attacks["mode"]) == {"latent", "output"}
    assert attacks.groupby(["trial_id", "mode", "pair"])["selected"].sum().eq(1).all()
    gallery = read_rows(out / "gallery")
    assert len(gallery) == len(TRIALS) * 2 * 2  # one picture set per (trial, mode, pair)
    assert len(gallery["adversarial"].iloc[0]) == 64 * 64

    parents, children = child_runs(uri, "tiny")
    assert len(parents) == 1 and len(children) == len(TRIALS)
    client = mlflow.tracking.MlflowClient(uri)
    assert "report" in {a.path for a in client.list_artifacts(parents["run_id"].iloc[0])}
    assert set(children["tags.trial_id"]) == TRIALS
    assert (children["status"] == "FINISHED").all()
    assert (children["tags.mlflow.parentRunId"] == parents["run_id"].iloc[0]).all()
    assert set(children["params.model"]) == {"vae", "tcvae", "seatbelt"}
    assert children["metrics.elbo"].notna().all()
    assert children["metrics.latent_kl_objective_mean"].notna().all()
    seatbelt = mlflow.search_runs(experiment_names=["tiny"],
                                  filter_string="params.model = 'seatbelt' and params.beta = '4.0'")
    assert list(seatbelt["tags.trial_id"]) == ["dsprites_generated-seatbelt-b4-L2-z4-s0"]
    curve = client.get_metric_history(seatbelt["run_id"].iloc[0], "loss")
    assert [m.step for m in curve] == [10, 15, 20, 30]  # every report_every and checkpoint_every step

    # The same command again: nothing is retrained, attacked or logged twice.
    before = {p.name: p.stat().st_mtime_ns for p in (out / "train").iterdir()}
    attack_files = {p: p.stat().st_mtime_ns for p in (out / "attacks").rglob("*.parquet")}
    result = run_sweep(sweep_command(config, out, uri, "--no-report", ray_tmp=ray_tmp), tmp_path)
    assert "all 5 trials already finished" in result.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "train").iterdir()} == before
    assert {p: p.stat().st_mtime_ns for p in (out / "attacks").rglob("*.parquet")} == attack_files
    assert len(read_rows(out / "attacks")) == len(TRIALS) * ATTACKS_PER_TRIAL
    parents, children = child_runs(uri, "tiny")
    assert len(parents) == 1 and len(children) == len(TRIALS)


def test_killed_sweep_resumes_without_retraining_or_duplicates(tmp_path, ray_tmp):
    config = write_config(tmp_path, name="killed", steps=120, checkpoint_every=20)
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    command = sweep_command(config, out, uri, "--no-report", "--max-concurrent", "1", ray_tmp=ray_tmp)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=sweep_env(tmp_path), cwd=tmp_path, start_new_session=True)
    try:  # kill the driver and its Ray instance once some trials have finished
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            done = list((out / "train").glob("*.parquet")) if (out / "train").exists() else []
            if len(done) >= 2:
                break
            assert process.poll() is None, "the sweep ended before it could be interrupted"
            time.sleep(0.5)
        else:
            pytest.fail("no trial finished in time")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finished_before = {p.name: p.stat().st_mtime_ns for p in (out / "train").glob("*.parquet")}
    assert 2 <= len(finished_before) < len(TRIALS)

    result = run_sweep(command, tmp_path)
    assert "resuming" in result.stdout
    train = read_rows(out / "train")
    assert set(train["trial_id"]) == TRIALS and len(train) == len(TRIALS)
    assert (train["status"] == "ok").all() and (train["steps"] == 120).all()
    for name, mtime in finished_before.items():  # finished trials were not retrained
        assert (out / "train" / name).stat().st_mtime_ns == mtime
    attacks = read_rows(out / "attacks")
    assert len(attacks) == len(TRIALS) * ATTACKS_PER_TRIAL
    assert not attacks.duplicated(["trial_id", "mode", "similarity", "pair", "lam"]).any()
    parents, children = child_runs(uri, "killed")
    assert len(parents) == 1
    assert sorted(children["tags.trial_id"]) == sorted(TRIALS)  # one run per trial, no duplicates
    assert (children["status"] == "FINISHED").all() and (parents["status"] == "FINISHED").all()


def test_two_node_cluster_places_trials_on_both_nodes(tmp_path):
    """A head and a worker node (the worker carries a custom resource standing in for a GPU);
    ``--cluster ADDRESS`` joins them and trials land on both. The attack tasks ask for the
    stand-in GPU, which only the worker has, so they can only have run there."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1, resources={"accelerator": 1}, node_ip_address="127.0.0.1")
    try:
        cluster.wait_for_nodes()
        config = write_config(tmp_path, name="twonode")
        out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
        command = sweep_command(config, out, uri, "--no-report", "--attack-resources",
                                '{"accelerator": 0.5}', cluster=cluster.address)
        result = run_sweep(command, tmp_path)
        assert "joined the Ray cluster" in result.stdout and "2 nodes" in result.stdout
        train = read_rows(out / "train")
        assert set(train["trial_id"]) == TRIALS
        assert train["node_id"].nunique() == 2
        assert len(read_rows(out / "attacks")) == len(TRIALS) * ATTACKS_PER_TRIAL
        assert worker.node_id in set(train["node_id"])
    finally:
        cluster.shutdown()


def test_unreachable_cluster_address_is_a_clear_error(tmp_path):
    config = write_config(tmp_path, name="nowhere")
    command = sweep_command(config, tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db",
                            cluster="127.0.0.1:1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=180,
                            env=sweep_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "--cluster 127.0.0.1:1" in result.stderr and "Traceback" not in result.stderr
