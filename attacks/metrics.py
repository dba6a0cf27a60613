"""The attack protocol's pure-numpy parts: the λ grid, the pairs, the λ-selection rule and AUDDC.

This module imports only numpy, so ``analysis`` (which runs without torch) can use it too.

References: Gondim-Ribeiro, Tabacof & Valle (2018), "Adversarial Attacks on Variational
Autoencoders" (λ-selection rule and AUDDC), and Willetts et al., "Disentangling Improves VAEs'
Robustness to Adversarial Attacks" (10 pairs, 51 values of λ).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "lambda_grid",
    "sample_pairs",
    "select_lambda",
    "ddc_points",
    "auddc",
    "auddc_from_points",
    "auddc_with_reason",
    "AUDDC_MIN_DENOMINATOR",
    "MOVED_FRACTION",
    "select_shown_lambda",
    "distortion_budget",
]

# AUDDC's y-axis divides by ‖rec(x) − x^t‖ − ‖rec(x^t) − x^t‖, how much further from the target
# the model reconstructs the source than the target itself. When that is below this fraction
# of ‖x − x^t‖ the model barely tells the two images apart (a decoder stuck on the mean image
# makes it 0), y is noise over nearly nothing, and the area is not reported.
AUDDC_MIN_DENOMINATOR = 0.05


def lambda_grid(n: int = 51, low: float = -20.0, high: float = 20.0) -> list[float]:
    """The paper's λ values: ``[0] + [2**c for c in linspace(low, high, n - 1)]``.

    The default is the paper's 51 values (it calls them "50 λ"): 0 and 2^c for 50 equally
    spaced c in [-20, 20], ascending.
    """
    if n < 1:
        raise ValueError(f"lambda_grid needs n >= 1, got {n}")
    exps = np.linspace(low, high, n - 1) if n > 1 else np.empty(0)
    return [0.0] + [float(2.0**c) for c in exps]


def sample_pairs(
    held_out_indices: Sequence[int], n_pairs: int = 10, seed: int = 0
) -> list[tuple[int, int]]:
    """``n_pairs`` random (source_index, target_index) pairs drawn from ``held_out_indices``.

    Deterministic given (held_out_indices, n_pairs, seed). Source and target always differ
    (as dataset indices); pairs are distinct as long as enough exist (with fewer than
    ``n_pairs`` distinct ordered pairs available, pairs repeat).
    """
    idx = np.asarray(list(held_out_indices), dtype=np.int64)
    if n_pairs < 0:
        raise ValueError(f"n_pairs must be >= 0, got {n_pairs}")
    distinct = np.unique(idx)
    if n_pairs > 0 and distinct.size < 2:
        raise ValueError(
            "sample_pairs needs at least 2 distinct held-out indices to make a pair, "
            f"got {distinct.size}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9A125]))
    n_possible = distinct.size * (distinct.size - 1)
    pairs: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    while len(pairs) < n_pairs:
        s, t = rng.choice(distinct, size=2, replace=False)
        pair = (int(s), int(t))
        if pair in seen and len(seen) < n_possible:
            continue
        seen.add(pair)
        pairs.append(pair)
    return pairs


def select_lambda(lams: Sequence[float], deltas: Sequence[float]) -> int:
    """Index of the λ the paper shows for one pair (Gondim-Ribeiro et al. 2018's rule).

    Rule: among the attacks whose Δ is *strictly above* the mean of Δ over the positive λ
    (the paper's 1/50 Σ_{i=1}^{50} Δ(λ(c_i)): λ = 0 is not in the mean), take those with the
    smallest such Δ, and of these the largest λ.

    Edge cases (our definitions; the papers do not state them):
    - Without a positive λ, the mean is over all λ.
    - Non-finite Δ (NaN, ±inf: a failed attack) are ignored, both in the mean and as
      candidates. If no Δ is finite, ``ValueError``.
    - If no finite Δ is strictly above the mean (only possible when all finite Δ are equal),
      the λ with the largest Δ is chosen, ties again going to the largest λ — i.e. the largest
      λ among the finite attacks.
    - Ties in Δ are exact float equality.

    Returns an index into ``lams`` / ``deltas`` (which must have the same length).
    """
    lam = np.asarray(lams, dtype=np.float64)
    delta = np.asarray(deltas, dtype=np.float64)
    if lam.shape != delta.shape or lam.ndim != 1:
        raise ValueError(
            f"select_lambda needs two 1-D arrays of the same length, got {lam.shape} and {delta.shape}"
        )
    finite = np.isfinite(delta)
    if not finite.any():
        raise ValueError("select_lambda: no finite Δ among the attacks of this pair")
    averaged = finite & (lam > 0) if (finite & (lam > 0)).any() else finite
    mean = delta[averaged].mean()
    above = finite & (delta > mean)
    if above.any():
        target = delta[above].min()
        candidates = np.flatnonzero(above & (delta == target))
    else:
        target = delta[finite].max()
        candidates = np.flatnonzero(finite & (delta == target))
    return int(candidates[np.argmax(lam[candidates])])


# An attack "moved the input" when ‖d‖ exceeds this fraction of ‖x − x^t‖. Below it the picture
# of x + d is the clean input (binary dSprites: d = 0 exactly, every pixel sits on a bound).
MOVED_FRACTION = 0.01


def select_shown_lambda(lams: Sequence[float], deltas: Sequence[float],
                        distortion_l2: Sequence[float], source_target_l2: float,
                        moved_fraction: float = MOVED_FRACTION) -> tuple[int, int, bool]:
    """(shown, paper, unmoved) for one pair's Fig. 1 picture.

    ``paper`` is ``select_lambda``'s pick. For large λ the optimum is d = 0 and Δ the clean
    distance, so the rule can land on that plateau and pick an attack that did nothing
    (``unmoved``: its ‖d‖ is at most ``moved_fraction`` × ‖x − x^t‖). ``shown`` is then the
    rule applied to the λ whose attacks moved the input, else ``paper`` (also when none moved).
    """
    paper = select_lambda(lams, deltas)
    dist = np.asarray(distortion_l2, dtype=np.float64)
    moved = dist > moved_fraction * float(source_target_l2)
    if moved[paper] or not moved.any():
        return paper, paper, not bool(moved[paper])
    kept = np.flatnonzero(moved & np.isfinite(np.asarray(deltas, dtype=np.float64)))
    if kept.size == 0:
        return paper, paper, True
    pick = select_lambda(np.asarray(lams, dtype=np.float64)[kept], np.asarray(deltas, dtype=np.float64)[kept])
    return int(kept[pick]), paper, True


def distortion_budget(distortion_l2: Sequence[float], distance: Sequence[float], clean: float,
                      cap: float, removed: float) -> float:
    """The smallest ‖d‖ on one pair's λ path that removes ``removed`` (e.g. 0.5) of the clean
    distance: min ‖d‖ over the attacks with distance ≤ (1 − removed) · clean, at most ``cap``.

    For the latent attack ``cap`` = ‖x − x^t‖: d = x^t − x encodes the target itself (distance
    0), so no budget exceeds it, and a pair whose path never gets there is read as needing it.
    A distortion–budget curve, as RobustBench reports accuracy against ε. NaN without a finite
    clean distance.
    """
    d = np.asarray(distortion_l2, dtype=np.float64)
    r = np.asarray(distance, dtype=np.float64)
    if d.shape != r.shape:
        raise ValueError(f"distortion_budget needs one distortion per distance, got {d.shape} and {r.shape}")
    if not np.isfinite(clean) or not np.isfinite(cap):
        return float("nan")
    reached = np.isfinite(d) & np.isfinite(r) & (r <= (1.0 - removed) * clean)
    return float(min(cap, d[reached].min())) if reached.any() else float(cap)


def ddc_points(
    distortion_l2, adv_target_l2, source_target_l2, rec_source_target_l2, rec_target_target_l2
) -> tuple[np.ndarray, np.ndarray]:
    """The distortion–distortion curve's points for one pair (one point per λ).

    x = ‖d‖ / ‖x − x^t‖,
    y = (‖rec(x*) − x^t‖ − ‖rec(x^t) − x^t‖) / (‖rec(x) − x^t‖ − ‖rec(x^t) − x^t‖).
    The last three arguments may be scalars (they are per pair) or arrays.
    """
    d = np.asarray(distortion_l2, dtype=np.float64)
    a = np.asarray(adv_target_l2, dtype=np.float64)
    st = np.asarray(source_target_l2, dtype=np.float64)
    rst = np.asarray(rec_source_target_l2, dtype=np.float64)
    rtt = np.asarray(rec_target_target_l2, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = d / st
        y = (a - rtt) / (rst - rtt)
    x, y = np.broadcast_arrays(x, y)
    return np.array(x, dtype=np.float64), np.array(y, dtype=np.float64)


def auddc_from_points(x, y) -> float:
    """Area under a distortion–distortion curve, as Gondim-Ribeiro et al. (2018) define it.

    Keep the points with 0 ≤ x ≤ 1 (and finite y), sort them by x, append (max x, min y) and
    (1, min y), and take the trapezoid area. Higher = harder to attack. NaN when no point is
    kept (e.g. every attack distorted more than ‖x − x^t‖, or the pair's denominators are 0).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"auddc needs x and y of the same length, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y) & (x >= 0.0) & (x <= 1.0)
    if not keep.any():
        return float("nan")
    x, y = x[keep], y[keep]
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    y_min = y.min()
    x = np.concatenate([x, [x[-1], 1.0]])
    y = np.concatenate([y, [y_min, y_min]])
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def auddc(
    distortion_l2, adv_target_l2, source_target_l2, rec_source_target_l2, rec_target_target_l2
) -> float:
    """AUDDC of one pair from its attacks' metrics (see ``ddc_points`` and ``auddc_from_points``)."""
    x, y = ddc_points(
        distortion_l2, adv_target_l2, source_target_l2, rec_source_target_l2, rec_target_target_l2
    )
    return auddc_from_points(x, y)


def auddc_with_reason(
    distortion_l2, adv_target_l2, source_target_l2: float, rec_source_target_l2: float,
    rec_target_target_l2: float, min_denominator: float = AUDDC_MIN_DENOMINATOR,
) -> tuple[float, str]:
    """(AUDDC, "") of one pair, or (NaN, why) when it is not defined or not meaningful: the
    y-axis's denominator below ``min_denominator`` × ‖x − x^t‖, or no point with 0 ≤ x ≤ 1."""
    denominator = float(rec_source_target_l2) - float(rec_target_target_l2)
    if not denominator >= min_denominator * float(source_target_l2):
        return float("nan"), (
            f"the model reconstructs source and target alike: ‖rec(x) − xᵗ‖ − ‖rec(xᵗ) − xᵗ‖ = "
            f"{denominator:.3g}, below {min_denominator:g} × ‖x − xᵗ‖ = "
            f"{min_denominator * float(source_target_l2):.3g}")
    value = auddc(distortion_l2, adv_target_l2, source_target_l2, rec_source_target_l2,
                  rec_target_target_l2)
    if not np.isfinite(value):
        return value, "no attack of this pair has a distortion within ‖x − xᵗ‖"
    return value, ""
