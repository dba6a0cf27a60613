"""Shared pieces of the end-to-end tests: a tiny sweep config and the CLI run as a user runs it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.dataset as pads

TINY_CONFIG = """
name = "{name}"
[grid]
datasets = ["dsprites_generated"]
models = {models}
betas = [1.0, 4.0]
layers = [1, 2]
z_dims = [4]
seeds = [0]
[data]
size = 1200
[train]
steps = {steps}
batch_size = 32
hidden_dim = 32
checkpoint_every = {checkpoint_every}
report_every = 10
eval_size = 64
noise_samples = 16
noise_sigmas = [0.5, 1.0]
[attack]
n_pairs = 2
n_lambdas = 3
maxiter = 8
[resources]
pairs_per_task = 1
max_failures = 1
"""


def write_config(folder: Path, name: str = "tiny", models: str = '["vae", "tcvae", "seatbelt"]',
                 steps: int = 30, checkpoint_every: int = 15) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(TINY_CONFIG.format(name=name, models=models, steps=steps,
                                       checkpoint_every=checkpoint_every))
    return path


def sweep_command(config: Path, out: Path, tracking_uri: str, *extra: str,
                  cluster: str = "local", ray_tmp: str | None = None) -> list[str]:
    """The CLI on a fresh local Ray instance (never one that happens to run on the machine),
    with its own short temp dir (Ray's socket paths must stay under 107 characters); with
    ``auto``, the local instance it may start gets the same."""
    command = [sys.executable, "-m", "sweep.grid", "--config", str(config), "--out", str(out),
               "--tracking-uri", tracking_uri, "--cluster", cluster, *extra]
    if cluster in ("local", "auto"):
        command += ["--num-cpus", "2", "--ray-temp-dir", ray_tmp or short_tmp_dir()]
    return command


def short_tmp_dir() -> str:
    return tempfile.mkdtemp(prefix="ray", dir="/tmp")


def sweep_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["SEATBELT_TMP"] = str(tmp_path / "scratch")
    env.pop("RAY_ADDRESS", None)
    return env


def run_sweep(command: list[str], tmp_path: Path, timeout: float = 600,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            env=env or sweep_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, f"sweep failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def read_rows(folder: Path):
    if not folder.exists():
        return None
    return pads.dataset(str(folder), format="parquet").to_table().to_pandas()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def moto_s3(bucket: str):
    """A moto S3 server on 127.0.0.1 with one bucket; yields the environment naming it (set in
    this process too, for pyarrow and boto3 here), and stops it afterwards."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}",
           "AWS_EC2_METADATA_DISABLED": "true", "MLFLOW_S3_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=bucket)
        yield env
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()
