"""Scale-out, cluster and tracking: a simulated 3-node Ray cluster (a CPU head and two workers
that advertise one GPU each, as a ``ray up`` cluster's g5 workers do) runs the real CLI with
``--cluster ADDRESS``, results on the S3-compatible server and MLflow on a tracking server
backed by PostgreSQL with its artifacts in the same bucket. Trials and attack tasks ask for
fractions of a GPU, so they land on the two GPU workers; every trial and attack is done exactly
once and MLflow has exactly one run per trial."""

from __future__ import annotations

import os

import pytest

from tests.sweep_helpers import sweep_command, write_config
from tests.test_scaleout_s3 import (  # noqa: F401  (fixtures)
    ATTACKS_PER_TRIAL,
    BUCKET,
    MODELS,
    TRIALS,
    mlflow_server,
    postgres_url,
    read_s3_rows,
    run_cli,
    s3_env,
    s3_files,
)

pytestmark = pytest.mark.slow


def attack_task_nodes(address: str) -> set[str]:
    """Node ids where ``attack_task`` ran, from the task events the cluster's GCS keeps (Ray's
    state API needs the dashboard, which this install does not have)."""
    import ray
    from ray._private import state

    from sweep.infra.cluster import _keep_loopback

    _keep_loopback(address)
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    try:
        nodes = set()
        for event in state.state._get_all_task_events():
            if event.task_info.name.endswith("attack_task") and event.state_updates.node_id:
                nodes.add(event.state_updates.node_id.hex())
        return nodes
    finally:
        ray.shutdown()


def test_three_node_cluster_logs_to_postgres_backed_mlflow_with_s3_results(tmp_path, s3_env, postgres_url):
    import mlflow
    from ray.cluster_utils import Cluster

    # The nodes start before the storage endpoint is known to them: the driver passes it on.
    saved = {name: os.environ.pop(name) for name in list(s3_env) if name in os.environ}
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
        workers = [cluster.add_node(num_cpus=1, num_gpus=1, node_ip_address="127.0.0.1") for _ in range(2)]
    finally:
        os.environ.update(saved)
    try:
        cluster.wait_for_nodes()
        artifacts = f"s3://{BUCKET}/mlflow-artifacts"
        with mlflow_server(postgres_url, artifacts, s3_env, tmp_path / "mlflow.log") as tracking_uri:
            config = write_config(tmp_path, name="cluster3", models=MODELS)
            out = f"s3://{BUCKET}/sweeps/cluster3"
            command = sweep_command(config, tmp_path / "unused", tracking_uri, "--gpus-per-trial", "0.5",
                                    "--gpus-per-attack-task", "0.25", "--worker-env", "AWS_ACCESS_KEY_ID",
                                    "--worker-env", "AWS_SECRET_ACCESS_KEY", cluster=cluster.address)
            command[command.index("--out") + 1] = out
            result = run_cli(command, tmp_path, s3_env)
            assert "joined the Ray cluster" in result.stdout and "3 nodes" in result.stdout
            assert "GPUs: 2 in the cluster" in result.stdout

            train = read_s3_rows("sweeps/cluster3/train")
            assert set(train["trial_id"]) == TRIALS and len(train) == len(TRIALS)
            assert (train["status"] == "ok").all()
            worker_ids = {w.node_id for w in workers}
            assert set(train["node_id"]) == worker_ids  # both GPU workers trained, the head did not
            attacks = read_s3_rows("sweeps/cluster3/attacks")
            assert len(attacks) == len(TRIALS) * ATTACKS_PER_TRIAL
            assert not attacks.duplicated(["trial_id", "mode", "similarity", "pair", "lam"]).any()
            assert attack_task_nodes(cluster.address) == worker_ids

            mlflow.set_tracking_uri(tracking_uri)
            runs = mlflow.search_runs(experiment_names=["cluster3"])
            parents = runs[runs["tags.seatbelt.role"] == "sweep"]
            children = runs[runs["tags.seatbelt.role"] != "sweep"]
            assert len(parents) == 1 and (parents["status"] == "FINISHED").all()
            assert sorted(children["tags.trial_id"]) == sorted(TRIALS)  # none lost, none twice
            assert (children["status"] == "FINISHED").all()
            assert children["metrics.elbo"].notna().all()
            assert children["metrics.latent_kl_objective_mean"].notna().all()
            # The report went to the bucket, and through the server to its artifact store there.
            assert f"{BUCKET}/sweeps/cluster3/report/index.html" in s3_files("sweeps/cluster3/report")
            stored = s3_files("mlflow-artifacts")
            parent_id = parents["run_id"].iloc[0]
            assert any(p.endswith(f"{parent_id}/artifacts/report/index.html") for p in stored), sorted(stored)[:20]
            assert any(p.endswith(f"{parent_id}/artifacts/sweep_config.json") for p in stored)
    finally:
        cluster.shutdown()
