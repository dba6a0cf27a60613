"""``python -m sweep.attack --out DIR``: attack the finished checkpoints of an existing sweep.

Reads the sweep's resolved config from ``DIR/sweep.json``; like the sweep itself, it skips the
attacks already written, so it also resumes an interrupted attack stage.
"""

from __future__ import annotations

import argparse
import sys

from models.errors import UserError
from sweep.cli import run_cli
from sweep.cluster import connect, shutdown
from sweep.config import from_dict
from sweep.lock import hold
from sweep.store import Store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep.attack", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the results folder or URI of a sweep")
    parser.add_argument("--cluster", default="auto", help="auto, local, or a Ray cluster address")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep's)")
    parser.add_argument("--no-tracking", action="store_true", help="do not log summaries to MLflow")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a local Ray instance")
    parser.add_argument("--ray-temp-dir", help="temp folder of a local Ray instance")
    args = parser.parse_args(argv)
    return run_cli(lambda: run(args))


def run(args: argparse.Namespace) -> int:
    store = Store(args.out)
    if not store.exists("sweep.json"):
        raise UserError(f"--out {store.uri} has no sweep.json; point it at the results folder of a sweep")
    with hold(store):  # not while a sweep writes the same folder
        return _attack(args, store)


def _attack(args: argparse.Namespace, store: Store) -> int:
    from sweep.fanout import run_attacks
    from sweep.tracking import Tracker
    from sweep.training import finished_trials

    resolved = store.read_json("sweep.json")
    resolved.pop("fingerprint", None)
    cfg = from_dict(resolved, where=store.uri_of("sweep.json"))
    tracker = None
    if not args.no_tracking and store.exists("tracking.json"):
        tracking = store.read_json("tracking.json")
        tracker = Tracker(args.tracking_uri or tracking["tracking_uri"], cfg.name, cfg.to_dict(),
                          parent_run_id=tracking.get("parent_run_id"))
    print(connect(args.cluster, temp_dir=args.ray_temp_dir, num_cpus=args.num_cpus))
    try:
        run_attacks(cfg, store, finished_trials(store), tracker)
    finally:
        shutdown()
        if tracker is not None:
            tracker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
