"""How often the claims' 95% intervals contain the true answer, on synthetic sweeps.

    python benchmarks/interval_coverage.py [--reps 1000]

Each synthetic sweep has two settings (true difference 1.0 in log Δ) with ``trials`` trials each
and 10 shared input–target pairs; a value is mean + trial effect + shared pair effect + a
setting-by-pair interaction + noise. Printed: the coverage of ``analysis.stats.contrast_interval``
(the claims' interval: a linear mixed model's, Welch–Satterthwaite t) and, for comparison, of a
hierarchical percentile bootstrap that resamples trials, then pairs.
"""

from __future__ import annotations

import argparse

import numpy as np

from analysis.stats import ContrastGroup, contrast_interval

DESIGNS = [  # (trials per setting, trial sd, pair sd, interaction sd, noise sd)
    (3, 0.5, 1.0, 0.3, 0.2),
    (3, 1.0, 1.0, 1.0, 0.5),
    (3, 0.1, 1.0, 0.3, 0.2),
    (5, 0.5, 1.0, 0.3, 0.2),
    (10, 0.5, 0.2, 0.05, 0.2),
]


def hierarchical_bootstrap(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, n_boot: int = 1000):
    """Percentile interval of mean(a) − mean(b): resample each side's trials, then the shared pairs."""
    ta = rng.integers(0, a.shape[0], (n_boot, a.shape[0]))
    tb = rng.integers(0, b.shape[0], (n_boot, b.shape[0]))
    pp = rng.integers(0, a.shape[1], (n_boot, a.shape[1]))
    diffs = [a[ta[i]][:, pp[i]].mean() - b[tb[i]][:, pp[i]].mean() for i in range(n_boot)]
    return np.quantile(diffs, [0.025, 0.975])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=10)
    args = parser.parse_args()
    print(f"{args.reps} synthetic sweeps per design, {args.pairs} pairs, true difference 1.0")
    print(f"{'trials':>6s} {'trial sd':>8s} {'pair sd':>7s} {'inter sd':>8s} {'noise sd':>8s} "
          f"{'mixed model':>11s} {'hier. bootstrap':>15s}")
    for trials, seed_sd, pair_sd, inter_sd, noise_sd in DESIGNS:
        rng = np.random.default_rng(trials)
        mixed = boot = 0
        for _ in range(args.reps):
            shared = rng.normal(0, pair_sd, args.pairs)
            a, b = (m + rng.normal(0, seed_sd, (trials, 1)) + shared + rng.normal(0, inter_sd, args.pairs)
                    + rng.normal(0, noise_sd, (trials, args.pairs)) for m in (1.0, 0.0))
            iv = contrast_interval([ContrastGroup("a", 1.0, a), ContrastGroup("b", -1.0, b)])
            mixed += iv.lo <= 1.0 <= iv.hi
            lo, hi = hierarchical_bootstrap(a, b, rng)
            boot += lo <= 1.0 <= hi
        print(f"{trials:6d} {seed_sd:8g} {pair_sd:7g} {inter_sd:8g} {noise_sd:8g} "
              f"{mixed / args.reps:11.1%} {boot / args.reps:15.1%}")


if __name__ == "__main__":
    main()
