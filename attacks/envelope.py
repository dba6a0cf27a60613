"""The best distortion a pair's λ path has found, for every λ of the path.

Δ*(λ) = min_d f(d) + λ‖d‖ never exceeds f(0) (d = 0 is feasible) and never falls as λ grows.
A solver run per λ need not respect either: at λ = 2^20 scipy's L-BFGS-B stops on its relative
decrease test with ‖d‖ ≈ 2e-5 left, 25 nats above not attacking (the smoke sweep, 6 of 294
attacks), and a capped run at a small λ can end above the solution of a larger one. Every
solution of the pair, and d = 0, is a feasible distortion for every λ of the pair, so each λ
takes the one with the lowest objective: a multi-start over the pair's own solutions, scored
with the objective the solver minimised (its fixed noise draws), at |path| + 1 evaluations per
problem without gradients.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from attacks.warm import problems_by_pair

__all__ = ["best_on_path"]

_CHUNK = 64  # (problem, candidate) evaluations per no-grad batch


@torch.no_grad()
def best_on_path(objective, d: Tensor, source_indices: Sequence[int],
                 target_indices: Sequence[int]) -> tuple[Tensor, Tensor]:
    """(d', replaced): for every problem p the candidate with the lowest ``objective`` among
    d = 0 and the final d of every problem of p's pair (p's own included, so never worse), and
    a bool per problem, True where that is not p's own solution. Ties keep p's own."""
    best = d.clone()
    replaced = torch.zeros(d.shape[0], dtype=torch.bool, device=d.device)
    zero = torch.zeros_like(d[:1])
    for path in problems_by_pair(source_indices, target_indices):
        candidates = torch.cat([d[path], zero])                        # [m + 1, ...]
        jobs = [(p, c) for p in path for c in range(len(candidates))]
        values = torch.cat([
            objective(candidates[[c for _, c in chunk]], [p for p, _ in chunk])
            for chunk in (jobs[a:a + _CHUNK] for a in range(0, len(jobs), _CHUNK))
        ]).reshape(len(path), len(candidates))
        values = torch.nan_to_num(values, nan=float("inf"))   # a failed evaluation never wins
        for row, p in enumerate(path):
            own = values[row, row]
            pick = int(torch.argmin(values[row]))
            if values[row, pick] < own:
                best[p] = candidates[pick]
                replaced[p] = True
    return best, replaced
