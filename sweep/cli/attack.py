"""``python -m sweep.attack --out DIR``: attack the finished checkpoints of an existing sweep.

Reads the sweep's resolved config from ``DIR/sweep.json`` (importing its plugins); like the
sweep itself, it skips the attacks already written, so it also resumes an interrupted attack
stage. It logs to the sweep's MLflow runs, found the way the sweep finds them on a re-run.
"""

from __future__ import annotations

import argparse
import sys

from results import layout
from results.store import Store
from sweep.cli.options import RunOptions, add_run_arguments, run_cli, run_options
from sweep.config import SweepConfig, read_results_config
from sweep.infra.cluster import connect, shutdown
from sweep.infra.lock import hold


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweep.attack", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the results folder or URI of a sweep")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    return run_cli(lambda: run(args.out, run_options(args)))


def run(out: str, options: RunOptions) -> int:
    store = Store(out)
    cfg = read_results_config(store)  # a folder without sweep.json is refused here
    with hold(store):  # not while a sweep writes the same folder
        return _attack(cfg, store, options)


def _attack(cfg: SweepConfig, store: Store, options: RunOptions) -> int:
    from sweep.fanout.stage import run_attacks
    from sweep.infra.tracking import open_tracker
    from sweep.train.training import finished_trials

    tracker = None
    if options.tracking and store.exists(layout.TRACKING_JSON):  # a sweep run without MLflow has none
        tracker = open_tracker(store, cfg, options.tracking_uri)
    print(connect(options.cluster, temp_dir=options.ray_temp_dir, num_cpus=options.num_cpus))
    try:
        run_attacks(cfg, store, finished_trials(store), tracker)
    finally:
        shutdown()
        if tracker is not None:
            tracker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
