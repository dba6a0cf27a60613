"""``python -m sweep.grid``: train the grid on Ray Tune, attack every checkpoint, write the report.

Re-running the same command after an interruption resumes: finished trials are not retrained,
finished attacks are not redone, and MLflow gets no duplicate runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from sweep.cli.options import add_run_arguments, run_cli, run_options
from sweep.config import SweepConfig, load_file
from sweep.config.presets import PRESETS, preset
from sweep.config.trials import TrialSpec, expand_grid


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sweep.grid",
        description="Train VAE / beta-TCVAE / beta-TCDLGM / Seatbelt-VAE over a grid on Ray Tune, "
                    "attack every checkpoint, and report. Re-run the same command to resume.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="a named sweep (default: smoke, which runs on a laptop CPU in minutes)")
    source.add_argument("--config", help="a TOML or YAML sweep config file")
    parser.add_argument("--out", help="results folder or URI (default: sweeps/<sweep name>)")
    add_run_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="print the grid and the work, start nothing")
    parser.add_argument("--max-concurrent", type=int, help="trials running at once (default: as resources allow)")
    parser.add_argument("--cpus-per-trial", type=float)
    parser.add_argument("--gpus-per-trial", type=float, help="fractions allowed, e.g. 0.25")
    parser.add_argument("--cpus-per-attack-task", type=float)
    parser.add_argument("--gpus-per-attack-task", type=float)
    parser.add_argument("--trial-resources", type=json.loads, metavar="JSON",
                        help='custom Ray resources per trial, e.g. \'{"accelerator": 1}\'')
    parser.add_argument("--attack-resources", type=json.loads, metavar="JSON",
                        help="custom Ray resources per attack task")
    parser.add_argument("--reuse-out", action="store_true",
                        help="use a results folder that another sweep config wrote")
    parser.add_argument("--no-attacks", action="store_true", help="train and evaluate only")
    parser.add_argument("--no-report", action="store_true", help="skip the report at the end")
    parser.add_argument("--worker-env", action="append", default=[], metavar="NAME",
                        help="also pass this environment variable to every Ray worker (repeatable; "
                             "e.g. AWS_ACCESS_KEY_ID when the nodes have no instance profile). The "
                             "storage endpoint and region variables are passed without asking")
    plan = parser.add_argument_group("resource planning (--plan)")
    plan.add_argument("--plan", action="store_true",
                      help="measure a training step and an attack on this device and print the "
                           "GPU-hours and wall time of the sweep; starts nothing")
    plan.add_argument("--gpus", type=float, default=8, help="GPUs to plan for (default 8)")
    plan.add_argument("--gpu-speedup", type=float, default=None,
                      help="how many times faster a GPU is than this machine's measurement; only "
                           "used when no GPU is present (default 1: figures are this device's)")
    plan.add_argument("--evals-per-attack", type=float, default=None,
                      help="objective evaluations an attack takes on average (default: measured, "
                           "the mean over the attack rows in --out when it holds this config's, "
                           "else by attacking briefly trained models; the plan says which)")
    plan.add_argument("--calibration-steps", type=int, default=200,
                      help="training steps of the models attacked to measure evaluations per "
                           "attack when --out has no attack rows (default 200)")
    plan.add_argument("--plan-steps", type=int, default=2,
                      help="training steps timed per model shape (after one warm-up step)")
    return parser


def resolve_config(args: argparse.Namespace) -> SweepConfig:
    cfg = load_file(args.config) if args.config else preset(args.preset or "smoke")
    res = cfg.resources
    overrides = {
        "max_concurrent": args.max_concurrent,
        "cpus_per_trial": args.cpus_per_trial,
        "gpus_per_trial": args.gpus_per_trial,
        "cpus_per_attack_task": args.cpus_per_attack_task,
        "gpus_per_attack_task": args.gpus_per_attack_task,
        "custom_per_trial": args.trial_resources,
        "custom_per_attack_task": args.attack_resources,
    }
    for name, value in overrides.items():
        if value is not None:
            setattr(res, name, value)
    return cfg.validate()


def describe(cfg: SweepConfig, specs: list[TrialSpec], listing: bool = True) -> str:
    """The expanded grid and the work it means, for --dry-run and the start of a sweep."""
    attack = cfg.attack
    per_trial = attack.n_pairs * len(attack.resolved_lams()) * len(attack.tasks())
    lines = [f"sweep {cfg.name!r}: {len(specs)} trials, {per_trial * len(specs):,} attacks "
             f"({attack.n_pairs} pairs x {len(attack.resolved_lams())} lambdas x {len(attack.tasks())} "
             f"mode/similarity per trial)"]
    counts = Counter((s.dataset, s.model) for s in specs)
    for (dataset, model), count in sorted(counts.items()):
        lines.append(f"  {dataset:20s} {model:9s} {count:5d} trials")
    lines.append(f"  training: {cfg.train.steps} steps x batch {cfg.train.batch_size} per trial")
    if not listing:
        return "\n".join(lines)
    lines.append("")
    lines.append(f"  {'trial_id':44s} {'dataset':18s} {'model':9s} {'beta':>5s} {'L':>2s} {'z':>3s} {'seed':>4s}")
    for s in specs:
        lines.append(f"  {s.trial_id:44s} {s.dataset:18s} {s.model:9s} {s.beta:5g} {s.layers:2d} "
                     f"{s.z_dim:3d} {s.seed:4d}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    specs = expand_grid(cfg.grid)
    if args.plan:
        from sweep.cli.plan import plan_sweep

        print(describe(cfg, specs, listing=False))
        print()
        print(plan_sweep(cfg, specs, gpus=args.gpus, gpu_speedup=args.gpu_speedup,
                         evals_per_attack=args.evals_per_attack, steps=args.plan_steps,
                         out=args.out or str(Path("sweeps") / cfg.name),
                         calibration_steps=args.calibration_steps))
        return 0
    if args.dry_run:
        from sweep.cli.pipeline import missing_data_paths

        print(describe(cfg, specs))
        for problem in missing_data_paths(cfg):  # the sweep may be meant for another machine
            print(f"warning: {problem} (on this machine)", file=sys.stderr)
        return 0

    from sweep.cli.pipeline import run_pipeline

    out = args.out or str(Path("sweeps") / cfg.name)
    options = run_options(args, worker_env=tuple(args.worker_env), reuse_out=args.reuse_out,
                          attacks=not args.no_attacks, report=not args.no_report)
    return run_pipeline(cfg, specs, out, options)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
