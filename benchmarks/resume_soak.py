"""Kill-and-resume soak (issue 33): a tiny sweep killed with SIGKILL (the driver's whole process
group: the CLI and its local Ray instance) at seeded random moments across its life, then
resumed with the same command each time; at the end the results are checked.

    python benchmarks/resume_soak.py [--store local|s3] [--kills 10] [--seed 0] [--lives 1]
                                     [--resume-timeout 240] [--kill-when random|time|trials:N|torn]
                                     [--keep DIR]

``--store s3`` starts a moto S3 server on 127.0.0.1 (``pip install 'moto[server]'``) and puts
the results folder in a bucket there. The sweep: 5 trials (vae; tcvae, seatbelt x 2 betas) of
``--steps`` steps, ``--max-concurrent 1``, GPUs asked for and dropped (no GPU here), 20 attack
tasks, the report. The kills' moments are seeded random points across the sweep's life, counted
in progress (a unit per trial trained, as many for the attacks, a half for the report; odds 0.6
in training, 0.25 in the attacks, 0.15 in the report), sorted:
a run is killed 0-3 s after the sweep reaches its moment (training the next trial, between
trials, attacking, writing the report), or, when the sweep has passed it already,
``--min-delay`` .. ``--max-delay`` s into the run (starting Ray, restoring Tune's experiment).
Each kill line says where it landed (rows and files written, and Tune's saved state: trials,
searcher). ``--kill-when time`` kills every run ``--min-delay`` .. ``--max-delay`` s in.

``--kill-when trials:N`` instead kills once N trials have written their rows (the moment
tests/test_scaleout_s3.py kills at), once per life; ``--kill-when torn`` kills the moment the
results folder holds a torn Tune state (the searcher counting as running a trial the trial list
has ended or lacks: the state that made resumes hang), once per life. ``--lives N`` repeats the
whole life N times (a failure rate): the last line gives it with a 95% Wilson interval, over the
lives that were killed as asked (a life whose sweep ended before its kill is counted apart).

Every run that is not killed must finish within ``--resume-timeout`` seconds. One that does not is
a hang: the driver is asked for its dump (SIGUSR2 with SEATBELT_DEBUG_DUMP, see
sweep/infra/debug_dump.py: threads, Tune's trials and searcher, Ray's resources and placement
groups), Tune's state files are copied beside it, and the process group is killed.

Checked at the end of each life: exactly one ``train/`` row per trial, all ok; one attack row per
(trial, mode, similarity, pair, lambda); finished trials never retrained (the ``train/`` and
``checkpoints/`` files seen at any kill are unchanged at the end); every checkpoint loads; MLflow
holds exactly one closed (FINISHED) run per trial and one FINISHED parent run. Exit status 0 if
every life passed. Each life's folder (runs' output, Tune state at each kill, the dump) is kept
with ``--keep DIR``, or when a life failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.sweep_helpers import moto_s3, sweep_command, write_config  # noqa: E402

BUCKET = "soak"
KEY = ["trial_id", "mode", "similarity", "pair", "lam"]
TASKS_PER_TRIAL = 2 * 2  # attack files per trial: (latent kl, output) x 2 pairs, one pair per task


def wilson(failures: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = failures / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# --- the results folder, local or in the bucket ---------------------------------------------


def versions(out: str, folder: str) -> dict[str, tuple]:
    """relative path -> (mtime, size or ETag) of each finished file under ``folder``."""
    from results.store import Store

    store = Store(out, create=False)
    if out.startswith("s3://"):
        import boto3

        bucket, _, prefix = out[len("s3://"):].partition("/")
        client = boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
        found = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/{folder}/"):
            for item in page.get("Contents", []):
                found[item["Key"][len(prefix) + 1:]] = (item["LastModified"].isoformat(), item["ETag"])
        return found
    import pyarrow.fs as pafs

    selector = pafs.FileSelector(store.path(folder), recursive=True, allow_not_found=True)
    return {os.path.relpath(i.path, store.root): (i.mtime_ns, i.size) for i in store.fs.get_file_info(selector)
            if i.type == pafs.FileType.File and ".tmp-" not in i.base_name}


def where(out: str) -> str:
    """Where the sweep is: trials finished, attack files, report."""
    train = [p for p in versions(out, "train") if p.endswith(".parquet")]
    attacks = [p for p in versions(out, "attacks") if p.endswith(".parquet")]
    report = any(p.endswith("index.html") for p in versions(out, "report"))
    return f"train rows {len(train)}, attack files {len(attacks)}, report {'yes' if report else 'no'}"


# --- one life ----------------------------------------------------------------------------------


@dataclass
class Life:
    number: int
    folder: Path
    out: str
    uri: str
    command: list[str]
    env: dict[str, str]
    trials: int
    attacks_per_trial: int
    kills: list[str] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)   # seconds of each run
    seen: dict[str, tuple] = field(default_factory=dict)  # train/ and checkpoints/ files at the kills
    problems: list[str] = field(default_factory=list)
    hang: bool = False


def start(life: Life, attempt: int) -> subprocess.Popen:
    stdout = open(life.folder / f"run-{attempt:02d}.out", "w")
    stderr = open(life.folder / f"run-{attempt:02d}.err", "w")
    return subprocess.Popen(life.command, stdout=stdout, stderr=stderr, env=life.env, cwd=life.folder,
                            start_new_session=True)


def kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def on_hang(life: Life, process: subprocess.Popen, attempt: int) -> None:
    """Ask the driver for its dump, keep the experiment state, kill the group."""
    life.hang = True
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGUSR2)
    time.sleep(5)
    keep_state(life, f"hang-{attempt:02d}")
    kill_group(process)


def keep_state(life: Life, name: str) -> None:
    """A copy of Tune's experiment-level state files (what a resume restores from)."""
    from results.store import Store

    kept = life.folder / name
    kept.mkdir(exist_ok=True)
    store = Store(life.out, create=False)
    for relpath in store.list_files("tune"):
        if relpath.count("/") == 1 and relpath.endswith((".json", ".pkl")):
            store.download(relpath, kept / Path(relpath).name)


def tune_state(folder: Path) -> tuple[str, list[str]]:
    """What a kept (or the store's) experiment state says: each trial's status, the searcher's
    live trials and position, and which of its live trials the trial list does not hold
    unfinished ("torn": such a trial never completes, and with max_concurrent of them the
    restored searcher never hands out another trial)."""
    import glob

    experiment = sorted(glob.glob(str(folder / "experiment_state-*.json")))
    searcher = sorted(glob.glob(str(folder / "basic-variant-state-*.json")))
    return describe_state(Path(experiment[-1]).read_bytes() if experiment else None,
                          Path(searcher[-1]).read_bytes() if searcher else None)


def store_tune_state(out: str) -> tuple[str, list[str]]:
    """tune_state of the experiment state in the results folder now."""
    from results.store import Store

    store = Store(out, create=False)
    files = [f for f in store.list_files("tune") if f.count("/") == 1]
    experiment = sorted(f for f in files if "/experiment_state-" in f)
    searcher = sorted(f for f in files if "/basic-variant-state-" in f)
    try:
        return describe_state(store.read_bytes(experiment[-1]) if experiment else None,
                              store.read_bytes(searcher[-1]) if searcher else None)
    except Exception as exc:  # read while being replaced
        return f"unreadable ({type(exc).__name__})", []


def describe_state(experiment: bytes | None, searcher: bytes | None) -> tuple[str, list[str]]:
    if experiment is None:
        return "no experiment state", []
    try:
        trials = {}
        for trial_json, _ in json.loads(experiment)["trial_data"]:
            trial = json.loads(trial_json)
            trials[trial["trial_id"]] = trial["status"]
    except ValueError as exc:
        return f"experiment state unreadable ({exc})", []
    text = "trials " + " ".join(f"{t[-2:]}:{s[:4]}" for t, s in sorted(trials.items()))
    if searcher is None:
        return text + "; no searcher state", []
    import ray.cloudpickle as cloudpickle

    state = cloudpickle.loads(searcher)
    live = sorted(state["_live_trials"])
    stale = [t for t in live if trials.get(t) in (None, "TERMINATED")]
    counters = [i.counter for i in state["_iterators"]]
    text += (f"; searcher live {[t[-2:] for t in live]} next {counters} finished {state['_finished']}"
             f"{'; TORN ' + str([t[-2:] for t in stale]) if stale else ''}")
    return text, stale


def progress(life: Life) -> float:
    """How far the sweep is, in units: one per trial trained, the attacks as many units as there
    are trials, one for the report."""
    files = {folder: versions(life.out, folder) for folder in ("train", "attacks", "report")}
    trained = sum(p.endswith(".parquet") for p in files["train"])
    attacked = sum(p.endswith(".parquet") for p in files["attacks"]) / (life.trials * TASKS_PER_TRIAL)
    return trained + life.trials * min(1.0, attacked) + any(p.endswith("index.html") for p in files["report"])


def run_life(life: Life, kills: int, rng: random.Random, kill_when: str, min_delay: float,
             max_delay: float, timeout: float, log, jitter: float = 0.0) -> None:
    # random: the kills' moments across the life, as progress (seeded, sorted): in training
    # (progress 0..trials) with odds 0.6, in the attacks (trials..2 trials) 0.25, in the report
    # (the last half unit) 0.15. A kill whose moment the sweep has passed already when a run
    # starts lands min_delay..max_delay s into that run (starting Ray, restoring Tune's
    # experiment); otherwise 0-3 s after the moment is reached (training the next trial,
    # between trials, attacking, writing the report).
    def moment() -> float:
        phase = rng.choices(((0, life.trials), (life.trials, 2 * life.trials),
                             (2 * life.trials, 2 * life.trials + 0.5)), weights=(0.6, 0.25, 0.15))[0]
        return rng.uniform(*phase)

    targets = sorted(moment() for _ in range(kills))
    attempt = 0
    while True:
        attempt += 1
        killing = len(life.kills) < kills
        target = targets[len(life.kills)] if killing else None
        delay = rng.uniform(min_delay, max_delay)
        after = rng.uniform(0, 3)
        # random: a moment the sweep has passed already is hit by time, early in this run
        by_time = killing and kill_when == "random" and progress(life) >= target
        reached_at = None
        process = start(life, attempt)
        started = time.monotonic()
        killed = False
        while process.poll() is None:
            elapsed = time.monotonic() - started
            if killing and kill_when == "random":
                if not by_time and reached_at is None and progress(life) >= target:
                    reached_at = elapsed
                due = elapsed >= delay if by_time else (reached_at is not None and elapsed >= reached_at + after)
            elif killing and kill_when.startswith("trials:"):
                due = len([p for p in versions(life.out, "train") if p.endswith(".parquet")]) >= int(kill_when[7:])
                if due and jitter:
                    time.sleep(rng.uniform(0, jitter))
            elif killing and kill_when == "torn":  # the moment a kill leaves a torn state
                due = bool(store_tune_state(life.out)[1])
            else:
                due = killing and elapsed >= delay  # time: min_delay..max_delay s into each run
            if due:
                kill_group(process)
                killed = True
                time.sleep(1)  # a worker of the killed Ray instance may still finish a write
                seen = {**{f"train/{k}": v for k, v in versions(life.out, "train").items()},
                        **{f"checkpoints/{k}": v for k, v in versions(life.out, "checkpoints").items()}}
                life.seen.update({k: v for k, v in seen.items() if k not in life.seen})
                name = f"kill-{len(life.kills) + 1:02d}"
                keep_state(life, name)
                aim = f" (progress {target:.2f})" if kill_when == "random" else ""
                life.kills.append(f"kill {len(life.kills) + 1} at {elapsed:5.1f} s{aim}: {where(life.out)}; "
                                  f"{tune_state(life.folder / name)[0]}")
                log(f"  life {life.number} {life.kills[-1]}")
                break
            if elapsed > timeout:
                log(f"  life {life.number} run {attempt}: no end after {timeout:.0f} s ({where(life.out)}): HANG")
                on_hang(life, process, attempt)
                life.problems.append(f"run {attempt} did not finish within {timeout:.0f} s (a hang)")
                return
            time.sleep(0.02 if kill_when == "torn" else 0.25)
        life.runs.append(time.monotonic() - started)
        if killed:
            continue
        if process.returncode != 0:
            err = (life.folder / f"run-{attempt:02d}.err").read_text()[-2000:]
            life.problems.append(f"run {attempt} exited {process.returncode}: {err}")
            return
        log(f"  life {life.number} run {attempt} finished in {life.runs[-1]:.1f} s ({where(life.out)})")
        if len(life.kills) >= kills:
            return
        # the sweep ended before all its kills: the next kill has nothing left to interrupt
        life.problems.append(f"the sweep finished after {len(life.kills)} of {kills} kills "
                             "(raise the sweep's size or lower --max-delay)")
        return


def check(life: Life) -> None:
    """The end state: nothing lost, nothing duplicated, nothing retrained."""
    import mlflow
    import pyarrow.dataset as pads

    from models import load_checkpoint
    from results.store import Store

    store = Store(life.out, create=False)
    problems = life.problems

    def rows(folder):
        files = store.list_files(folder, ".parquet")
        if not files:
            return None
        return pads.dataset([store.path(f) for f in files], format="parquet", filesystem=store.fs).to_table().to_pandas()

    train = rows("train")
    if train is None or len(train) != life.trials or train["trial_id"].nunique() != life.trials:
        problems.append(f"train rows: {0 if train is None else len(train)}, expected one per trial ({life.trials})")
    elif not (train["status"] == "ok").all():
        problems.append(f"train rows not ok: {train[train['status'] != 'ok'][['trial_id', 'status', 'reason']]}")
    attacks = rows("attacks")
    expected = life.trials * life.attacks_per_trial
    if attacks is None or len(attacks) != expected:
        problems.append(f"attack rows: {0 if attacks is None else len(attacks)}, expected {expected}")
    elif attacks.duplicated(KEY).any():
        problems.append(f"{int(attacks.duplicated(KEY).sum())} attack keys written twice")
    now = {**{f"train/{k}": v for k, v in versions(life.out, "train").items()},
           **{f"checkpoints/{k}": v for k, v in versions(life.out, "checkpoints").items()}}
    rewritten = sorted(p for p, v in life.seen.items() if now.get(p) != v)
    if rewritten:
        problems.append(f"finished trials' files rewritten (retrained): {rewritten}")
    checkpoints = store.list_files("checkpoints", ".pt")
    if len(checkpoints) != life.trials:
        problems.append(f"{len(checkpoints)} checkpoints, expected {life.trials}")
    with tempfile.TemporaryDirectory() as folder:
        for relpath in checkpoints:
            try:
                local = store.path(relpath) if store.is_local else store.download(relpath, Path(folder) / "m.pt")
                load_checkpoint(local, map_location="cpu")
            except Exception as exc:
                problems.append(f"{relpath} does not load: {type(exc).__name__}: {exc}")
    mlflow.set_tracking_uri(life.uri)
    frame = mlflow.search_runs(search_all_experiments=True)
    parents = frame[frame["tags.seatbelt.role"] == "sweep"]
    children = frame[frame["tags.seatbelt.role"] != "sweep"]
    if len(parents) != 1 or not (parents["status"] == "FINISHED").all():
        problems.append(f"MLflow parent runs: {list(parents['status'])}, expected one FINISHED")
    if len(children) != life.trials or children["tags.trial_id"].nunique() != life.trials:
        problems.append(f"MLflow trial runs: {len(children)} ({children['tags.trial_id'].nunique()} trials), "
                        f"expected one per trial ({life.trials})")
    if not (children["status"] == "FINISHED").all():
        problems.append(f"MLflow trial runs not closed: {sorted(children['status'])}")


def soak(store: str = "local", kills: int = 10, seed: int = 0, lives: int = 1, timeout: float = 240,
         kill_when: str = "random", min_delay: float = 3, max_delay: float = 12, max_concurrent: int = 1,
         work: Path | None = None, extra_env: dict[str, str] | None = None, models: str = '["vae", "tcvae", "seatbelt"]',
         steps: int = 300, log=print, jitter: float = 0.0) -> list[Life]:
    """Run ``lives`` lives of the soak; returns them, each with its ``problems`` (empty: passed)."""
    work = Path(work or tempfile.mkdtemp(prefix="soak"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    done: list[Life] = []
    with (moto_s3(BUCKET) if store == "s3" else contextlib.nullcontext({})) as s3_env:
        for number in range(1, lives + 1):
            folder = work / f"life-{number:03d}"
            folder.mkdir()
            config = write_config(folder, name="soak", models=models, steps=steps,
                                  checkpoint_every=max(20, steps // 10))
            out = f"s3://{BUCKET}/{folder.name}-{seed}" if store == "s3" else str(folder / "out")
            uri = f"sqlite:///{folder}/mlflow.db"
            ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
            command = sweep_command(config, Path("unused"), uri, "--max-concurrent", str(max_concurrent), "--gpus-per-trial", "0.5", "--gpus-per-attack-task", "0.5",
                                    ray_tmp=ray_tmp)
            command[command.index("--out") + 1] = out
            env = {**os.environ, **s3_env, **(extra_env or {}), "SEATBELT_TMP": str(folder / "scratch"),
                   "SEATBELT_DEBUG_DUMP": str(folder / "dump.txt")}
            env.pop("RAY_ADDRESS", None)
            from sweep.config import load_file
            from sweep.config.trials import expand_grid

            trials = len(expand_grid(load_file(str(config)).grid))
            life = Life(number, folder, out, uri, command, env, trials, attacks_per_trial=2 * 3 * 2)
            started = time.monotonic()
            try:
                run_life(life, kills, rng, kill_when, min_delay, max_delay, timeout, log, jitter)
                if not life.hang:
                    check(life)
            finally:
                shutil.rmtree(ray_tmp, ignore_errors=True)
            verdict = "passed" if not life.problems else "FAILED: " + "; ".join(life.problems)
            log(f"life {life.number}: {len(life.kills)} kills, {len(life.runs)} runs, "
                f"{time.monotonic() - started:.0f} s: {verdict}")
            done.append(life)
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=("local", "s3"), default="local")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lives", type=int, default=1)
    parser.add_argument("--resume-timeout", type=float, default=240)
    parser.add_argument("--kill-when", default="random", help="random (moments across the life); time (min-delay..max-delay s into each run); "
                             "trials:N (once N trials wrote their rows); torn (once the store holds "
                             "an experiment state whose searcher counts a trial the trial list has ended)")
    parser.add_argument("--jitter", type=float, default=0.0,
                        help="with trials:N, kill a seeded random 0..JITTER s after the Nth row appears")
    parser.add_argument("--min-delay", type=float, default=3)
    parser.add_argument("--max-delay", type=float, default=12)
    parser.add_argument("--max-concurrent", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300,
                        help="training steps per trial (a Tune checkpoint every steps/10, at least 20)")
    parser.add_argument("--models", default='["vae", "tcvae", "seatbelt"]', help="JSON list of model kinds")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp one, removed)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="soak"))
    lives = soak(args.store, args.kills, args.seed, args.lives, args.resume_timeout, args.kill_when,
                 args.min_delay, args.max_delay, args.max_concurrent, work, models=args.models,
                 steps=args.steps, log=lambda line: print(line, flush=True), jitter=args.jitter)
    failed = [life for life in lives if life.problems]
    short = [life for life in lives if len(life.kills) < args.kills and not life.hang]
    counted = [life for life in lives if life not in short]
    bad = [life for life in counted if life.problems]
    hangs = sum(life.hang for life in lives)
    low, high = wilson(len(bad), len(counted))
    if short:
        print(f"{len(short)} of {len(lives)} lives ended before their {args.kills} kill(s) (not counted below)")
    print(f"{len(counted) - len(bad)}/{len(counted)} killed lives passed; {len(bad)} failed ({hangs} hangs); "
          f"failure rate {len(bad) / max(1, len(counted)):.2f}, 95% Wilson interval [{low:.2f}, {high:.2f}]")
    if args.keep is None and not failed:
        shutil.rmtree(work, ignore_errors=True)
    elif failed:
        print(f"kept: {work}")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
