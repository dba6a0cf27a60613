"""Reliability and security (issue 8): each test injects a fault into a real sweep and checks
the outcome. Real Ray (a local instance on 127.0.0.1 with its own temp dir), real MLflow (a
``mlflow server`` on 127.0.0.1 over SQLite, or SQLite directly), the real CLI.

One tiny sweep is run once for the module (``sweep``): five trials, one of them made to diverge
for real (learning rate 1e30 through the trainable's fault hook), against an MLflow server that
is killed once training has started; then the same command back-fills MLflow. The other tests
work on copies of its results folder and MLflow database.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest

from tests.sweep_helpers import read_rows, short_tmp_dir, sweep_command, sweep_env, write_config

pytestmark = pytest.mark.faults

DIVERGING = "dsprites_generated-tcvae-b4-L1-z4-s0"
TRIALS = {"dsprites_generated-vae-b1-L1-z4-s0", "dsprites_generated-tcvae-b1-L1-z4-s0", DIVERGING,
          "dsprites_generated-seatbelt-b1-L2-z4-s0", "dsprites_generated-seatbelt-b4-L2-z4-s0"}
OK_TRIALS = TRIALS - {DIVERGING}
ATTACKS_PER_TRIAL = 2 * 3 * 2  # pairs x lambdas x (latent kl, output)
TASKS_PER_TRIAL = 2 * 2  # (latent kl, output) x one pair per task
KEY = ["trial_id", "mode", "similarity", "pair", "lam"]


@dataclass
class Sweep:
    folder: Path  # holds the config, out/ and mlflow.db
    config: Path
    first: subprocess.CompletedProcess  # the run that lost its MLflow server
    backfill: subprocess.CompletedProcess  # the same command again, the store reachable

    @property
    def out(self) -> Path:
        return self.folder / "out"

    @property
    def db(self) -> Path:
        return self.folder / "mlflow.db"


# --- helpers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mlflow_server(db: Path, artifacts: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(artifacts),
               "--workers", "1"]
    with open(log, "w") as handle:
        server = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                  start_new_session=True, cwd=db.parent)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return server, uri
        except OSError:
            time.sleep(0.5)
        if server.poll() is not None:
            break
    stop(server)
    pytest.fail(f"mlflow server did not start:\n{log.read_text()[-2000:]}")


def stop(process: subprocess.Popen) -> None:
    """Kill a process started in its own session, with everything it started."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=60)


def run(command: list[str], folder: Path, env: dict[str, str] | None = None, timeout: float = 600,
        expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                            env=env or sweep_env(folder), cwd=folder)
    assert result.returncode == expect, (
        f"exit {result.returncode}, expected {expect}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def copy_sweep(sweep: Sweep, folder: Path) -> tuple[Path, str]:
    """A copy of the shared sweep's results folder and MLflow database, to damage freely."""
    shutil.copytree(sweep.out, folder / "out", ignore=shutil.ignore_patterns("tune"))
    shutil.copy(sweep.db, folder / "mlflow.db")
    return folder / "out", f"sqlite:///{folder}/mlflow.db"


def runs(uri: str, experiment: str = "faults"):
    mlflow.set_tracking_uri(uri)
    frame = mlflow.search_runs(experiment_names=[experiment])
    return frame[frame["tags.seatbelt.role"] == "sweep"], frame[frame["tags.seatbelt.role"] != "sweep"]


def assert_attacks_complete(out: Path, trials: set[str]) -> None:
    attacks = read_rows(out / "attacks")
    assert set(attacks["trial_id"]) == trials
    assert len(attacks) == len(trials) * ATTACKS_PER_TRIAL
    assert not attacks.duplicated(KEY).any(), "an attack key was written twice"


def wait_for(condition, process: subprocess.Popen | None, seconds: float, what: str, poll: float = 0.2):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            pytest.fail(f"the process ended before {what}")
        time.sleep(poll)
    pytest.fail(f"timed out waiting for {what}")


def parquet_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.parquet")) if folder.exists() else []


# --- the shared sweep: a diverging trial, and the MLflow server lost mid-sweep ----------------


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Sweep:
    folder = tmp_path_factory.mktemp("faults")
    config = write_config(folder, name="faults")
    out, db = folder / "out", folder / "mlflow.db"
    ray_tmp = short_tmp_dir()
    env = {**sweep_env(folder), "SEATBELT_FAULT_LR": f"{DIVERGING}=1e30"}
    server, uri = start_mlflow_server(db, folder / "artifacts", folder / "mlflow-server.log")
    try:
        command = sweep_command(config, out, uri, "--no-report", ray_tmp=ray_tmp)
        with open(folder / "first.out", "w") as stdout, open(folder / "first.err", "w") as stderr:
            process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env, cwd=folder,
                                       start_new_session=True)
            try:  # the tracking server goes away once the first trial has finished
                wait_for(lambda: parquet_files(out / "train"), process, 400, "a trial finished")
                stop(server)
                process.wait(timeout=600)
            finally:
                stop(process)
        first = subprocess.CompletedProcess(command, process.returncode, (folder / "first.out").read_text(),
                                            (folder / "first.err").read_text())
        assert first.returncode == 0, f"{first.stdout[-4000:]}\n{first.stderr[-4000:]}"
    finally:
        stop(server)
    # A later run of the same sweep, the store reachable again (the server's own database).
    backfill = run(sweep_command(config, out, f"sqlite:///{db}", "--no-report", ray_tmp=ray_tmp), folder, env)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return Sweep(folder, config, first, backfill)


@pytest.mark.slow
def test_tracking_server_lost_mid_sweep_keeps_results_and_backfills(sweep):
    # The sweep finished with every result in Parquet and said what it could not log.
    train = read_rows(sweep.out / "train")
    assert set(train["trial_id"]) == TRIALS and len(train) == len(TRIALS)
    assert_attacks_complete(sweep.out, OK_TRIALS)
    assert "logging call(s) failed; re-run the command to back-fill" in sweep.first.stdout
    # The later run back-filled every trial's run: one per trial, all closed, with its metrics.
    assert "logging call(s) failed" not in sweep.backfill.stdout
    parents, children = runs(f"sqlite:///{sweep.db}")
    assert len(parents) == 1 and (parents["status"] == "FINISHED").all()
    assert sorted(children["tags.trial_id"]) == sorted(TRIALS)
    assert not children["status"].isin(["RUNNING", "SCHEDULED"]).any()
    ok = children[children["tags.trial_id"].isin(OK_TRIALS)]
    assert (ok["status"] == "FINISHED").all()
    assert ok["metrics.elbo"].notna().all() and ok["metrics.mig"].notna().all()
    assert ok["metrics.latent_kl_objective_mean"].notna().all()
    # the output attack's summaries too (its AUDDC may be NaN: these 30-step models reconstruct
    # source and target alike, and AUDDC is then not reported)
    assert ok["metrics.output_objective_mean"].notna().all()


@pytest.mark.slow
def test_diverging_trial_stops_with_its_reason_and_is_not_attacked(sweep):
    train = read_rows(sweep.out / "train").set_index("trial_id")
    row = train.loc[DIVERGING]
    assert row["status"] == "diverged"
    assert row["reason"].startswith("loss became nan") or row["reason"].startswith("loss became inf")
    assert (train.drop(DIVERGING)["status"] == "ok").all()  # the rest of the sweep went on
    assert not (sweep.out / "checkpoints" / f"{DIVERGING}.pt").exists()
    assert not (sweep.out / "attacks" / DIVERGING).exists()
    # the summary says why
    line = next(l for l in sweep.first.stdout.splitlines() if l.strip().startswith(f"{DIVERGING} diverged:"))
    assert row["reason"] in line
    _, children = runs(f"sqlite:///{sweep.db}")
    run_ = children[children["tags.trial_id"] == DIVERGING].iloc[0]
    assert run_["status"] == "FAILED" and run_["tags.status"] == "diverged"
    assert run_["tags.reason"] == row["reason"]


# --- driver and worker loss during attacks --------------------------------------------------


@pytest.mark.slow
def test_driver_killed_during_attacks_resumes_without_attacking_twice(sweep, tmp_path, ray_tmp):
    out, uri = copy_sweep(sweep, tmp_path)
    shutil.rmtree(out / "attacks")
    shutil.rmtree(out / "gallery")
    total = len(OK_TRIALS) * TASKS_PER_TRIAL
    command = sweep_command(sweep.config, out, uri, "--no-report", ray_tmp=ray_tmp)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env=sweep_env(tmp_path), cwd=tmp_path, start_new_session=True)
    try:  # kill the driver and its Ray instance once some, not all, attack files exist
        wait_for(lambda: parquet_files(out / "attacks"), process, 300, "an attack file was written", 0.05)
    finally:
        stop(process)
    time.sleep(3)  # a worker of the killed Ray instance may still finish the task it was running
    written = {p: p.stat().st_mtime_ns for p in parquet_files(out / "attacks")}
    assert 1 <= len(written) < total

    result = run(command, tmp_path)
    assert f"attacks: {total - len(written)} of {total} tasks to run" in result.stdout, result.stdout
    assert_attacks_complete(out, OK_TRIALS)
    for path, mtime in written.items():  # nothing attacked twice
        assert path.stat().st_mtime_ns == mtime
    parents, children = runs(uri)
    assert len(parents) == 1 and (parents["status"] == "FINISHED").all()
    assert sorted(children["tags.trial_id"]) == sorted(TRIALS)  # one run per trial
    assert not children["status"].isin(["RUNNING", "SCHEDULED"]).any()


@pytest.mark.slow
def test_worker_killed_during_attacks_tasks_are_retried(sweep, tmp_path, ray_tmp):
    """The attack stage in this process on a local Ray instance; a thread SIGKILLs the worker
    processes running attack tasks (found by the title Ray gives them, ``ray::attack_task``)."""
    import ray
    from ray import _private  # noqa: F401  (psutil ships with Ray)

    sys.path.insert(0, str(Path(ray.__file__).parent / "thirdparty_files"))
    import psutil

    from results.store import Store
    from sweep.config import from_dict
    from sweep.fanout.stage import run_attacks
    from sweep.infra.cluster import connect, shutdown
    from sweep.train.training import finished_trials

    out, _ = copy_sweep(sweep, tmp_path)
    shutil.rmtree(out / "attacks")
    store = Store(out)
    resolved = store.read_json("sweep.json")
    resolved.pop("fingerprint")
    cfg = from_dict(resolved)
    killed: list[int] = []
    stop_killing = threading.Event()

    def killer():
        while not stop_killing.is_set() and len(killed) < 2:
            for proc in psutil.Process().children(recursive=True):
                try:
                    if proc.cmdline()[:1] == ["ray::attack_task"] and proc.pid not in killed:
                        os.kill(proc.pid, signal.SIGKILL)
                        killed.append(proc.pid)
                        time.sleep(1.0)  # let the retry start before the next kill
                        break
                except (psutil.Error, IndexError):
                    continue
            time.sleep(0.05)

    os.environ["SEATBELT_TMP"] = str(tmp_path / "scratch")
    connect("local", temp_dir=ray_tmp, num_cpus=2)
    thread = threading.Thread(target=killer, daemon=True)
    try:
        thread.start()
        failed = run_attacks(cfg, store, finished_trials(store), tracker=None)
    finally:
        stop_killing.set()
        thread.join(timeout=10)
        shutdown()
        os.environ.pop("SEATBELT_TMP", None)
    assert len(killed) == 2, "no attack task was caught running"
    assert failed == {}
    assert_attacks_complete(out, OK_TRIALS)  # every key exactly once


# --- bad files --------------------------------------------------------------------------------


class RunsCode:
    """Unpickling this runs ``touch MARKER`` (if anything is allowed to unpickle it)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_corrupt_attack_part_and_checkpoints_are_reported_and_handled(sweep, tmp_path, ray_tmp):
    """The attack stage alone (``sweep.attack``) reports bad checkpoints and marks their trials
    failed; the sweep's next run retrains those trials and attacks them, nothing else."""
    import torch

    out, uri = copy_sweep(sweep, tmp_path)
    redo, garbage, crafted, untouched = sorted(OK_TRIALS)
    # a truncated attack part: reported, deleted, its attacks redone
    part = parquet_files(out / "attacks" / redo)[0]
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    # a corrupt checkpoint, and one crafted to run code when unpickled; their attacks are to do
    (out / "checkpoints" / f"{garbage}.pt").write_bytes(b"PK\x03\x04 not a checkpoint" * 10)
    marker = tmp_path / "code-ran"
    torch.save({"format": "x", "payload": RunsCode(marker)}, out / "checkpoints" / f"{crafted}.pt")
    for trial_id in (garbage, crafted):
        shutil.rmtree(out / "attacks" / trial_id)
    kept = {p: p.stat().st_mtime_ns for p in parquet_files(out / "attacks" / untouched)}

    attack = [sys.executable, "-m", "sweep.attack", "--out", str(out), "--tracking-uri", uri,
              "--cluster", "local", "--num-cpus", "2", "--ray-temp-dir", ray_tmp]
    result = run(attack, tmp_path)
    assert f"attacks: attacks/{redo}/{part.name} is unreadable; its attacks will be redone" in result.stdout
    assert f"attacks: {1 + 2 * TASKS_PER_TRIAL} of {len(OK_TRIALS) * TASKS_PER_TRIAL} tasks to run" in result.stdout
    assert_attacks_complete(out, {redo, untouched})  # the rest went on; the part was redone
    assert pq.read_table(part).num_rows == ATTACKS_PER_TRIAL // TASKS_PER_TRIAL
    assert {p: p.stat().st_mtime_ns for p in parquet_files(out / "attacks" / untouched)} == kept
    # each bad checkpoint: a clear error naming the file, the trial marked failed
    lines = result.stdout.splitlines()
    for trial_id, why in ((garbage, "is corrupt or truncated"), (crafted, "cannot be read safely")):
        path = str(out / "checkpoints" / f"{trial_id}.pt")
        assert any(l.startswith(f"  {trial_id}: {TASKS_PER_TRIAL} task(s): CheckpointError: checkpoint {path} {why}")
                   for l in lines), result.stdout[-3000:]
    _, children = runs(uri)
    by_trial = children.set_index("tags.trial_id")
    for trial_id in (garbage, crafted):
        assert by_trial.loc[trial_id, "status"] == "FAILED"
        assert by_trial.loc[trial_id, "tags.attack_status"] == "failed"
        assert f"checkpoints/{trial_id}.pt" in by_trial.loc[trial_id, "tags.attack_reason"]
    assert (by_trial.loc[[redo, untouched], "status"] == "FINISHED").all()

    # The sweep's next run retrains the two trials (and only them), then attacks them.
    others = {p: p.stat().st_mtime_ns for t in (redo, untouched) for p in parquet_files(out / "attacks" / t)}
    result = run(sweep_command(sweep.config, out, uri, "--no-report", ray_tmp=ray_tmp), tmp_path)
    for trial_id, why in ((garbage, "is corrupt or truncated"), (crafted, "cannot be read safely")):
        assert f"checkpoints/{trial_id}.pt {why}; retraining {trial_id}" in result.stdout
    assert "training: 2 of 5 trials to run" in result.stdout
    assert f"attacks: {2 * TASKS_PER_TRIAL} of {len(OK_TRIALS) * TASKS_PER_TRIAL} tasks to run" in result.stdout
    assert_attacks_complete(out, OK_TRIALS)
    assert {p: p.stat().st_mtime_ns for p in others} == others
    assert not marker.exists(), "unpickling the crafted checkpoint ran its code"
    _, children = runs(uri)
    assert sorted(children["tags.trial_id"]) == sorted(TRIALS)  # one run per trial
    by_trial = children.set_index("tags.trial_id")
    assert (by_trial.loc[sorted(OK_TRIALS), "status"] == "FINISHED").all()


@pytest.mark.slow
def test_results_folder_of_another_config_is_refused_unless_reused(sweep, tmp_path, ray_tmp):
    from results.store import Store
    from sweep.cli.pipeline import check_results_folder
    from sweep.config import load_file

    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(sweep.out / "sweep.json", out / "sweep.json")
    before = (out / "sweep.json").read_bytes()
    other = write_config(tmp_path, name="faults", steps=31)  # same name, another config
    result = run(sweep_command(other, out, f"sqlite:///{tmp_path}/mlflow.db", "--no-report",
                               ray_tmp=ray_tmp), tmp_path, expect=2)
    assert f"--out {out} holds results of a different sweep config" in result.stderr
    assert "--reuse-out" in result.stderr and "Traceback" not in result.stderr
    assert (out / "sweep.json").read_bytes() == before and sorted(os.listdir(out)) == ["sweep.json"]
    check_results_folder(Store(out), load_file(other), reuse=True)  # --reuse-out: accepted
    with pytest.raises(Exception, match="different sweep config"):
        check_results_folder(Store(out), load_file(other), reuse=False)


# --- tracking store unreachable at start --------------------------------------------------


@pytest.mark.slow
def test_unreachable_tracking_store_is_a_clear_error_unless_running_without_tracking(sweep, tmp_path, ray_tmp):
    out = tmp_path / "out"
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    command = sweep_command(sweep.config, out, nowhere, "--no-report", ray_tmp=ray_tmp)
    started = time.monotonic()
    result = run(command, tmp_path, expect=2, timeout=300)
    assert time.monotonic() - started < 120
    assert f"cannot reach the MLflow tracking store at {nowhere}" in result.stderr
    assert "--no-tracking" in result.stderr and "Traceback" not in result.stderr
    assert not (out / "sweep.json").exists() and not (out / "train").exists()  # no work done

    (tmp_path / "copy").mkdir()
    out, _ = copy_sweep(sweep, tmp_path / "copy")
    result = run(sweep_command(sweep.config, out, nowhere, "--no-report", "--no-tracking", ray_tmp=ray_tmp),
                 tmp_path)
    assert "all 5 trials already finished" in result.stdout
    assert "attacks: all 16 tasks already written" in result.stdout
    assert "MLflow" not in result.stdout


# --- nothing executed from files -----------------------------------------------------------


def test_config_files_are_data_only(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    result = run([sys.executable, "-m", "sweep.grid", "--config", str(evil), "--dry-run"], tmp_path, expect=2)
    assert "Traceback" not in result.stderr and str(evil) in result.stderr
    assert not marker.exists()


def test_checkpoints_are_loaded_without_unpickling_code(tmp_path):
    """Every torch.load in the sweep and models packages is weights_only=True."""
    root = Path(__file__).resolve().parent.parent
    calls = []
    for package in ("models", "sweep", "attacks", "analysis"):
        for path in (root / package).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if "torch.load(" in line:
                    calls.append((path.relative_to(root), number, line))
    assert calls
    for path, number, line in calls:
        assert "weights_only=True" in line, f"{path}:{number}: {line.strip()}"
