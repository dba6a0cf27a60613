"""Does the MIG estimate depend on how many images it is computed over? (issue 32)

    python benchmarks/mig_sample_size.py CHECKPOINT [--images 4096,16384,36864] [--seeds 3]

The fidelity curve scores MIG on 4,096 held-out images with a leave-one-out estimator
(``sweep.train.evaluate.mig_factors``); Chen et al. (2018) score it over all 737,280 images. The
conditional entropies H(z_j | v_k) come from the images sharing one value of a factor: 128 per
x position at 4,096 images, 23,040 over the full set. A mixture of so few narrow posteriors is
a poor density, so the estimate may be biased at the fidelity's size. This scores one
checkpoint of the generated dSprites (e.g. ``fidelity.py``'s ``tcvae-b6.pt``) at growing
sample sizes, on nested held-out samples, with a different posterior sample per seed. It prints
one line per size:

    mig <n> images: MIG <mean> (seeds <min>-<max>)  scale <gap>  orientation <gap>  posX <gap>  posY <gap>
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from models import load_checkpoint  # noqa: E402
from sweep.data import load_dataset  # noqa: E402
from sweep.train.evaluate import mean_gap, mig_factors, posteriors  # noqa: E402

DATASET = "dsprites_generated"
HELD_OUT = 0.05  # as fidelity.py: 36,864 held-out images


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="a checkpoint trained on the generated dSprites")
    ap.add_argument("--images", default="4096,16384,36864", help="sample sizes, comma separated")
    ap.add_argument("--seeds", type=int, default=3, help="posterior samples per size")
    args = ap.parse_args()

    sizes = [int(s) for s in args.images.split(",")]
    model, _, _ = load_checkpoint(args.checkpoint)
    data = load_dataset(DATASET, seed=0, held_out=HELD_OUT)
    held = data.evaluation_indices(max(sizes), seed=0)   # nested: the first n are the n-sample
    with torch.no_grad():
        top = posteriors(model, data.batch(held), 512)
    means, logvars, factors = top.means[-1], top.logvars[-1], data.factors_of(held)
    print(f"{args.checkpoint}: posterior std, median per dimension: "
          + " ".join(f"{s:.3f}" for s in (0.5 * logvars).exp().median(dim=0).values.tolist()), flush=True)
    for n in sizes:
        started = time.perf_counter()
        runs = [mig_factors(means[:n], logvars[:n], factors[:n], list(data.factor_sizes),
                            list(data.factor_names), seed=seed) for seed in range(args.seeds)]
        migs = [mean_gap(r) for r in runs]
        gaps = "  ".join(f"{f.name} {np.mean([r[i].gap for r in runs]):.3f}" for i, f in enumerate(runs[0]))
        print(f"mig {n} images: MIG {np.mean(migs):.3f} (seeds {min(migs):.3f}-{max(migs):.3f})  {gaps}  "
              f"[{time.perf_counter() - started:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
