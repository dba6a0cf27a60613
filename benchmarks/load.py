"""Load benchmark: a grid of >= 200 tiny trials and >= 100,000 attack rows, run to the end with
the real CLI (a local Ray instance on 127.0.0.1, MLflow on SQLite), then read back with the
analysis loader. Prints the wall time, the peak memory and the open file handles.

    python benchmarks/load.py [--seeds 40] [--pairs 10] [--lambdas 51] [--keep DIR]

The grid: vae (beta 1, L 1), tcvae (beta 1, 4; L 1), seatbelt (beta 1, 4; L 2) x seeds, |z| 2,
hidden width 8, 5 training steps; attacks: n_pairs x n_lambdas per trial, latent KL attack, one
L-BFGS-B iteration each, all pairs of a trial in one task. With the defaults: 200 trials,
200 x 10 x 51 = 102,000 attack rows.

Memory is sampled every half second over the whole process tree (the CLI, Ray's GCS, raylet and
workers): the peak of the sum of their resident sets, the largest single process, and the most
file descriptors open at once (summed, and in the CLI process alone). getrusage's peaks of this
process and its waited-for children are printed too.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from results.vocabulary import KL, LATENT  # noqa: E402

CONFIG = """
name = "load"
[grid]
datasets = ["dsprites_generated"]
models = ["vae", "tcvae", "seatbelt"]
betas = [1.0, 4.0]
layers = [1, 2]
z_dims = [2]
seeds = {seeds}
[data]
size = 2000
[train]
steps = 5
batch_size = 16
hidden_dim = 8
checkpoint_every = 5
report_every = 5
eval_size = 16
noise_samples = 4
noise_sigmas = [1.0]
[attack]
n_pairs = {pairs}
n_lambdas = {lambdas}
modes = ["{mode}"]
similarities = ["{similarity}"]
maxiter = 1
maxfun = 3
[resources]
pairs_per_task = {pairs}
"""


def _psutil():
    import ray

    sys.path.insert(0, str(Path(ray.__file__).parent / "thirdparty_files"))  # psutil ships with Ray
    import psutil

    return psutil


class Sampler(threading.Thread):
    """Peak memory and file descriptors of a process and all its descendants."""

    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True)
        self.psutil = _psutil()
        self.root = self.psutil.Process(pid)
        self.every = every
        self.stopped = threading.Event()
        self.peak_rss = self.peak_single_rss = self.peak_fds = self.peak_driver_fds = 0
        self.peak_processes = 0

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                procs = [self.root] + self.root.children(recursive=True)
            except self.psutil.Error:
                break
            rss = fds = 0
            for proc in procs:
                try:
                    r = proc.memory_info().rss
                    n = proc.num_fds()
                except self.psutil.Error:
                    continue
                rss += r
                fds += n
                self.peak_single_rss = max(self.peak_single_rss, r)
                if proc.pid == self.root.pid:
                    self.peak_driver_fds = max(self.peak_driver_fds, n)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_fds = max(self.peak_fds, fds)
            self.peak_processes = max(self.peak_processes, len(procs))
            self.stopped.wait(self.every)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=40, help="seeds; 5 trials each (default 40: 200 trials)")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--lambdas", type=int, default=51)
    parser.add_argument("--keep", help="results folder to keep (default: a temporary one, removed)")
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()

    work = Path(args.keep or tempfile.mkdtemp(prefix="seatbelt-load-"))
    work.mkdir(parents=True, exist_ok=True)
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    config = work / "load.toml"
    config.write_text(CONFIG.format(seeds=list(range(args.seeds)), pairs=args.pairs, lambdas=args.lambdas,
                                    mode=LATENT, similarity=KL))
    out = work / "out"
    command = [sys.executable, "-m", "sweep.grid", "--config", str(config), "--out", str(out),
               "--tracking-uri", f"sqlite:///{work}/mlflow.db", "--cluster", "local",
               "--num-cpus", str(args.num_cpus), "--ray-temp-dir", ray_tmp, "--no-report"]
    env = {**os.environ, "SEATBELT_TMP": str(work / "scratch"), "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"load: {args.seeds * 5} trials, {args.seeds * 5 * args.pairs * args.lambdas:,} attack rows "
          f"expected; open-file limit {soft}/{hard}; results in {work}", flush=True)

    started = time.perf_counter()
    log = work / "sweep.log"
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=work)
        sampler = Sampler(process.pid)
        sampler.start()
        code = process.wait()
        sampler.stopped.set()
        sampler.join()
    sweep_seconds = time.perf_counter() - started
    shutil.rmtree(ray_tmp, ignore_errors=True)
    tail = log.read_text().splitlines()
    if code != 0:
        print("\n".join(tail[-40:]))
        print(f"load: the sweep failed (exit {code})")
        return 1
    for line in tail:
        if line.startswith(("training:", "attacks:")) and ("[" not in line or "trials [" in line):
            print("  " + line)

    from analysis.load import ATTACK_KEY, load_attacks, load_train

    t = time.perf_counter()
    attacks = load_attacks(out)
    train = load_train(out)
    read_seconds = time.perf_counter() - t
    duplicates = int(attacks.duplicated(list(ATTACK_KEY)).sum())
    files = sum(1 for _ in (out / "attacks").rglob("*.parquet"))
    self_usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    mib = 1024 * 1024
    print(f"trials:        {len(train)} ({(train['status'] == 'ok').sum()} ok)")
    print(f"attack rows:   {len(attacks):,} in {files} files, {duplicates} duplicate keys, "
          f"{attacks['trial_id'].nunique()} trials")
    print(f"sweep wall:    {sweep_seconds:.0f} s (train + attack + MLflow, CLI start to exit)")
    print(f"read back:     {read_seconds:.1f} s (analysis.load.load_attacks + load_train)")
    print(f"peak memory:   {sampler.peak_rss / mib:,.0f} MiB summed over the process tree "
          f"(at most {sampler.peak_processes} processes); largest process {sampler.peak_single_rss / mib:,.0f} MiB")
    print(f"getrusage:     max RSS this process {self_usage.ru_maxrss / 1024:,.0f} MiB (incl. the read-back), "
          f"largest waited-for child {children.ru_maxrss / 1024:,.0f} MiB")
    print(f"open files:    peak {sampler.peak_fds} over the tree, {sampler.peak_driver_fds} in the CLI "
          f"process (limit {soft})")
    ok = (len(train) == args.seeds * 5 and len(attacks) == (train["status"] == "ok").sum() * args.pairs
          * args.lambdas and duplicates == 0)
    print("load: OK" if ok else "load: MISMATCH")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
