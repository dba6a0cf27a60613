"""Daily use, end to end (issue 17), with the real CLI, Ray, MLflow and Chromium: progress bars
on a terminal, what a trial's MLflow run holds, ``mlflow ui`` on a finished sweep, a corrupt
checkpoint retrained alone, one sweep per results folder, and ``--cluster auto`` on a stale
address file.

One tiny sweep (three trials) is run once for the module, under a pseudo-terminal; the test
that corrupts one of its checkpoints and re-runs it comes last, since it changes the sweep."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import termios
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import torch

from models import load_checkpoint
from tests.sweep_helpers import (read_rows, run_sweep, short_tmp_dir, sweep_command, sweep_env,
                                 write_config)

pytestmark = pytest.mark.slow

MODELS = '["vae", "tcvae"]'
TRIALS = {"dsprites_generated-vae-b1-L1-z4-s0", "dsprites_generated-tcvae-b1-L1-z4-s0",
          "dsprites_generated-tcvae-b4-L1-z4-s0"}
STEPS = 30
ATTACKS_PER_TRIAL = 2 * 3 * 2  # pairs x lambdas x (latent kl, output)
TASKS = len(TRIALS) * 2 * 2    # (latent kl, output) x one pair per task
KEY = ["trial_id", "mode", "similarity", "pair", "lam"]
# What Tune adds to every result; none of it describes a model.
TUNE_FIELDS = {"pid", "timestamp", "time_this_iter_s", "time_since_restore", "time_total_s",
               "training_iteration", "iterations_since_restore", "done", "date", "hostname", "node_ip",
               "step"}
GRID_FIELDS = {"beta", "layers", "z_dim", "seed"}
CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class Sweep:
    folder: Path
    config: Path
    output: str  # what a user saw on the terminal

    @property
    def out(self) -> Path:
        return self.folder / "out"

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.folder}/mlflow.db"


def run_in_terminal(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 600) -> tuple[int, str]:
    """Run ``command`` with a pseudo-terminal (160 columns) as its stdin, stdout and stderr, as
    in a shell; returns its exit code and everything the terminal received."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    process = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env,
                               start_new_session=True)
    os.close(slave)
    received, deadline = [], time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                pytest.fail("the sweep did not end in time:\n" + b"".join(received).decode(errors="replace")[-3000:])
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # EIO: every process holding the terminal is gone
                    break
                if not data:
                    break
                received.append(data)
            elif process.poll() is not None:
                break
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        os.close(master)
    return process.returncode, b"".join(received).decode(errors="replace").replace("\r\n", "\n")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Sweep:
    folder = tmp_path_factory.mktemp("daily")
    config = write_config(folder, name="daily", models=MODELS, steps=STEPS)
    ray_tmp = short_tmp_dir()
    try:
        command = sweep_command(config, folder / "out", f"sqlite:///{folder}/mlflow.db", ray_tmp=ray_tmp)
        code, output = run_in_terminal(command, folder, sweep_env(folder))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert code == 0, output[-4000:]
    return Sweep(folder, config, output)


def runs(uri: str, experiment: str = "daily"):
    mlflow.set_tracking_uri(uri)
    frame = mlflow.search_runs(experiment_names=[experiment])
    return frame[frame["tags.seatbelt.role"] == "sweep"], frame[frame["tags.seatbelt.role"] != "sweep"]


# --- progress ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stage, unit, total", [("training", "step", len(TRIALS) * STEPS), ("attacks", "task", TASKS)])
def test_a_terminal_shows_one_updating_bar_per_stage(sweep, stage, unit, total):
    bars = [line for line in sweep.output.split("\n") if re.search(rf"(^|\r){stage}: +\d+%\|", line)]
    assert len(bars) == 1, f"{stage}: expected one bar line, got {len(bars)}:\n" + "\n".join(bars)
    draws = [draw for draw in bars[0].split("\r") if draw.startswith(f"{stage}:")]
    assert len(draws) >= 2, f"the {stage} bar was drawn once, never updated: {draws}"
    final = draws[-1]
    assert f"100%|" in final and f" {total}/{total} " in final
    assert re.search(rf"\d{unit}/s|s/{unit}", final), final  # the rate
    assert any(re.search(r"\[\d\d:\d\d<\d\d:\d\d", draw) for draw in draws[:-1])  # elapsed<ETA
    if stage == "training":
        assert f"{len(TRIALS)}/{len(TRIALS)} trials" in final


# --- what MLflow holds ---------------------------------------------------------------------------


def test_a_trial_run_holds_its_model_its_curves_and_no_tune_internals(sweep, tmp_path):
    client = mlflow.tracking.MlflowClient(sweep.uri)
    experiment = client.get_experiment_by_name("daily")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    parents, children = runs(sweep.uri)
    assert len(parents) == 1 and set(children["tags.trial_id"]) == TRIALS and len(children) == len(TRIALS)
    metrics = {c.removeprefix("metrics.") for c in children.columns if c.startswith("metrics.")}
    assert "elbo" in metrics and "loss" in metrics and "output_objective_mean" in metrics
    assert not metrics & TUNE_FIELDS, f"Tune internals logged as metrics: {metrics & TUNE_FIELDS}"
    assert not metrics & GRID_FIELDS, f"grid fields logged as metrics: {metrics & GRID_FIELDS}"
    assert GRID_FIELDS <= {c.removeprefix("params.") for c in children.columns if c.startswith("params.")}

    for _, run in children.iterrows():
        trial_id = run["tags.trial_id"]
        assert {a.path for a in client.list_artifacts(run["run_id"])} == {"checkpoint", "reconstructions.png"}
        local = client.download_artifacts(run["run_id"], f"checkpoint/{trial_id}.pt", str(tmp_path))
        model, step, _ = load_checkpoint(local)  # the project's loader reads the run's model
        assert step == STEPS and model.reconstruct(torch.zeros(1, 1, 64, 64)).shape == (1, 1, 64, 64)
        assert Path(local).read_bytes() == (sweep.out / "checkpoints" / f"{trial_id}.pt").read_bytes()
        curve = client.get_metric_history(run["run_id"], "loss")
        assert [m.step for m in curve] == [10, 15, 20, 30]
    picture = client.download_artifacts(children["run_id"].iloc[0], "reconstructions.png", str(tmp_path))
    from PIL import Image

    assert Image.open(picture).size == (2 * 64, 2 * 64)  # 2 pairs: sources above reconstructions

    inputs = client.get_run(parents["run_id"].iloc[0]).inputs.dataset_inputs
    linked = {i.dataset.name: json.loads(i.dataset.source)["uri"] for i in inputs}
    assert linked == {f"daily/{name}": str(sweep.out / name) for name in ("train", "noise", "attacks", "gallery")}


def dump_dom(url: str, profile: Path) -> str:
    """The page's text after its scripts ran, as headless Chromium renders it."""
    try:
        result = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
             f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--dump-dom", url],
            capture_output=True, text=True, timeout=180)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", result.stdout, flags=re.S)
    import html

    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)))


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_mlflow_ui_in_chromium_opens_on_the_sweeps_runs(sweep, tmp_path):
    from tests.test_faults import start_mlflow_server, stop

    link = re.search(r"then (http://127\.0\.0\.1:5000/\S+)", sweep.output)
    assert link, "the summary does not say which page to open"
    server, url = start_mlflow_server(sweep.folder / "mlflow.db", tmp_path / "artifacts", tmp_path / "ui.log")
    try:
        page = dump_dom(link.group(1).replace("http://127.0.0.1:5000", url), tmp_path / "profile-1")
        assert "Runs - Experiment" in page, page[:2000]
        assert "No data available" not in page  # not the GenAI traces overview
        assert f"{len(TRIALS) + 1} matching runs" in page and "sweep-daily" in page
        _, children = runs(sweep.uri)
        ids = urllib.parse.quote(json.dumps(sorted(children["run_id"])))
        experiment = urllib.parse.quote(json.dumps([children["experiment_id"].iloc[0]]))
        page = dump_dom(f"{url}/#/compare-runs?runs={ids}&experiments={experiment}", tmp_path / "profile-2")
        assert f"Comparing {len(TRIALS)} Runs" in page, page[:2000]
        for trial_id in TRIALS:
            assert trial_id in page
    finally:
        stop(server)


# --- one sweep per results folder ------------------------------------------------------------------


def test_a_second_sweep_on_a_folder_in_use_exits_2_and_the_first_finishes_alone(tmp_path, ray_tmp):
    config = write_config(tmp_path, name="locked", models='["vae"]', steps=60)
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    command = sweep_command(config, out, uri, "--no-report", ray_tmp=ray_tmp)
    with open(tmp_path / "first.out", "w") as stdout:
        first = subprocess.Popen(command, stdout=stdout, stderr=subprocess.STDOUT, env=sweep_env(tmp_path),
                                 cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "sweep.lock").exists() or not (out / "sweep.lock").read_text():
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.out").read_text()
            time.sleep(0.1)
        second = subprocess.run(sweep_command(config, out, uri, "--no-report", ray_tmp=ray_tmp),
                                capture_output=True, text=True,
                                timeout=120, env=sweep_env(tmp_path), cwd=tmp_path)
        assert first.poll() is None, "the first sweep ended before the second was refused"
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"is in use by pid {first.pid} on {socket.gethostname()}" in second.stderr
        assert "Traceback" not in second.stderr and "started a local Ray" not in second.stdout
        assert first.wait(timeout=600) == 0, (tmp_path / "first.out").read_text()[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert not (out / "sweep.lock").exists()
    train = read_rows(out / "train")
    assert list(train["trial_id"]) == ["dsprites_generated-vae-b1-L1-z4-s0"] and (train["status"] == "ok").all()
    attacks = read_rows(out / "attacks")
    assert len(attacks) == ATTACKS_PER_TRIAL and not attacks.duplicated(KEY).any()
    parents, children = runs(uri, "locked")
    assert len(parents) == 1 and len(children) == 1


# --- --cluster auto and a stale address file ---------------------------------------------------


def test_a_stale_address_file_leads_to_a_local_instance_within_30_s(tmp_path, ray_tmp):
    with socket.socket() as sock:  # a port where nothing listens, as after a crashed `ray start`
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray_dir = Path(short_tmp_dir())
    (ray_dir / "ray").mkdir()
    address_file = ray_dir / "ray" / "ray_current_cluster"
    address_file.write_text(f"127.0.0.1:{port}\n")
    config = write_config(tmp_path, name="stale", models='["vae"]')
    command = sweep_command(config, tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db", "--no-attacks",
                            "--no-report", cluster="auto", ray_tmp=ray_tmp)
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                               env={**sweep_env(tmp_path), "RAY_TMPDIR": str(ray_dir)}, start_new_session=True)
    try:
        seen = []
        for line in process.stdout:
            seen.append(line)
            if "started a local Ray instance" in line:
                break
        assert time.monotonic() - started < 30, "".join(seen)
        said = seen[-1] if seen else ""
        assert f"the address file {address_file}" in said and f"points at 127.0.0.1:{port}" in said, "".join(seen)
        assert "nothing answers" in said and "on 127.0.0.1" in said
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        shutil.rmtree(ray_dir, ignore_errors=True)


# --- a corrupt checkpoint, retrained alone (last: it changes the shared sweep) ----------------------


def test_a_corrupt_checkpoint_is_retrained_and_attacked_alone(sweep):
    out = sweep.out
    broken = "dsprites_generated-tcvae-b4-L1-z4-s0"
    others = sorted(TRIALS - {broken})
    # seeded garbage: about 1 in 13 random files fails torch.load with another error than
    # UnpicklingError ("is corrupt or truncated"), which made this test fail now and then
    (out / "checkpoints" / f"{broken}.pt").write_bytes(random.Random(0).randbytes(4096))
    files = lambda trial: [out / "train" / f"{trial}.parquet", out / "noise" / f"{trial}.parquet",  # noqa: E731
                           out / "checkpoints" / f"{trial}.pt", *sorted((out / "attacks" / trial).glob("*")),
                           *sorted((out / "gallery" / trial).glob("*"))]
    kept = {path: path.stat().st_mtime_ns for trial in others for path in files(trial)}
    old_attacks = {path: path.stat().st_mtime_ns for path in (out / "attacks" / broken).glob("*")}
    _, children = runs(sweep.uri)
    old_run = children.set_index("tags.trial_id").loc[broken, "run_id"]

    result = run_sweep(sweep_command(sweep.config, out, sweep.uri, "--no-report"), sweep.folder)
    assert f"checkpoints/{broken}.pt cannot be read safely; retraining {broken}" in result.stdout
    assert "training: 1 of 3 trials to run" in result.stdout
    assert f"attacks: 4 of {TASKS} tasks to run" in result.stdout
    assert {path: path.stat().st_mtime_ns for path in kept} == kept  # nothing else redone
    model, step, _ = load_checkpoint(out / "checkpoints" / f"{broken}.pt")
    assert step == STEPS
    train = read_rows(out / "train")
    assert sorted(train["trial_id"]) == sorted(TRIALS) and (train["status"] == "ok").all()
    attacks = read_rows(out / "attacks")
    assert len(attacks) == len(TRIALS) * ATTACKS_PER_TRIAL and not attacks.duplicated(KEY).any()
    assert all(path.stat().st_mtime_ns != mtime for path, mtime in old_attacks.items())
    assert len(read_rows(out / "noise").query("trial_id == @broken")) == 2 * 16

    parents, children = runs(sweep.uri)
    assert len(parents) == 1 and sorted(children["tags.trial_id"]) == sorted(TRIALS)  # one run each
    new_run = children.set_index("tags.trial_id").loc[broken]
    assert new_run["run_id"] != old_run and new_run["status"] == "FINISHED"
    client = mlflow.tracking.MlflowClient(sweep.uri)
    assert client.get_run(old_run).info.lifecycle_stage == "deleted"
    assert "cannot be read safely" in client.get_run(old_run).data.tags["seatbelt.deleted_because"]
    logged = client.download_artifacts(new_run["run_id"], f"checkpoint/{broken}.pt", str(sweep.folder / "dl"))
    assert hashlib.sha256(Path(logged).read_bytes()).digest() == \
        hashlib.sha256((out / "checkpoints" / f"{broken}.pt").read_bytes()).digest()
