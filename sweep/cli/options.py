"""What every sweep CLI shares: the flags of where Ray runs and where MLflow is, turned into a
typed ``RunOptions`` for the library code, and the errors a user can cause printed as one line."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable

from results.errors import UserError


@dataclass(frozen=True)
class RunOptions:
    """How a sweep (or its attack stage) runs, as its command line says."""

    cluster: str = "auto"             # auto | local | a Ray address (sweep.infra.cluster.connect)
    num_cpus: int | None = None       # of a local Ray instance (None: all)
    ray_temp_dir: str | None = None   # of a local Ray instance
    worker_env: tuple[str, ...] = ()  # more environment variables every Ray worker gets
    tracking: bool = True             # log to MLflow
    tracking_uri: str | None = None   # None: results.records.tracking_uri decides
    reuse_out: bool = False           # accept a results folder of another config
    attacks: bool = True              # run the attack stage
    report: bool = True               # write the report at the end


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", default="auto",
                        help="auto (join a running cluster, else start a local one), local, or an address")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the one the sweep stored in "
                                               "the results folder's tracking.json, else MLflow's own default)")
    parser.add_argument("--no-tracking", action="store_true", help="run without MLflow")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a local Ray instance (default: all)")
    parser.add_argument("--ray-temp-dir", help="temp folder of a local Ray instance")


def run_options(args: argparse.Namespace, **more) -> RunOptions:
    """The options of ``add_run_arguments``' flags, plus ``more`` fields of RunOptions."""
    return RunOptions(cluster=args.cluster, num_cpus=args.num_cpus, ray_temp_dir=args.ray_temp_dir,
                      tracking=not args.no_tracking, tracking_uri=args.tracking_uri, **more)


def run_cli(run: Callable[[], int]) -> int:
    """Run a command; a ``UserError`` prints as one line and exits 2, Ctrl-C exits 130 with
    the hint that the same command resumes."""
    try:
        return run()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: re-run the same command to resume where it stopped", file=sys.stderr)
        return 130
