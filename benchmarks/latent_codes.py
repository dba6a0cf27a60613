"""What each latent dimension of a dSprites model encodes (issue 32: why MIG stays low).

    python benchmarks/latent_codes.py CHECKPOINT [--images 4096]

For a checkpoint trained on the generated dSprites (e.g. ``fidelity.py``'s ``tcvae-b6.pt``), on
held-out images (the fidelity benchmark's sample), per active dimension of the top layer
(Cov_x E[z_j] > 0.01, as ``sweep.train.evaluate.active_units``):

* its posterior log-variances (1st percentile and median), against the model's smooth ±10
  bound (``models.hierarchical.LOGVAR_BOUND``): is the bound what limits a code's precision?
* a least-squares fit of its posterior mean on the sprite's (x, y) position classes, with R²
  and the angle of (x, y) it follows: an axis-aligned position code has an angle near 0° or
  ±90° (or 180°) and a high R²;
* I(z_j; v_k) / log K_k for every factor (``mig_factors``, the MIG's own numbers).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from models import load_checkpoint  # noqa: E402
from models.hierarchical import LOGVAR_BOUND  # noqa: E402
from sweep.data import load_dataset  # noqa: E402
from sweep.train.evaluate import ACTIVE_UNIT_THRESHOLD, mig_factors, posteriors  # noqa: E402

DATASET = "dsprites_generated"
HELD_OUT = 0.05  # as fidelity.py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a checkpoint trained on the generated dSprites")
    ap.add_argument("--images", type=int, default=4096, help="held-out images")
    args = ap.parse_args()

    model, _, _ = load_checkpoint(args.checkpoint)
    data = load_dataset(DATASET, seed=0, held_out=HELD_OUT)
    held = data.evaluation_indices(args.images, seed=0)
    with torch.no_grad():
        top = posteriors(model, data.batch(held), 512)
    means, logvars = top.means[-1].numpy(), top.logvars[-1].numpy()
    factors = data.factors_of(held)
    names, sizes = list(data.factor_names), list(data.factor_sizes)
    active = np.flatnonzero(means.var(axis=0) > ACTIVE_UNIT_THRESHOLD)
    info = {f.name: np.asarray(f.information) / math.log(sizes[names.index(f.name)])
            for f in mig_factors(torch.as_tensor(means), torch.as_tensor(logvars), factors, sizes, names)}

    position = np.c_[factors[:, names.index("posX")], factors[:, names.index("posY")],
                     np.ones(len(factors))].astype(np.float64)
    print(f"{args.checkpoint}: {len(active)} active dimensions of {means.shape[1]}, "
          f"{args.images} held-out images; log-variance bound ±{LOGVAR_BOUND:g}")
    print("| dim | log-var p1 | log-var median | mean ≈ a·x + b·y | R² | angle | "
          + " | ".join(f"I/H {name}" for name in info) + " |")
    print("|---|---:|---:|---|---:|---:|" + "---:|" * len(info))
    for j in active:
        coef, *_ = np.linalg.lstsq(position, means[:, j], rcond=None)
        residual = means[:, j] - position @ coef
        r2 = 1 - residual.var() / means[:, j].var()
        angle = math.degrees(math.atan2(coef[1], coef[0]))
        print(f"| z{j} | {np.percentile(logvars[:, j], 1):.2f} | {np.median(logvars[:, j]):.2f} | "
              f"{coef[0]:+.3f} x {coef[1]:+.3f} y | {r2:.2f} | {angle:.0f}° | "
              + " | ".join(f"{v[j]:.2f}" for v in info.values()) + " |")


if __name__ == "__main__":
    main()
