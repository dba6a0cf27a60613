"""Resume that always resumes (issue 33): a sweep killed at any moment, re-run with the same
command, finishes, with nothing lost, duplicated or retrained.

Tune keeps an experiment's state in two files, its trial list (``experiment_state-*.json``) and
its searcher (``basic-variant-state-*.json``), uploaded to the results folder separately, in
parallel, after each save. A kill between the two uploads leaves a torn pair: in the bucket of
tests/test_scaleout_s3.py such a pair was there for 0.1-0.25 s at every trial boundary (the
searcher one trial ahead of, or behind, the trial list), which is when that test kills the
sweep. Restored as is, the searcher counts as running a trial that the restored controller
never runs or has already ended; with ``--max-concurrent 1`` it never hands out another trial,
and the controller waits in ``TuneController._update_trial_queue`` forever.

``test_resume_from_a_torn_tune_state_finishes`` makes that state on purpose, on a local folder:
the kill, then the searcher file one trial ahead (as seen in the bucket). The soak
(``-m soak``, also in ``-m faults``; a few minutes, so not in the default run) kills a sweep
at 10 seeded random moments on a local folder and at random moments on a moto S3 bucket,
through ``benchmarks/resume_soak.py``.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.sweep_helpers import read_rows, sweep_command, sweep_env, write_config

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parent.parent
TRIALS = {"dsprites_generated-tcvae-b1-L1-z4-s0", "dsprites_generated-tcvae-b4-L1-z4-s0",
          "dsprites_generated-seatbelt-b1-L2-z4-s0", "dsprites_generated-seatbelt-b4-L2-z4-s0"}
ATTACKS_PER_TRIAL = 2 * 3 * 2  # pairs x lambdas x (latent kl, output)
KEY = ["trial_id", "mode", "similarity", "pair", "lam"]


def soak_module():
    spec = importlib.util.spec_from_file_location("resume_soak", ROOT / "benchmarks" / "resume_soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_in_group(command: list[str], folder: Path, env: dict[str, str], timeout: float):
    """The CLI in its own process group, killed whole if it runs past ``timeout`` (after asking
    it, with SIGUSR2, for the dump that SEATBELT_DEBUG_DUMP names, shown in the failure)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env, cwd=folder, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        dump = env.get("SEATBELT_DEBUG_DUMP")
        if dump:
            os.kill(process.pid, signal.SIGUSR2)
            time.sleep(5)
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        text = Path(dump).read_text()[-6000:] if dump and Path(dump).exists() else ""
        pytest.fail(f"the resumed sweep did not finish within {timeout:.0f} s:\n{stdout[-3000:]}\n"
                    f"{stderr[-3000:]}\n{text}")
    assert process.returncode == 0, f"exit {process.returncode}:\n{stdout[-3000:]}\n{stderr[-3000:]}"
    return stdout, stderr


def tear_searcher_state(tune: Path) -> str:
    """Make the searcher one trial ahead of the trial list, as a kill between the two uploads
    leaves it: it has handed out the next trial (live), which the trial list does not hold."""
    import ray.cloudpickle as cloudpickle

    path = Path(sorted(glob.glob(str(tune / "basic-variant-state-*.json")))[-1])
    state = cloudpickle.loads(path.read_bytes())
    ahead = state["_uuid_prefix"] + "%05d" % state["_iterators"][0].counter
    state["_live_trials"] = {ahead}
    path.write_bytes(cloudpickle.dumps(state))
    return ahead


def test_prepare_restore_drops_the_searcher_state_and_starts_anew_without_a_readable_state(tmp_path, capsys):
    from results.store import Store
    from sweep.train.training import prepare_restore

    store = Store(tmp_path / "out")
    trial = json.dumps({"trial_id": "abcde_00000", "status": "RUNNING"})

    def experiment(*states: tuple[str, bytes]) -> None:
        store.delete_dir("tune")
        store.write_bytes("tune/tuner.pkl", b"tuner")
        store.write_bytes("tune/basic-variant-state-2026-01-01_00-00-00.json", b"searcher")
        store.write_bytes("tune/train_trial_abcde_00000/checkpoint_000000/model.pt", b"model")
        for name, data in states:
            store.write_bytes(f"tune/{name}", data)

    good = json.dumps({"trial_data": [[trial, "{}"]], "runner_data": {}}).encode()
    experiment(("experiment_state-2026-01-01_00-00-00.json", b"{trun"),  # an older, torn one
               ("experiment_state-2026-01-01_00-01-00.json", good))
    assert prepare_restore(store)
    assert store.exists("tune/tuner.pkl") and store.exists("tune/train_trial_abcde_00000/checkpoint_000000/model.pt")
    assert not any("basic-variant-state" in f for f in store.list_files("tune"))

    for states, why in (((), "has no saved state"),
                        ((("experiment_state-2026-01-01_00-00-00.json", good[:40]),), "has an unreadable state file"),
                        ((("experiment_state-2026-01-01_00-00-00.json", b'{"trial_data": []}'),),
                         "has no trial saved yet")):
        experiment(*states)
        assert not prepare_restore(store)
        assert why in capsys.readouterr().out
        assert not store.exists("tune")  # started anew


@pytest.mark.slow
def test_resume_from_a_torn_tune_state_finishes(tmp_path, ray_tmp):
    import mlflow

    config = write_config(tmp_path, name="torn", models='["tcvae", "seatbelt"]', steps=40, checkpoint_every=20)
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    command = sweep_command(config, out, uri, "--no-report", "--max-concurrent", "1", ray_tmp=ray_tmp)
    env = {**sweep_env(tmp_path), "SEATBELT_DEBUG_DUMP": str(tmp_path / "dump.txt")}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                               cwd=tmp_path, start_new_session=True)
    try:  # kill the driver and its Ray instance once a trial has written its row
        deadline = time.monotonic() + 400
        while not (list((out / "train").glob("*.parquet")) if (out / "train").exists() else []):
            assert process.poll() is None, "the sweep ended before it could be interrupted"
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    time.sleep(1)  # a worker of the killed instance may still finish writing
    finished_before = {p.name: p.stat().st_mtime_ns for p in (out / "train").glob("*.parquet")}
    assert 1 <= len(finished_before) < len(TRIALS)
    if not glob.glob(str(out / "tune" / "basic-variant-state-*.json")):
        pytest.skip("killed before Tune saved its experiment state")
    tear_searcher_state(out / "tune")

    stdout, _ = run_in_group(command, tmp_path, env, timeout=240)
    assert "resuming the interrupted Tune experiment" in stdout
    train = read_rows(out / "train")
    assert set(train["trial_id"]) == TRIALS and len(train) == len(TRIALS)
    assert (train["status"] == "ok").all() and (train["steps"] == 40).all()
    for name, mtime in finished_before.items():  # finished trials were not retrained
        assert (out / "train" / name).stat().st_mtime_ns == mtime
    attacks = read_rows(out / "attacks")
    assert len(attacks) == len(TRIALS) * ATTACKS_PER_TRIAL and not attacks.duplicated(KEY).any()
    mlflow.set_tracking_uri(uri)
    frame = mlflow.search_runs(experiment_names=["torn"])
    children = frame[frame["tags.seatbelt.role"] != "sweep"]
    assert sorted(children["tags.trial_id"]) == sorted(TRIALS)  # one run per trial
    assert (children["status"] == "FINISHED").all()


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.parametrize("store, kills", [("local", 10), ("s3", 3)])
def test_soak_kill_and_resume(tmp_path, store, kills):
    """A tiny sweep SIGKILLed (its whole process group) at seeded random moments, resumed with
    the same command each time; then checked (benchmarks/resume_soak.py): one train row per
    trial, one attack row per key, finished trials' files untouched, every checkpoint loads,
    one closed MLflow run per trial. The full S3 soak: benchmarks/resume_soak.py --store s3."""
    if store == "s3":
        pytest.importorskip("moto.server", reason="pip install 'moto[server]'")
    soak = soak_module()
    lines: list[str] = []
    lives = soak.soak(store, kills=kills, seed=33, lives=1, timeout=240, work=tmp_path / "soak", log=lines.append)
    report = "\n".join(lines)
    assert len(lives[0].kills) == kills, report
    assert not lives[0].problems, report
