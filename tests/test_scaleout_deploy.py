"""Scale-out, fast checks: the cluster configs parse (the AWS one passes Ray's own cluster-launcher
schema), ``--plan`` measures and multiplies out, and the GPU placement rule (keep a GPU request
the cluster or its autoscaler can meet, else run on CPUs with a warning)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sweep.config import ResourceConfig
from tests.sweep_helpers import write_config

ROOT = Path(__file__).resolve().parents[1]


def test_aws_cluster_config_passes_the_ray_launcher_schema():
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    config = yaml.safe_load((ROOT / "deploy/aws/cluster.yaml").read_text())
    validate_config(fillout_defaults(config))
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["node_config"]["InstanceType"] == "m5.2xlarge" and head["resources"]["GPU"] == 0
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert {t["node_config"]["InstanceType"] for t in gpu_types.values()} == {"g5.xlarge", "g5.12xlarge"}
    for t in gpu_types.values():  # they autoscale from zero
        assert t["min_workers"] == 0 < t["max_workers"]
    assert any("--num-gpus=0" in c for c in config["head_start_ray_commands"])
    assert any("pip install" in c and "/home/ubuntu/seatbelt-sweep" in c for c in config["setup_commands"])


def test_kuberay_cluster_has_a_cpu_head_and_an_autoscaling_gpu_group():
    spec = yaml.safe_load((ROOT / "deploy/kuberay/raycluster.yaml").read_text())
    assert spec["apiVersion"] == "ray.io/v1" and spec["kind"] == "RayCluster"
    body = spec["spec"]
    assert body["enableInTreeAutoscaling"] is True
    assert body["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    (group,) = body["workerGroupSpecs"]
    assert group["minReplicas"] == 0 < group["maxReplicas"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1


def test_plan_prints_trials_attacks_costs_and_gpu_hours(tmp_path):
    config = write_config(tmp_path, name="planned")
    result = subprocess.run([sys.executable, "-m", "sweep.grid", "--config", str(config), "--dry-run", "--plan",
                             "--gpus", "4", "--gpu-speedup", "10", "--evals-per-attack", "50"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "sweep 'planned': 5 trials, 60 attacks" in text
    assert "plan for 4 GPUs, measured on this device: CPU" in text
    assert "GPU figures = this CPU's / 10 (--gpu-speedup 10" in text
    assert "evaluations per attack: given (--evals-per-attack)" in text
    assert "GPU-hours:" in text and "wall time on 4 GPUs:" in text
    assert "latent/kl" in text and "output/elbo" in text


def test_gpu_requests_fall_back_to_cpu_only_when_no_gpu_can_ever_come(monkeypatch):
    import ray

    import sweep.infra.cluster as cluster

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    monkeypatch.setattr(cluster, "max_autoscaled", lambda resource: 16.0)  # a `ray up` cluster
    res = ResourceConfig(gpus_per_trial=0.25, gpus_per_attack_task=0.5)
    lines = cluster.place_on_gpus(res)
    assert "the autoscaler can add up to 16" in lines[0]
    assert (res.gpus_per_trial, res.gpus_per_attack_task) == (0.25, 0.5)

    monkeypatch.setattr(cluster, "max_autoscaled", lambda resource: None)  # a fixed CPU cluster
    lines = cluster.place_on_gpus(res)
    assert lines[0].startswith("warning:") and "run on CPUs" in lines[0]
    assert (res.gpus_per_trial, res.gpus_per_attack_task) == (0.0, 0.0)
    assert cluster.place_on_gpus(ResourceConfig()) == []  # nothing asked, nothing said


@pytest.mark.parametrize("uri, relpath, expected", [
    ("s3://b/sweeps/x", "train", "s3://b/sweeps/x/train"),
    ("s3://b/sweeps/x/?endpoint_override=127.0.0.1:9000&scheme=http", "tune",
     "s3://b/sweeps/x/tune?endpoint_override=127.0.0.1:9000&scheme=http"),
])
def test_store_uri_of_keeps_the_query_last(uri, relpath, expected, monkeypatch):
    import pyarrow.fs as pafs

    from results.store import Store

    store = Store.__new__(Store)
    store.fs, store.root = pafs.LocalFileSystem(), "/unused"
    base, sep, query = uri.partition("?")
    store.uri = base.rstrip("/") + sep + query
    assert store.uri_of(relpath) == expected
