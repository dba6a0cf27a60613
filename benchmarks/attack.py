"""Benchmark: speed of the reference attack solver (scipy L-BFGS-B) on each architecture.

Prints a markdown table of seconds per attack and attacks per second for the latent (KL) and
output (ELBO) attacks, on models *briefly trained* (--train-steps Adam steps on random binary
squares; the paper's widths unless --hidden-dim), with the L-BFGS-B iterations, objective
evaluations and stop reasons behind each figure. Training changes how many iterations an
attack takes, not the cost of one evaluation, so ms/evaluation is the figure to extrapolate
from; --maxiter caps the iterations (the literature default, 15000, would make this run long).
The attacks use λ values cycled from --lams (the sweep runs all 51).

    python benchmarks/attack.py                       # mlp + conv, 3 problems each, 1 thread
    python benchmarks/attack.py --kind seatbelt --layers 3 --maxiter 500
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attacks.config import AttackConfig  # noqa: E402
from attacks.run import attack_problems  # noqa: E402
from models import ModelConfig, build_model  # noqa: E402


def squares(n: int, seed: int) -> torch.Tensor:
    """n binary 64×64 images, one filled square each at a random place and size."""
    rng = np.random.default_rng(seed)
    x = torch.zeros(n, 1, 64, 64)
    for k in range(n):
        s = int(rng.integers(8, 24))
        r, c = (int(v) for v in rng.integers(0, 64 - s, size=2))
        x[k, 0, r : r + s, c : c + s] = 1.0
    return x


def train(model, steps: int) -> None:
    """A few Adam steps of the model's own objective on random squares, then eval mode."""
    if steps > 0:
        data = squares(64, 2)
        with torch.no_grad():  # start the Bernoulli logits at the mean image (faster start)
            last = [m for m in model.generative.decoder.modules() if hasattr(m, "bias")][-1]
            if last.bias is not None and last.bias.numel() == 64 * 64:
                last.bias.copy_(torch.logit(data.mean(0).flatten().clamp(1e-3, 1 - 1e-3)))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            batch = data[torch.randint(0, len(data), (32,), generator=g)]
            opt.zero_grad()
            model.objective(batch).loss.backward()
            opt.step()
    model.eval()


def stops(messages: list[str]) -> str:
    """Stop reasons of L-BFGS-B, counted: factr / pgtol / maxiter / maxfun / linesearch."""
    names = {"REDUCTION OF F": "factr", "PROJECTED GRADIENT": "pgtol", "ITERATIONS": "maxiter",
             "EVALUATIONS": "maxfun", "ABNORMAL": "linesearch"}
    counts: dict[str, int] = {}
    for m in messages:
        key = next((v for k, v in names.items() if k in m.upper()), m[:20])
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--architectures", nargs="+", default=["mlp", "conv"])
    ap.add_argument("--kind", default="vae")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--z-dim", type=int, default=10)
    ap.add_argument("--hidden-dim", type=int, default=None, help="default: the paper's widths")
    ap.add_argument("--problems", type=int, default=3, help="attacks per (architecture, mode)")
    ap.add_argument("--lams", type=float, nargs="+", default=[0.0, 2.0**-4, 1.0])
    ap.add_argument("--train-steps", type=int, default=200)
    ap.add_argument("--maxiter", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (a Ray attack task has 1 CPU)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = AttackConfig(maxiter=args.maxiter).validate()
    P = args.problems
    src, tgt = squares(P, 0), squares(P, 1)
    lams = torch.tensor([args.lams[i % len(args.lams)] for i in range(P)])
    print(f"kind={args.kind} layers={args.layers} z_dim={args.z_dim} hidden_dim={args.hidden_dim or 'paper'} "
          f"({args.train_steps} Adam steps on 64 random squares), λ={[float(v) for v in lams]}, maxiter={args.maxiter}, memory={cfg.memory}, factr={cfg.factr:g}, "
          f"pgtol={cfg.pgtol:g}, torch threads={args.threads}, {P} attacks per row\n")
    print("| architecture | mode | similarity | attacks | s/attack | attacks/s | iterations/attack "
          "| evaluations/attack | ms/evaluation | stops |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for arch in args.architectures:
        torch.manual_seed(0)
        model = build_model(ModelConfig(kind=args.kind, architecture=arch, z_dim=args.z_dim,
                                        layers=args.layers, hidden_dim=args.hidden_dim))
        train(model, args.train_steps)
        for mode, sim in (("latent", "kl"), ("output", "elbo")):
            t0 = time.perf_counter()
            res, _, _ = attack_problems(model, src, tgt, lams, mode, sim, cfg, list(range(P)),
                                        list(range(P, 2 * P)), seed=0)
            wall = time.perf_counter() - t0
            spa = wall / P
            print(f"| {arch} | {mode} | {sim} | {P} | {spa:.3f} | {1 / spa:.2f} | "
                  f"{res.iterations.mean():.0f} | {res.evaluations.mean():.0f} | "
                  f"{1000 * res.seconds.sum() / res.evaluations.sum():.2f} | {stops(res.messages)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
