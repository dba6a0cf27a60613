"""A second L-BFGS-B run from every problem's end, with a fresh history; the lower end is kept.

In the modes of ``AttackConfig.polish`` the solver runs twice: as configured (cold or warm
starts), then once more from each problem's end point with no curvature pairs, so that its first
step is a scaled steepest-descent step. Why: near the target (small λ, Δ a thousandth of a nat)
a run stops on scipy's relative-reduction test when one iteration fails to lower the float32
objective, and a warm-started run, its history built far from there, may get there early.
Restarted, such a run goes on down; one at a true minimum stops within a few evaluations.
Measured (issue 34, docs/PERFORMANCE.md): with warm starts in the latent attack it lifts the
reported Δ within 5% of scipy's from 96.2% to 98.7% of points on the quick start's checkpoints
and from 90.8% to 94.5% on the repro's (on the former, 116 evaluations per attack against 81).
The result counts both runs' evaluations; scipy's reference protocol (``polish = []``, the
default) has none.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from attacks.result import ObjectiveFn, SolveResult

__all__ = ["restarted_from_ends"]


def restarted_from_ends(solver, objective: ObjectiveFn, first: SolveResult, lower: Tensor,
                        upper: Tensor, config) -> SolveResult:
    """``first``'s problems solved again by ``solver`` from their end points (cold: no warm
    starts, no history), keeping per problem the end with the lower objective (``first``'s on a
    tie); iterations, evaluations and seconds are the two runs' sums."""
    second = solver.solve(objective, first.d, lower, upper, config, after=None)
    better = second.objective < first.objective
    keep = torch.as_tensor(better, device=first.d.device).view(-1, *([1] * (first.d.dim() - 1)))
    return SolveResult(
        d=torch.where(keep, second.d.to(first.d), first.d),
        objective=np.where(better, second.objective, first.objective),
        iterations=first.iterations + second.iterations,
        evaluations=first.evaluations + second.evaluations,
        seconds=first.seconds + second.seconds,
        converged=np.where(better, second.converged, first.converged),
        messages=[b if use else a for a, b, use in zip(first.messages, second.messages, better.tolist())],
    )
