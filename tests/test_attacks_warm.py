"""Warm starts along the λ path (attacks.warm): which problem starts from which, and both
solvers honouring it: scipy's against scipy.optimize called chain by chain, the batched one
against scipy step for step in float64."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch

from attacks.lbfgsb import BatchedLBFGSB
from attacks.config import AttackConfig
from attacks.solvers import get_solver
from attacks.warm import COLD, solve_order, warm_start_predecessors
from models.errors import ConfigError


def test_predecessors_follow_each_pair_down_its_lambdas_in_chains():
    # two pairs, λ given in a shuffled order; chains of 2 from the largest λ down
    src = [1, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    tgt = [5, 5, 5, 5, 5, 6, 6, 6, 6, 6]
    lams = [1.0, 16.0, 4.0, 0.5, 2.0, 0.5, 1.0, 2.0, 4.0, 16.0]
    # pair (1, 5) from the top: p1 (16), p2 (4), p4 (2), p0 (1), p3 (0.5)
    # chains [p1, p2], [p4, p0], [p3]; pair (2, 6): [p9, p8], [p7, p6], [p5]
    expected = [4, COLD, 1, COLD, COLD, COLD, 7, COLD, 9, COLD]
    assert warm_start_predecessors(src, tgt, lams, 2).tolist() == expected
    assert warm_start_predecessors(src, tgt, lams, 1).tolist() == [COLD] * 10
    whole = warm_start_predecessors(src, tgt, lams, 5).tolist()
    assert whole == [4, COLD, 1, 0, 2, 6, 7, 8, 9, COLD]
    with pytest.raises(ValueError, match="warm_chain"):
        warm_start_predecessors(src, tgt, lams, 0)


def test_solve_order_puts_every_start_before_its_problem():
    after = np.array([4, COLD, 1, 0, 2, 6, 7, 8, 9, COLD])
    order = solve_order(after, 10).tolist()
    assert sorted(order) == list(range(10))
    position = {p: i for i, p in enumerate(order)}
    assert all(position[int(a)] < position[p] for p, a in enumerate(after) if a != COLD)
    assert solve_order(None, 3).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="chains"):
        solve_order(np.array([1, 0]), 2)          # a cycle: no cold start


def test_config_fields_are_validated():
    AttackConfig(warm_start=("latent", "output"), warm_chain=1).validate()
    for bad in (dict(warm_start=True), dict(warm_start=("latent", "latent")),
                dict(warm_start=("pixels",)), dict(warm_chain=0), dict(warm_chain=2.5)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            AttackConfig(**bad).validate()


def lambda_paths(pairs: int, lams: list[float], n: int = 40, seed: int = 0):
    """A λ path per pair, in float64: Δ_λ(d) = ½dᵀQd + bᵀd + 0.1·Σd⁴ + λ‖d‖², with the
    pair's own Q, b and box (problem p = pair·len(lams) + j, as the attack driver numbers)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(pairs, n, n, generator=g, dtype=torch.float64) / n ** 0.5
    Q = A @ A.transpose(1, 2) + 0.05 * torch.eye(n, dtype=torch.float64)
    b = 2 * torch.randn(pairs, n, generator=g, dtype=torch.float64)
    lo = -0.5 * torch.rand(pairs, n, generator=g, dtype=torch.float64)
    hi = 0.5 * torch.rand(pairs, n, generator=g, dtype=torch.float64)
    m = len(lams)
    lam = torch.tensor(lams * pairs, dtype=torch.float64)
    pair = torch.arange(pairs).repeat_interleave(m)

    def objective(d, idx):
        idx = torch.as_tensor(list(idx))
        k = pair[idx]
        return (0.5 * torch.einsum("pi,pij,pj->p", d, Q[k], d) + (b[k] * d).sum(1)
                + 0.1 * (d ** 4).sum(1) + lam[idx] * (d * d).sum(1))

    src = pair.tolist()
    return objective, lo[pair], hi[pair], src, lam.tolist()


LAMS = [0.0, 0.1, 0.3, 1.0, 3.0]


def kinked_paths(lams: list[float], n: int = 30):
    """Δ_λ(d) = ½‖d − t‖² + λ‖d‖ on the box [0, 1]^n, as an attack's distance term: its minimiser
    is (1 − λ/‖t‖)·t for λ < ‖t‖ and exactly d = 0, the kink, for λ >= ‖t‖."""
    t = torch.linspace(0.05, 0.3, n, dtype=torch.float64)
    lam = torch.tensor(lams, dtype=torch.float64)

    def objective(d, idx):
        idx = torch.as_tensor(list(idx))
        return 0.5 * ((d - t) ** 2).sum(1) + lam[idx] * torch.linalg.vector_norm(d, dim=1)

    P = len(lams)
    return objective, torch.zeros(P, n, dtype=torch.float64), torch.ones(P, n, dtype=torch.float64), t


@pytest.mark.parametrize("solver", ["scipy", "batched"])
def test_a_neighbour_that_stayed_at_zero_gives_a_cold_start(solver):
    """A warm start from a larger λ whose attack did not pay (its end is d = 0) is no warm start:
    the problem starts from its own d0, exactly as a cold run solves it, and reaches the
    closed-form minimiser; a neighbour that moved away from 0 is still followed."""
    lams = [100.0, 0.5, 0.2]             # ‖t‖ ≈ 1.0: d* = 0 at λ = 100, away from 0 below
    objective, lo, hi, t = kinked_paths(lams)
    d0 = torch.full((3, t.numel()), 1e-3, dtype=torch.float64)
    cfg = AttackConfig(memory=5, factr=1e1, pgtol=1e-9)
    after = warm_start_predecessors([0] * 3, [0] * 3, lams, 3)     # 100 -> 0.5 -> 0.2
    warm = get_solver(solver).solve(objective, d0, lo, hi, cfg, after=after)
    cold = get_solver(solver).solve(objective, d0, lo, hi, cfg)
    assert float(warm.d[0].abs().max()) < 1e-6                       # the kink
    assert warm.evaluations[1] == cold.evaluations[1] and torch.equal(warm.d[1], cold.d[1])
    for p, lam in ((1, 0.5), (2, 0.2)):
        want = (1 - lam / float(t.norm())) * t
        assert torch.allclose(warm.d[p], want, atol=1e-5), p
    assert warm.evaluations[2] < cold.evaluations[2]                 # followed its neighbour


def test_scipy_warm_start_is_scipy_from_the_previous_solution():
    """Problem by problem, the solver's result is scipy.optimize's L-BFGS-B started from the
    clipped end point of the problem before it in the chain (an independent computation)."""
    objective, lo, hi, src, lam = lambda_paths(2, LAMS)
    P, n = lo.shape
    after = warm_start_predecessors(src, src, lam, 3)
    d0 = 1e-3 * torch.ones(P, n, dtype=torch.float64)
    cfg = AttackConfig(memory=5, factr=1e7, pgtol=1e-6)
    got = get_solver("scipy").solve(objective, d0, lo, hi, cfg, after=after)

    def fun(v, p):
        d = torch.as_tensor(v).reshape(1, n).requires_grad_(True)
        val = objective(d, [p]).sum()
        return float(val.detach()), torch.autograd.grad(val, d)[0].numpy().ravel()

    ends = {}
    for p in solve_order(after, P).tolist():
        bounds = scipy.optimize.Bounds(lo[p].numpy(), hi[p].numpy())
        start = np.clip(d0[p].numpy(), bounds.lb, bounds.ub)
        if after[p] != COLD and np.linalg.norm(ends[int(after[p])]) > np.linalg.norm(start):
            start = ends[int(after[p])]   # the neighbour's minimum, unless it stayed at 0
        r = scipy.optimize.minimize(fun, start, args=(p,), jac=True,
                                    method="L-BFGS-B", bounds=bounds,
                                    options=dict(maxcor=5, ftol=1e7 * np.finfo(float).eps, gtol=1e-6))
        ends[p] = np.clip(r.x, bounds.lb, bounds.ub)
        assert got.evaluations[p] == r.nfev
        assert got.messages[p] == r.message
        np.testing.assert_array_equal(got.d[p].numpy(), ends[p])
    # the heads started cold, the others warm: warm starts are cheaper here
    warm = after != COLD
    assert got.evaluations[warm].mean() < got.evaluations[~warm].mean()


@pytest.mark.parametrize("chain", [1, 3, 5])
def test_batched_warm_start_takes_scipys_iterates_in_float64(chain):
    """The batched solver admits a warm-started problem when its start has ended and then runs
    scipy's L-BFGS-B on it step for step, as with cold starts."""
    objective, lo, hi, src, lam = lambda_paths(3, LAMS)
    P, n = lo.shape
    after = warm_start_predecessors(src, src, lam, chain)
    d0 = 1e-3 * torch.ones(P, n, dtype=torch.float64)
    cfg = AttackConfig(memory=5, factr=1e7, pgtol=1e-6, batch_chunk=4)
    ref = get_solver("scipy").solve(objective, d0, lo, hi, cfg, after=after)
    got = BatchedLBFGSB().solve(objective, d0, lo, hi, cfg, after=after)
    assert got.evaluations.tolist() == ref.evaluations.tolist()
    assert got.iterations.tolist() == ref.iterations.tolist()
    assert torch.allclose(got.d, ref.d, rtol=0, atol=1e-12)
    assert got.messages == ref.messages


def test_the_driver_chains_each_pairs_lambdas():
    """run_attacks with warm starts: the first λ of every chain is solved exactly as with cold
    starts (same d0, same solver), the others from their chain's previous solution."""
    from attacks.run import run_attacks
    from tests.test_attacks import LinearGaussianVAE, images

    model = LinearGaussianVAE()
    src, tgt = images(2, 20), images(2, 21)
    lams = [0.0, 0.25, 1.0, 4.0, 16.0]
    common = dict(maxiter=500, maxfun=1000, lams=tuple(lams), solver="scipy")
    args = (model, src, tgt, [7, 8], [1, 2], [3, 4], lams, "latent", "kl")
    cold, _ = run_attacks(*args, AttackConfig(**common, warm_start=()), seed=5)
    warm, _ = run_attacks(*args, AttackConfig(**common, warm_start=("latent",), warm_chain=2), seed=5)
    # a mode not listed starts cold
    other, _ = run_attacks(*args, AttackConfig(**common, warm_start=("output",), warm_chain=2), seed=5)
    assert [{**r, "seconds": 0} for r in other] == [{**r, "seconds": 0} for r in cold]
    after = warm_start_predecessors([1] * 5 + [2] * 5, [3] * 5 + [4] * 5, lams * 2, 2)
    heads = np.flatnonzero(after == COLD)
    assert heads.tolist() == [0, 2, 4, 5, 7, 9]   # λ 16, 1, 0 of each pair start cold
    for p in heads:
        assert all(warm[p][k] == cold[p][k] for k in ("objective", "distortion_l2", "evaluations")), p
    # the others began at a neighbour's minimum, not at d0: here they need fewer evaluations
    rest = np.flatnonzero(after != COLD)
    assert sum(warm[p]["evaluations"] for p in rest) < sum(cold[p]["evaluations"] for p in rest)
