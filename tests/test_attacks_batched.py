"""The batched attack solver (attacks.lbfgsb) against the scipy L-BFGS-B reference.

On a small real model (the project's MLP VAE, briefly trained on random squares) and a handful
of pairs × λ × both modes: the quality bar of the issue (batched Δ no worse than scipy's by more
than 1% + a small absolute tolerance in ≥ 95% of problems, median ratio ≤ 1), the box at every
evaluated point, stopped problems never change again, batch composition does not matter, and the
solver runs through ``run_attacks``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacks.lbfgsb import BatchedLBFGSB, bytes_per_problem, probe_cpu_chunk, problems_per_chunk
from attacks.config import AttackConfig
from attacks.objectives import build_objective
from attacks.run import attack_problems, problem_generators, run_attacks
from attacks.solvers import SOLVERS, get_solver
from models import ModelConfig, build_model
from models.errors import ConfigError

torch.set_num_threads(1)

RTOL, ATOL = 0.01, 1e-4          # the 1% relative plus a small absolute tolerance (nats)
LAMS = [0.0, 2.0**-10, 2.0**-2, 2.0**6]
N_PAIRS = 3
MAXITER = 100                    # the smoke preset's maxiter


def squares(n: int, seed: int) -> torch.Tensor:
    """n binary 64×64 images, one filled square each at a random place and size."""
    rng = np.random.default_rng(seed)
    x = torch.zeros(n, 1, 64, 64)
    for k in range(n):
        s = int(rng.integers(8, 24))
        r, c = (int(v) for v in rng.integers(0, 64 - s, size=2))
        x[k, 0, r:r + s, c:c + s] = 1.0
    return x


@pytest.fixture(scope="module")
def model():
    """A real (small) MLP VAE, 150 Adam steps on random squares: a few seconds.

    Its encoder reads the paper's 2x - 1, the fixture these solver bars were set on. With the
    default centred input (issue 31) the model differs, and two of its twelve latent problems
    meet neither of two bars here: at 100 iterations the batched solver ends more than 1% above
    scipy on two unconverged problems (both below scipy's when run to tolerance: 2.4e-4 against
    2.7e-4, 0.0135 against 0.0140), and one problem solved alone and in the batch ends at the
    same objective (1.69284) after the same 79 iterations, at points 2.2e-4 apart in a flat
    direction (the test below allows 1e-6). Issue 34 judges the solver on the sweep's models."""
    torch.manual_seed(0)
    net = build_model(ModelConfig(kind="vae", architecture="mlp", z_dim=4, layers=1, hidden_dim=64,
                                  encoder_input="symmetric"))
    data = squares(128, 2)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(150):
        batch = data[torch.randint(0, len(data), (32,), generator=g)]
        opt.zero_grad()
        net.objective(batch).loss.backward()
        opt.step()
    net.eval()
    return net


def problems(n_pairs=N_PAIRS, lams=LAMS):
    src, tgt = squares(n_pairs, 10), squares(n_pairs, 11)
    m = len(lams)
    x, xt = src.repeat_interleave(m, 0), tgt.repeat_interleave(m, 0)
    lam = torch.tensor(lams * n_pairs, dtype=torch.float32)
    si = [i for i in range(n_pairs) for _ in range(m)]
    ti = [100 + i for i in range(n_pairs) for _ in range(m)]
    return x, xt, lam, si, ti


def setup_problem(model, mode, x, xt, lam, si, ti, seed=0):
    """The objective, start and box exactly as ``attack_problems`` builds them."""
    sim = "kl" if mode == "latent" else "elbo"
    objective = build_objective(model, mode, sim, x, xt, lam, problem_generators(seed, si, ti, 1))
    lower, upper = -x.double(), 1.0 - x.double()
    d0 = torch.stack([(torch.rand(x.shape[1:], generator=g, dtype=torch.float64) * 2 - 1) * 1e-3
                      for g in problem_generators(seed, si, ti, 0)])
    d0 = torch.minimum(torch.maximum(d0, lower), upper).float()
    return objective, d0, lower, upper


class Recorder:
    """Wraps an objective and keeps every (problem indices, d) it is called with."""

    def __init__(self, objective):
        self.objective = objective
        self.calls: list[tuple[list[int], torch.Tensor]] = []

    def __call__(self, d, idx=None):
        ids = list(range(d.shape[0])) if idx is None else [int(i) for i in idx]
        self.calls.append((ids, d.detach().clone()))
        return self.objective(d, idx)

    def evaluate(self, d, idx=None):
        return self.objective.evaluate(d, idx)


def test_registered_and_config_fields():
    assert "batched" in SOLVERS and get_solver("batched").name == "batched"
    AttackConfig(solver="batched", batch_ftol=1e-7, batch_memory=1 << 20, batch_chunk=4,
                 batch_history=10).validate()
    for bad in (dict(batch_ftol=-1.0), dict(batch_memory=0), dict(batch_chunk=0),
                dict(batch_chunk=2.5), dict(batch_history=0), dict(batch_history=1.5)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            AttackConfig(**bad).validate()


def test_chunk_size_from_memory():
    n, m = 4096, 25
    per = bytes_per_problem(n, m)
    assert per == 4 * n * (2 * m + 14) + 64 * n * 4
    assert problems_per_chunk(n, m, torch.float32, "cpu", budget=10 * per) == 10
    assert problems_per_chunk(n, m, torch.float32, "cpu", budget=10 * per, n_problems=3) == 3
    assert problems_per_chunk(n, m, torch.float32, "cpu", budget=1) == 1
    # the default CPU budget (1 GiB) holds the smoke sweep's 33 problems in one batch
    assert problems_per_chunk(n, m, torch.float32, "cpu") >= 33


def boxed_nonquadratics(P: int, n: int, seed: int = 0):
    """P independent smooth non-quadratic problems in float64 (a random positive-definite
    quadratic, a linear term and a quartic), each in its own box around 0 that cuts off most of
    its unconstrained minimiser."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(P, n, n, generator=g, dtype=torch.float64) / n ** 0.5
    Q = A @ A.transpose(1, 2) + 0.05 * torch.eye(n, dtype=torch.float64)
    b = torch.randn(P, n, generator=g, dtype=torch.float64)
    lo = -0.5 * torch.rand(P, n, generator=g, dtype=torch.float64)
    hi = 0.5 * torch.rand(P, n, generator=g, dtype=torch.float64)

    def objective(d, idx):
        idx = torch.as_tensor(list(idx))
        return (0.5 * torch.einsum("pi,pij,pj->p", d, Q[idx], d) + (b[idx] * d).sum(1)
                + 0.1 * (d ** 4).sum(1))

    return objective, lo, hi


@pytest.mark.parametrize("memory", [1, 3, 25])
def test_same_iterates_as_scipy_in_float64(memory):
    """In float64 the batched solver is scipy's L-BFGS-B step for step: the same iterations
    and evaluations per problem and the same end point (to rounding), for any memory, on
    problems whose minimisers sit on the box (the Cauchy point passes breakpoints, the
    subspace step is projected)."""
    P, n = 6, 50
    objective, lo, hi = boxed_nonquadratics(P, n)
    d0 = torch.zeros(P, n, dtype=torch.float64)
    cfg = AttackConfig(memory=memory, factr=1e7, pgtol=1e-5)
    ref = get_solver("scipy").solve(objective, d0, lo, hi, cfg)
    got = BatchedLBFGSB().solve(objective, d0, lo, hi, cfg)
    on_box = ((ref.d == lo) | (ref.d == hi)).sum(dim=1)
    assert torch.all(on_box >= n // 4), on_box            # the box matters at the minimiser
    assert got.iterations.tolist() == ref.iterations.tolist()
    assert got.evaluations.tolist() == ref.evaluations.tolist()
    assert torch.allclose(got.d, ref.d, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.objective, ref.objective, rtol=1e-14, atol=0)
    assert got.messages == ref.messages and got.converged.tolist() == ref.converged.tolist()


def boxed_quadratics(P: int, n: int, seed: int = 0):
    """P independent quadratics in the box [-1, 1]^n, each with its own scales and centre."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(P, n, generator=g) * 9 + 1
    target = torch.randn(P, n, generator=g)

    def objective(d, idx):
        idx = torch.as_tensor(idx)
        return 0.5 * (scale[idx] * (d - target[idx]) ** 2).sum(dim=1)

    return objective, target, -torch.ones(P, n), torch.ones(P, n)


def test_cpu_probe_keeps_its_evaluations_and_changes_no_result():
    """The CPU probe returns a tried batch size and the objective's own values at the
    starting points it timed; a solve that probes reaches bitwise the same results as one
    with a fixed batch (the evaluation is row-wise, so only the solver could differ)."""
    P, n = 100, 30
    objective, target, lo, hi = boxed_quadratics(P, n)
    d0 = torch.zeros(P, n)
    chunk, (f, g) = probe_cpu_chunk(objective, d0, (n,), limit=P)
    assert chunk in (32, 64)
    assert f.shape[0] in (32, 96) and g.shape == (f.shape[0], n)   # slices of 32, then 64
    for a, b in ((0, 32), (32, f.shape[0])):                       # as the probe evaluated them
        idx = list(range(a, b))
        d = d0[idx].clone().requires_grad_(True)
        v = objective(d, idx)
        (grad,) = torch.autograd.grad(v.sum(), d)
        assert torch.equal(f[a:b], v.detach()) and torch.equal(g[a:b], grad)
    # too few problems, or a memory bound below the first probe size: no probe
    assert probe_cpu_chunk(objective, d0[:20], (n,), limit=P) == (20, None)
    assert probe_cpu_chunk(objective, d0, (n,), limit=8) == (8, None)
    cfg = AttackConfig(solver="batched", maxiter=200, pgtol=1e-6)
    probed = get_solver("batched").solve(objective, d0, lo, hi, cfg)
    fixed = get_solver("batched").solve(objective, d0, lo, hi,
                                        AttackConfig(solver="batched", maxiter=200, pgtol=1e-6,
                                                     batch_chunk=P))
    assert torch.equal(probed.d, fixed.d)
    assert np.array_equal(probed.evaluations, fixed.evaluations)
    assert torch.allclose(probed.d, target.clamp(-1, 1), atol=2e-3)


def test_batch_history_sets_the_memory():
    """``batch_history`` overrides ``memory`` for the batched solver (history arrays and chunk
    sizing); None falls back to ``memory``."""
    from attacks.lbfgsb.driver import _history
    assert _history(AttackConfig(memory=25)) == 25
    assert _history(AttackConfig(memory=25, batch_history=10)) == 10
    # a quadratic in a box: the minimiser is found with any memory, the bounds are respected
    P, n = 5, 40
    objective, target, lo, hi = boxed_quadratics(P, n)
    for h in (1, 3, 25):
        cfg = AttackConfig(solver="batched", maxiter=500, batch_history=h, pgtol=1e-6)
        res = get_solver("batched").solve(objective, torch.zeros(P, n), lo, hi, cfg)
        assert torch.all(res.d >= lo) and torch.all(res.d <= hi)
        assert torch.allclose(res.d, target.clamp(-1, 1), atol=2e-3)


@pytest.mark.parametrize("mode", ["latent", "output"])
def test_quality_against_scipy(model, mode):
    """Batched Δ <= scipy Δ·(1 + 1%) + 1e-4 in >= 95% of problems, median ratio <= 1, on the
    objective the solvers minimised (in output mode the reported Δ is re-evaluated on fresh
    draws, which scores the attack, not the solver)."""
    x, xt, lam, si, ti = problems()
    sim = "kl" if mode == "latent" else "elbo"
    out = {}
    for solver in ("scipy", "batched"):
        cfg = AttackConfig(solver=solver, maxiter=MAXITER)
        total = attack_problems(model, x, xt, lam, mode, sim, cfg, si, ti, seed=0).delta_minimised
        out[solver] = total.double().numpy()
    ref, new = out["scipy"], out["batched"]
    assert np.all(np.isfinite(new))
    within = new <= ref + RTOL * np.abs(ref) + ATOL
    with np.errstate(divide="ignore", invalid="ignore"):   # a Δ of 0 gives inf, or 1 for 0/0
        ratio = np.where(new == ref, 1.0, new / ref)
    assert within.mean() >= 0.95, (mode, ref, new)
    # median <= 1.00, up to the float32 rounding of Δ (~1e-6 relative)
    assert np.median(ratio) <= 1.0 + 1e-5, (mode, ratio)


@pytest.mark.parametrize("mode", ["latent", "output"])
def test_box_and_stopped_problems_do_not_change(model, mode):
    x, xt, lam, si, ti = problems()
    objective, d0, lower, upper = setup_problem(model, mode, x, xt, lam, si, ti)
    rec = Recorder(objective)
    res = BatchedLBFGSB().solve(rec, d0, lower, upper, AttackConfig(maxiter=MAXITER))
    # every evaluated point lies in the box
    for ids, d in rec.calls:
        dd = d.double()
        assert torch.all(dd >= lower[ids]) and torch.all(dd <= upper[ids])
    assert torch.all(res.d.double() >= lower) and torch.all(res.d.double() <= upper)
    # a problem is evaluated exactly as often as reported: never again once it stopped
    counts = np.zeros(len(x), dtype=int)
    for ids, _ in rec.calls:
        counts[ids] += 1
    assert np.array_equal(counts, res.evaluations)
    # the returned d is a point the problem was evaluated at, and its Δ is the one reported
    for p in range(len(x)):
        seen = [d[ids.index(p)] for ids, d in rec.calls if p in ids]
        assert any(torch.equal(res.d[p], s) for s in seen)
    with torch.no_grad():
        again = objective(res.d).double().numpy()
    np.testing.assert_allclose(again, res.objective, rtol=1e-5, atol=1e-6)
    # a problem that stopped within k iterations is identical when the others run on (with a
    # batch-invariant evaluation: the model's own rounding depends on how many rows are left)
    rowwise = RowWise(objective)
    full = BatchedLBFGSB().solve(rowwise, d0, lower, upper, AttackConfig(maxiter=MAXITER))
    k = int(full.iterations[full.converged].min())  # the earliest stop on a tolerance
    # (as scipy's, the iteration limit is checked before that iteration's convergence test,
    # so a problem that converged at iteration k needs maxiter k + 1 to report it)
    short = BatchedLBFGSB().solve(rowwise, d0, lower, upper, AttackConfig(maxiter=k + 1))
    early = np.flatnonzero(short.converged)
    assert len(early) > 0 and not short.converged.all()
    for p in early:
        assert torch.equal(short.d[p], full.d[p]), p
        assert short.objective[p] == full.objective[p]
    # it stops on a tolerance about as often as the reference does within the same maxiter
    ref = get_solver("scipy").solve(objective, d0, lower, upper, AttackConfig(maxiter=MAXITER))
    assert res.converged.sum() >= ref.converged.sum() - 1, (res.messages, ref.messages)


class RowWise:
    """The objective evaluated one problem at a time: the model's CPU matmul kernels round a
    row differently depending on the batch size, so only this makes the evaluation itself
    independent of the batch, and any remaining difference would come from the solver."""

    def __init__(self, objective, problems=None):
        self.objective = objective
        self.problems = problems  # local index -> the objective's problem (None: identity)

    def __call__(self, d, idx=None):
        ids = list(range(d.shape[0])) if idx is None else [int(i) for i in idx]
        if self.problems is not None:
            ids = [self.problems[i] for i in ids]
        return torch.cat([self.objective(d[k:k + 1], [i]) for k, i in enumerate(ids)])


@pytest.mark.parametrize("mode", ["latent", "output"])
def test_result_does_not_depend_on_the_batch(model, mode):
    """A problem solved alone, in the whole batch, or in chunks of 5 (slots refilled from the
    queue) reaches the same d and Δ with a batch-invariant evaluation, and a Δ no worse than
    the bar allows with the batched model. (Not bitwise: the solver's float64 batched products
    may round the last bits differently for another number of slots.)"""
    x, xt, lam, si, ti = problems()
    cfg = AttackConfig(maxiter=MAXITER)
    objective, d0, lower, upper = setup_problem(model, mode, x, xt, lam, si, ti)
    rowwise = RowWise(objective)
    together = BatchedLBFGSB().solve(rowwise, d0, lower, upper, cfg)
    chunked = BatchedLBFGSB().solve(rowwise, d0, lower, upper,
                                    AttackConfig(maxiter=MAXITER, batch_chunk=5))
    batched = BatchedLBFGSB().solve(objective, d0, lower, upper, cfg)
    for p in (0, 6, len(x) - 1):
        # problem p alone (a view of the same objective: the latent objective encodes its
        # targets as one batch when it is built, so a new one-problem objective would differ)
        alone = BatchedLBFGSB().solve(RowWise(objective, [p]), d0[p:p + 1], lower[p:p + 1],
                                      upper[p:p + 1], cfg)
        for other in (together, chunked):
            if mode == "latent":
                assert torch.allclose(alone.d[0], other.d[p], rtol=0, atol=1e-6), p
                assert alone.objective[0] == pytest.approx(other.objective[p], rel=1e-6, abs=1e-9)
                assert alone.iterations[0] == other.iterations[p]
            else:
                # output mode: the paths part after ~20 evaluations from a last-bit
                # difference (not yet explained, issue 15's note); the Δ must meet the bar
                ref, got = alone.objective[0], other.objective[p]
                assert got <= ref + RTOL * abs(ref) + ATOL, (p, ref, got)
        # with the model's batched kernels (which round differently) the path may differ in
        # flat regions, but the batched result is no worse than the bar allows
        ref, got = alone.objective[0], batched.objective[p]
        assert got <= ref + RTOL * abs(ref) + ATOL, (p, ref, got)


def test_run_attacks_with_the_batched_solver(model):
    x, xt, lam, si, ti = problems(n_pairs=2, lams=[0.0, 1.0])
    src, tgt = x[::2], xt[::2]
    cfg = AttackConfig(solver="batched", maxiter=50)
    for mode, sim in (("latent", "kl"), ("output", "elbo")):
        rows, gallery = run_attacks(model, src, tgt, [0, 1], [0, 1], [100, 101], [0.0, 1.0],
                                    mode, sim, config=cfg)
        assert len(rows) == 4 and len(gallery) == 2
        assert all(r["solver"] == "batched" and np.isfinite(r["objective"]) for r in rows)
        assert all(r["iterations"] >= 1 and r["seconds"] >= 0 for r in rows)
        assert sum(r["selected"] for r in rows) == 2
