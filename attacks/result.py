"""What every attack solver takes and returns: the objective's signature and ``SolveResult``.

Its own module so that the solvers (``attacks.solvers``, ``attacks.lbfgsb``) import it and not
each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
from torch import Tensor

__all__ = ["NONFINITE_VALUE", "ObjectiveFn", "SolveResult"]

# what a solver hands L-BFGS-B for a non-finite Δ (with a zero gradient): it cannot recover
# from NaN, and a huge value makes its line search back off
NONFINITE_VALUE = 1e30

# objective(d [k, ...], idx: the k problem indices or None for all) -> Δ per problem [k]
ObjectiveFn = Callable[[Tensor, Optional[Sequence[int]]], Tensor]


@dataclass
class SolveResult:
    d: Tensor                  # [P, C, H, W] final distortions, float32
    objective: np.ndarray      # [P] Δ at d as the solver last evaluated it
    iterations: np.ndarray     # [P] int
    evaluations: np.ndarray    # [P] int, objective+gradient evaluations
    seconds: np.ndarray        # [P] wall time per problem (batched solvers: the share)
    converged: np.ndarray      # [P] bool: stopped on a tolerance, not on a limit or failure
    messages: list[str] = field(default_factory=list)
