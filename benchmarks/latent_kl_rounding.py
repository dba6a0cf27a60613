"""Benchmark (diagnostic, issue 34): how much of the latent attack's objective near the target is
float32 rounding.

For a few (pair) problems at λ = 0 of a checkpoint it runs the reference attack (scipy L-BFGS-B
from d0, as ``attack_problems`` does) and, at each end point d, evaluates the latent KL objective:
in float32 as the attack does (the problem alone, and as one row of a batch of 8 beside other
problems' ends), and in float64 (the model cast to double) as the exact value. It prints per
problem the float64 Δ, the float32 error |Δ32 − Δ64|, and how far the batched float32 value is
from the alone one; then the same with the KL's variance term written stably
(``expm1(lv1 − lv2) − (lv1 − lv2)`` for ``e^(lv1 − lv2) − 1 − (lv1 − lv2)``).

    python benchmarks/latent_kl_rounding.py --checkpoint sweeps/repro/checkpoints/dsprites_generated-tcdlgm-b1-L3-z10-s1.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import attacks.objectives as objectives  # noqa: E402
from attacks.config import AttackConfig  # noqa: E402
from attacks.metrics import sample_pairs  # noqa: E402
from attacks.run import attack_problems  # noqa: E402
from models import load_checkpoint  # noqa: E402
from results.vocabulary import KL, LATENT  # noqa: E402


def stable_kl(mean1, logvar1, mean2, logvar2):
    """The same KL with e^δ − 1 − δ (δ = logvar1 − logvar2) as expm1(δ) − δ."""
    delta = logvar1 - logvar2
    return 0.5 * (torch.expm1(delta) - delta + (mean1 - mean2) ** 2 / logvar2.exp()).sum(dim=-1)


def values(model, x, xt, d, lam, rows):
    """Δ at d (float32 alone, float32 in a batch of ``rows``, float64) per problem."""
    out = []
    for dtype in (torch.float32, torch.float64):
        m = model.to(dtype)
        obj = objectives.build_objective(m, LATENT, KL, x.to(dtype), xt.to(dtype), lam.to(dtype),
                                         [torch.Generator().manual_seed(0)] * len(lam))
        with torch.no_grad():
            alone = torch.cat([obj(d[p:p + 1].to(dtype), [p]) for p in range(len(lam))])
            if dtype == torch.float32:
                out.append(alone.double())
                idx = list(range(len(lam)))
                out.append(torch.cat([obj(d[idx[a:a + rows]].to(dtype), idx[a:a + rows]).double()
                                      for a in range(0, len(idx), rows)]))
            else:
                out.append(alone)
    model.float()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--n-pairs", type=int, default=8)
    ap.add_argument("--rows", type=int, default=8, help="problems per batched float32 evaluation")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from sweep.data import load_dataset

    model = load_checkpoint(Path(args.checkpoint))[0].eval()
    ds = load_dataset("dsprites_generated", size=20000, seed=0, held_out=0.1)
    pairs = sample_pairs(ds.held_out_indices.tolist(), args.n_pairs, seed=0)
    x = ds.batch([s for s, _ in pairs])
    xt = ds.batch([t for _, t in pairs])
    lam = torch.zeros(len(pairs))
    src, tgt = [s for s, _ in pairs], [t for _, t in pairs]
    ends = attack_problems(model, x, xt, lam, LATENT, KL, AttackConfig(solver="scipy"), src, tgt, 0).d
    as_computed = objectives.LATENT_SIMILARITIES[KL]
    for name, kl in (("as computed", as_computed.fn), ("stable variance term", stable_kl)):
        objectives.LATENT_SIMILARITIES[KL] = dataclasses.replace(as_computed, fn=kl)
        alone, batched, exact = values(model, x, xt, ends, lam, args.rows)
        print(f"{name}:")
        for p in range(len(pairs)):
            print(f"  pair {p}: Δ64 {exact[p]:.6g}  |Δ32 - Δ64| {abs(alone[p] - exact[p]):.2e}  "
                  f"|batched - alone| {abs(batched[p] - alone[p]):.2e}")
        err = (alone - exact).abs()
        print(f"  median |Δ32 - Δ64| {err.median():.2e} = {100 * (err / exact.abs()).median():.3g}% of Δ; "
              f"median |batched - alone| {(batched - alone).abs().median():.2e}")
    objectives.LATENT_SIMILARITIES[KL] = as_computed
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
