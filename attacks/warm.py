"""Warm starts along a pair's λ path: which problem's solution starts which.

In the modes of ``AttackConfig.warm_start`` a pair's λ values are taken from the largest down,
in chains of ``warm_chain`` consecutive λ: the first problem of a chain starts from the random
d0, every other one from the solution of the λ just above it. Neighbouring λ of the paper's grid
are a factor 2^0.8 apart, so that solution is close to the next minimiser and L-BFGS-B needs
fewer evaluations to reach it. Downwards, because a smaller penalty lets d grow from the
previous solution; chains (rather than one path per pair) keep several problems of a pair in
flight for the batched solver and stop one bad minimum from spreading down the whole path.

A problem's start depends only on its pair, its λ and the grid, never on how problems were
batched into tasks or slots (a task always holds every λ of its pairs).

It is a per-mode choice (``AttackConfig.warm_start``; the ``repro`` preset warm-starts both
modes with the batched solver). On the bar of ``benchmarks/attack.py`` (docs/PERFORMANCE.md, "Attacks") warm starts
reach a minimised objective at or below scipy's cold one in half of the problems or more, in
both modes, at a third to a half of the evaluations. A start is warm only where the neighbour's
attack paid (``start_from``). The paper starts every λ at d0: ``warm_start = []``, the default.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Optional, Sequence

import numpy as np

__all__ = ["warm_start_predecessors", "problems_by_pair", "successors", "solve_order", "start_from",
           "COLD"]

COLD = -1   # a problem that starts from its own random d0


def problems_by_pair(source_indices: Sequence[int], target_indices: Sequence[int]) -> list[list[int]]:
    """The problems of each (source, target) pair, in problem order: one list per pair."""
    by_pair: dict[tuple[int, int], list[int]] = defaultdict(list)
    for p, key in enumerate(zip(source_indices, target_indices)):
        by_pair[(int(key[0]), int(key[1]))].append(p)
    return list(by_pair.values())


def warm_start_predecessors(source_indices: Sequence[int], target_indices: Sequence[int],
                            lams: Sequence[float], chain: int) -> np.ndarray:
    """``after[p]``: the problem whose solution is problem p's start, or ``COLD``.

    Problems of the same (source, target) pair are ordered by λ, largest first, and cut into
    runs of ``chain``; inside a run each problem follows the one before it. ``chain`` 1 gives
    every problem a cold start.
    """
    if chain < 1:
        raise ValueError(f"warm_chain must be >= 1, got {chain}")
    after = np.full(len(lams), COLD, dtype=np.int64)
    for problems in problems_by_pair(source_indices, target_indices):
        # largest λ first; ties (a λ given twice) keep their problem order
        path = sorted(problems, key=lambda p: (-float(lams[p]), p))
        for k in range(len(path)):
            if k % chain:
                after[path[k]] = path[k - 1]
    return after


def successors(after: Optional[np.ndarray]) -> dict[int, int]:
    """{problem: the problem that starts from its solution} (chains: at most one each)."""
    if after is None:
        return {}
    return {int(a): p for p, a in enumerate(np.asarray(after).tolist()) if a != COLD}


def solve_order(after: Optional[np.ndarray], n_problems: int) -> np.ndarray:
    """The problems in an order where each comes after the one it starts from (problem order
    otherwise): chains are walked head to end, heads in problem order."""
    if after is None:
        return np.arange(n_problems)
    successor = successors(after)
    order: list[int] = []
    for head in np.flatnonzero(after == COLD):
        p: Optional[int] = int(head)
        while p is not None:
            order.append(p)
            p = successor.get(p)
    if len(order) != n_problems:
        raise ValueError("warm-start predecessors must form chains that start at a cold problem")
    return np.asarray(order)


def start_from(previous_end, cold_start):
    """A warm-started problem's start: its predecessor's end point, unless that end is no
    farther from 0 than the problem's own (clipped) random start, in which case the cold start.

    An end at (or next to) d = 0 means the attack at the larger λ did not pay: it carries no
    information about this λ's minimiser, and d = 0 is the worst place to start, a kink of
    λ‖d‖ with most pixels on the box's bound (d >= -x, x = 0 on a dSprites background), where
    the line search can fail at once and leave the problem at the clean value. Measured: one
    such start in the output attack's bar (``benchmarks/attack.py``) stopped at the clean value
    where scipy's cold start found 0.61 of it. Both solvers apply this rule (numpy or torch)."""
    return previous_end if float((previous_end ** 2).sum()) > float((cold_start ** 2).sum()) else cold_start

