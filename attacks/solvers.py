"""Solvers for a batch of box-constrained attack problems, behind one small interface.

A solver minimises ``objective(d, idx)`` (one value per problem, see ``attacks.objectives``)
over d within ``lower <= d <= upper`` (elementwise: the box that keeps x + d in [0, 1]),
starting from ``d0``. ``SOLVERS`` maps a config name to a solver: ``"scipy"`` (the reference,
one problem at a time) and ``"batched"`` (``attacks.lbfgsb``: the same L-BFGS-B algorithm in
torch, every running problem in one model pass, on CPU or GPU).
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Protocol

import numpy as np
import scipy.optimize
import torch
from torch import Tensor

from attacks.lbfgsb import BatchedLBFGSB
from attacks.result import NONFINITE_VALUE, ObjectiveFn, SolveResult
from attacks.warm import COLD, solve_order, start_from, successors
from results.errors import ConfigError

__all__ = ["SolveResult", "Solver", "ScipyLBFGSB", "SOLVERS", "get_solver", "solves_in_batches", "ObjectiveFn"]


class Solver(Protocol):
    name: str
    # True: solve() runs its problems together in one batch (a task gives it many pairs x
    # lambdas, sweep.config / sweep.cli.plan); False: one problem at a time (a task per pair).
    batched: bool

    def solve(self, objective: ObjectiveFn, d0: Tensor, lower: Tensor, upper: Tensor,
              config, after: Optional[np.ndarray] = None) -> SolveResult:
        """Minimise every problem; ``config`` is an ``AttackConfig`` (memory, factr, pgtol,
        maxiter, maxfun). ``after[p]`` (``attacks.warm``): the problem whose final d is
        problem p's start instead of ``d0[p]`` (``COLD``: d0); None: every start is d0."""
        ...


class ScipyLBFGSB:
    """The reference: ``scipy.optimize.minimize(method="L-BFGS-B", jac=True)``, one problem at
    a time, in float64 on the scipy side and float32 (the model's dtype) in torch.

    Options: maxcor = config.memory, ftol = config.factr · eps(float64) (scipy's ``factr``
    convention), gtol = config.pgtol, maxiter, maxfun.
    """

    name = "scipy"
    batched = False

    def solve(self, objective: ObjectiveFn, d0: Tensor, lower: Tensor, upper: Tensor,
              config, after: Optional[np.ndarray] = None) -> SolveResult:
        P = d0.shape[0]
        shape = tuple(d0.shape[1:])
        dtype, device = d0.dtype, d0.device
        out = torch.empty_like(d0)
        res_f = np.empty(P)
        iters = np.zeros(P, dtype=np.int64)
        nfev = np.zeros(P, dtype=np.int64)
        secs = np.zeros(P)
        conv = np.zeros(P, dtype=bool)
        msgs = [""] * P
        options = dict(maxcor=int(config.memory), ftol=float(config.factr) * np.finfo(float).eps,
                       gtol=float(config.pgtol), maxiter=int(config.maxiter),
                       maxfun=int(config.maxfun))
        finals: dict[int, np.ndarray] = {}   # float64 ends that warm starts begin from
        started_from = successors(after)
        for p in solve_order(after, P).tolist():
            lo = lower[p].detach().double().cpu().numpy().ravel()
            hi = upper[p].detach().double().cpu().numpy().ravel()
            prev = COLD if after is None else int(after[p])
            start = np.clip(d0[p].detach().double().cpu().numpy().ravel(), lo, hi)
            if prev != COLD:
                start = start_from(np.clip(finals.pop(prev), lo, hi), start)

            def fun(v: np.ndarray, p=p):
                d = torch.as_tensor(v, dtype=dtype, device=device).reshape((1,) + shape)
                d.requires_grad_(True)
                with torch.enable_grad():
                    val = objective(d, [p]).sum()
                    (grad,) = torch.autograd.grad(val, d)
                g = grad.detach().double().cpu().numpy().ravel()
                f = float(val.detach())
                if not np.isfinite(f) or not np.all(np.isfinite(g)):
                    return NONFINITE_VALUE, np.zeros_like(g)
                return f, g

            t0 = time.perf_counter()
            r = scipy.optimize.minimize(fun, start, jac=True, method="L-BFGS-B",
                                        bounds=scipy.optimize.Bounds(lo, hi), options=options)
            secs[p] = time.perf_counter() - t0
            x = np.clip(r.x, lo, hi)
            if p in started_from:
                finals[p] = x
            out[p] = torch.as_tensor(x, dtype=dtype, device=device).reshape(shape)
            res_f[p] = float(r.fun)
            iters[p] = int(r.nit)
            nfev[p] = int(r.nfev)
            msg = r.message if isinstance(r.message, str) else r.message.decode()
            conv[p] = bool(r.success)
            msgs[p] = msg
        return SolveResult(d=out, objective=res_f, iterations=iters, evaluations=nfev,
                           seconds=secs, converged=conv, messages=msgs)


SOLVERS: dict[str, Callable[[], Solver]] = {"scipy": ScipyLBFGSB, "batched": BatchedLBFGSB}


def solves_in_batches(name: str) -> bool:
    """Whether the solver called ``name`` in ``AttackConfig.solver`` is a batched one."""
    return bool(get_solver(name).batched)


def get_solver(name: str) -> Solver:
    """A solver instance by its config name (``AttackConfig.solver``)."""
    try:
        return SOLVERS[name]()
    except KeyError:
        raise ConfigError(f"unknown attack solver {name!r}; choose one of {sorted(SOLVERS)}") from None
