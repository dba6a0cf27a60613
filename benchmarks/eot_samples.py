"""Benchmark: how many noise draws K the output attack should minimise over (EOT).

The output attack minimises −ELBO(x^t | x + d) + λ‖d‖, an expectation over the encoder's noise.
With K fixed draws (common random numbers, ``AttackConfig.output_mc_samples``) the solver
minimises their mean; the attack's Δ is then reported on ``output_report_samples`` fresh draws.
Too few draws and the solver fits them, not the expectation: the reported Δ is far above what it
minimised and can exceed not attacking at all. Each extra draw adds a model pass per evaluation.

For every checkpoint and K it prints, over the pairs × λ of the smoke protocol:

* ``reported/minimised``: the median of reported Δ / the Δ the solver ended on (1 = no overfit);
* ``worse than clean``: the share of attacks whose reported Δ exceeds the no-attack value
  Δ(d = 0) by more than 3 standard errors;
* ``path ok``: the share of λ-points within the sanity bounds (Δ ≤ 1.05 × no-attack value, and
  not below 0.95 × the pair's largest Δ at a smaller λ);
* ``vs best K``: the median of reported Δ / the lowest reported Δ any K reached on that problem
  (1 = as strong as the best);
* seconds for the whole ``attack_problems`` call, evaluations per attack, and model passes per
  attack (evaluations × K, the work that does not depend on what else the machine runs).

    python benchmarks/eot_samples.py --checkpoints <out>/checkpoints
    python benchmarks/eot_samples.py --checkpoints DIR --ks 1 2 4 8 --n-pairs 3 --n-lambdas 7
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.sanity import path_checks  # noqa: E402
from attacks.config import AttackConfig  # noqa: E402
from attacks.run import attack_problems  # noqa: E402
from benchmarks.attack import load_models, smoke_problems  # noqa: E402
from results.vocabulary import ELBO, OUTPUT  # noqa: E402


def path_ok(objective: np.ndarray, clean: np.ndarray, m: int) -> np.ndarray:
    """Per λ-point (pair-major, λ ascending within a pair): within the report's sanity bounds."""
    frame = pd.DataFrame({"trial_id": "one", "mode": OUTPUT, "similarity": ELBO,
                          "pair": np.arange(objective.size) // m, "lam": np.tile(np.arange(m), objective.size // m),
                          "objective": objective, "delta_clean": clean})
    return path_checks(frame)["passes"].to_numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", required=True, help="folder of *.pt model files (a sweep's)")
    ap.add_argument("--only", nargs="+", help="checkpoints whose file name contains one of these")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--n-pairs", type=int, default=3)
    ap.add_argument("--n-lambdas", type=int, default=7)
    ap.add_argument("--maxiter", type=int, default=100)
    ap.add_argument("--solver", default="scipy")
    ap.add_argument("--warm", action="store_true", help="warm starts along each pair's λ path")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a Ray attack task has 1 CPU)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from sweep.data import load_dataset

    dataset = load_dataset("dsprites_generated", size=20000, seed=0, held_out=0.1)
    x, xt, lam, si, ti = smoke_problems(dataset, args.n_pairs, args.n_lambdas)
    m = args.n_lambdas
    base = AttackConfig(maxiter=args.maxiter, solver=args.solver,
                        warm_start=(OUTPUT,) if args.warm else ()).validate()
    models = [mm for group in load_models(args.checkpoints, ["mlp", "conv"], args.only).values() for mm in group]
    print(f"{len(models)} models, {args.n_pairs} pairs x {m} λ, maxiter {args.maxiter}, solver "
          f"{args.solver}{', warm starts' if args.warm else ''}, report draws {base.output_report_samples}, {args.threads} thread(s)\n")
    header = f"{'model':44s} {'K':>2s} {'rep/min':>8s} {'worse':>6s} {'path ok':>8s} {'vs best':>8s} {'s':>7s} {'evals':>6s} {'passes':>7s}"
    totals: dict[int, list] = {k: [] for k in args.ks}
    for name, model in models:
        print(header)
        runs = {}
        for k in args.ks:
            cfg = dataclasses.replace(base, output_mc_samples=k)
            started = time.perf_counter()
            out = attack_problems(model, x, xt, lam, OUTPUT, ELBO, cfg, si, ti, seed=0)
            runs[k] = (out, time.perf_counter() - started)
        best = np.min([runs[k][0].objective.double().numpy() for k in args.ks], axis=0)
        for k in args.ks:
            out, secs = runs[k]
            rep, mini = out.objective.double().numpy(), out.delta_minimised.double().numpy()
            clean = out.delta_clean.double().numpy()
            row = (np.median(rep / mini), out.worse_than_clean().double().mean().item(),
                   path_ok(rep, clean, m).mean(), np.median(rep / best), secs,
                   float(out.result.evaluations.mean()), float(out.result.evaluations.mean()) * k)
            totals[k].append(row)
            print(f"{name:44s} {k:2d} {row[0]:8.2f} {row[1]:6.1%} {row[2]:8.1%} {row[3]:8.3f} "
                  f"{row[4]:7.1f} {row[5]:6.0f} {row[6]:7.0f}")
        print()
    print("over all models (medians of the per-model figures; seconds summed):")
    print(f"{'K':>2s} {'rep/min':>8s} {'worse':>6s} {'path ok':>8s} {'vs best':>8s} {'s':>7s} {'passes':>7s}")
    for k in args.ks:
        r = np.array(totals[k])
        print(f"{k:2d} {np.median(r[:, 0]):8.2f} {np.median(r[:, 1]):6.1%} {np.median(r[:, 2]):8.1%} "
              f"{np.median(r[:, 3]):8.3f} {r[:, 4].sum():7.1f} {np.median(r[:, 6]):7.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
