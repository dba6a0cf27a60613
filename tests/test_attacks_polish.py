"""Polishing (attacks.polish): every end solved once more from itself, the lower kept, checked
against closed-form minimisers and against scipy.optimize run from the same ends."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch

from attacks.config import AttackConfig
from attacks.polish import restarted_from_ends
from attacks.result import SolveResult
from attacks.solvers import get_solver
from models.errors import ConfigError
from sweep.config import SweepConfig
from tests.test_attacks_warm import LAMS, kinked_paths, lambda_paths


def handmade(objective, d: torch.Tensor) -> SolveResult:
    """A first run's result that ended at ``d`` (as a solver reports it)."""
    P = d.shape[0]
    value = objective(d, range(P)).numpy()
    return SolveResult(d=d, objective=value, iterations=np.full(P, 7), evaluations=np.full(P, 9),
                       seconds=np.ones(P), converged=np.zeros(P, dtype=bool), messages=["first"] * P)


@pytest.mark.parametrize("solver", ["scipy", "batched"])
def test_an_end_short_of_the_minimum_goes_on_to_it_and_a_minimum_is_kept(solver):
    """λ = 100 ≥ ‖t‖: the minimiser is exactly d = 0, where the first run ended, and nothing
    feasible is lower, so that end and its message are kept. λ = 0.5, 0.2: the first run stopped
    halfway (d = t/2); polished, they reach the closed form (1 − λ/‖t‖)·t. Counts add up."""
    lams = [100.0, 0.5, 0.2]
    objective, lo, hi, t = kinked_paths(lams)
    first = handmade(objective, torch.stack([torch.zeros_like(t), 0.5 * t, 0.5 * t]))
    cfg = AttackConfig(memory=5, factr=1e1, pgtol=1e-9)
    got = restarted_from_ends(get_solver(solver), objective, first, lo, hi, cfg)
    assert torch.equal(got.d[0], torch.zeros_like(t)) and got.messages[0] == "first"
    assert got.objective[0] == first.objective[0] and not got.converged[0]
    for p in (1, 2):
        want = (1 - lams[p] / float(t.norm())) * t
        assert torch.allclose(got.d[p], want, atol=1e-5), p
        assert got.objective[p] < first.objective[p] and got.messages[p] != "first"
    assert (got.evaluations > first.evaluations).all()
    assert (got.iterations >= first.iterations).all()
    np.testing.assert_array_equal(got.seconds > first.seconds, True)


def test_the_second_run_is_scipy_from_the_first_runs_ends():
    """A run cut short (maxiter 2), polished with scipy: each problem's end is
    scipy.optimize's L-BFGS-B started from the cut-short end (an independent computation),
    with no warm start, or the first end where that is not lower."""
    objective, lo, hi, src, lam = lambda_paths(2, LAMS)
    P, n = lo.shape
    d0 = 1e-3 * torch.ones(P, n, dtype=torch.float64)
    cfg = AttackConfig(memory=5, factr=1e7, pgtol=1e-6)
    short = get_solver("scipy").solve(objective, d0, lo, hi, AttackConfig(memory=5, maxiter=2))
    got = restarted_from_ends(get_solver("scipy"), objective, short, lo, hi, cfg)

    def fun(v, p):
        d = torch.as_tensor(v).reshape(1, n).requires_grad_(True)
        val = objective(d, [p]).sum()
        return float(val.detach()), torch.autograd.grad(val, d)[0].numpy().ravel()

    for p in range(P):
        bounds = scipy.optimize.Bounds(lo[p].numpy(), hi[p].numpy())
        r = scipy.optimize.minimize(fun, short.d[p].numpy(), args=(p,), jac=True, method="L-BFGS-B",
                                    bounds=bounds,
                                    options=dict(maxcor=5, ftol=1e7 * np.finfo(float).eps, gtol=1e-6))
        assert r.fun < short.objective[p]            # cut short: every problem went on down
        np.testing.assert_array_equal(got.d[p].numpy(), np.clip(r.x, bounds.lb, bounds.ub))
        assert got.evaluations[p] == short.evaluations[p] + r.nfev


def test_the_driver_polishes_only_the_modes_named():
    """run_attacks with polish in the output mode: latent rows are those of an unpolished run;
    output rows count the second run's evaluations."""
    from attacks.run import run_attacks
    from tests.test_attacks import LinearGaussianVAE, images

    model = LinearGaussianVAE()
    src, tgt = images(2, 20), images(2, 21)
    lams = [0.0, 1.0, 16.0]
    common = dict(maxiter=300, maxfun=600, lams=tuple(lams), solver="scipy", output_mc_samples=2,
                  output_report_samples=4)
    plain, polished = {}, {}
    for mode, sim in (("latent", "kl"), ("output", "elbo")):
        args = (model, src, tgt, [7, 8], [1, 2], [3, 4], lams, mode, sim)
        plain[mode], _ = run_attacks(*args, AttackConfig(**common), seed=5)
        polished[mode], _ = run_attacks(*args, AttackConfig(**common, polish=("output",)), seed=5)
    assert [{**r, "seconds": 0} for r in polished["latent"]] == [{**r, "seconds": 0} for r in plain["latent"]]
    assert all(b["evaluations"] > a["evaluations"] for a, b in zip(plain["output"], polished["output"]))


def test_config_and_fingerprint():
    """``polish`` names modes; left empty it leaves a config's fingerprint as it was (folders
    written before it existed resume), set it gives the config its own."""
    AttackConfig(polish=("latent", "output")).validate()
    for bad in (("latent", "latent"), ("pixels",), True):
        with pytest.raises(ConfigError, match="polish"):
            AttackConfig(polish=bad).validate()
    base = SweepConfig()
    assert base.fingerprint() == "14108e55d3f51a93"          # the pin of tests/test_sweep_config.py
    polished = SweepConfig(attack=AttackConfig(polish=("latent",)))
    assert polished.fingerprint() != base.fingerprint()
