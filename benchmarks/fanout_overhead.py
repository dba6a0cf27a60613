"""Benchmark: what the Ray fan-out of the attack stage costs on top of the attacks themselves.

It runs the smoke sweep's attack stage for real (the same ``sweep.fanout`` code as
``python -m sweep.grid``: one Ray task per trial × mode × chunk of pairs, each writing its
Parquet) on a scratch copy of a trained sweep, and prints its wall time against the sum of the
tasks' own compute time. The ideal is that compute list-scheduled on the cluster's slots with
nothing in between; the overhead is wall / ideal − 1 (bar: under 10%).

Round 1 starts with fresh Ray workers (each imports torch and loads the dataset's pairs);
later rounds reuse the idle workers, as a long sweep's tasks do.

    python benchmarks/fanout_overhead.py                     # trains the smoke preset first
    python benchmarks/fanout_overhead.py --sweep sweeps/smoke  # reuse a trained smoke sweep
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def trained_sweep(folder: str | None, scratch: Path) -> Path:
    """A scratch copy of a trained sweep: ``folder``'s config, train rows and checkpoints, or
    the smoke preset trained here (no attacks, no tracking)."""
    copy = scratch / "sweep"
    if folder is None:
        subprocess.run([sys.executable, "-m", "sweep.grid", "--out", str(copy), "--no-attacks",
                        "--no-tracking", "--no-report"], cwd=ROOT, check=True)
        return copy
    src = Path(folder)
    if not (src / "sweep.json").exists() or not (src / "checkpoints").is_dir():
        raise SystemExit(f"--sweep {folder}: not a trained sweep (needs sweep.json and checkpoints/)")
    copy.mkdir()
    for name in ("sweep.json", "train", "checkpoints"):
        (shutil.copytree if (src / name).is_dir() else shutil.copy2)(src / name, copy / name)
    return copy


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", help="a trained sweep's results folder (default: train the smoke preset)")
    ap.add_argument("--rounds", type=int, default=2, help="attack stages to run (round 1: cold workers)")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    args = ap.parse_args(argv)

    from results.store import Store
    from sweep.config import read_results_config
    from sweep.fanout.stage import run_tasks
    from sweep.fanout.tasks import plan_tasks
    from sweep.infra.cluster import connect, shutdown
    from sweep.train.training import finished_trials

    with tempfile.TemporaryDirectory(prefix="fanout-bench-") as tmp:
        scratch = Path(tmp)
        folder = trained_sweep(args.sweep, scratch)
        store = Store(str(folder))
        cfg = read_results_config(store)
        rows = finished_trials(store)
        print(connect("local", temp_dir=str(scratch / "ray"), num_cpus=args.num_cpus))
        results = []
        try:
            for round_ in range(1, args.rounds + 1):
                for name in ("attacks", "gallery"):
                    shutil.rmtree(folder / name, ignore_errors=True)
                todo, _ = plan_tasks(cfg, rows, store)
                failed, timing = run_tasks(cfg, store, todo)
                if failed:
                    raise SystemExit(f"round {round_}: attack tasks failed: {failed}")
                results.append(timing)
        finally:
            shutdown()

    print(f"\nSmoke attack stage on {args.num_cpus} CPUs ({cfg.attack.n_pairs} pairs x "
          f"{len(cfg.attack.resolved_lams())} λ x {len(cfg.attack.tasks())} modes per checkpoint, "
          f"solver {cfg.attack.solver}; bar: overhead < 10%)\n")
    print("| round | workers | tasks | wall s | task compute s | slots | ideal s | overhead |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for i, t in enumerate(results, 1):
        print(f"| {i} | {'cold' if i == 1 else 'warm'} | {len(t.task_seconds)} | {t.wall:.1f} | "
              f"{t.compute:.1f} | {t.slots} | {t.ideal:.1f} | {100 * t.overhead:.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
