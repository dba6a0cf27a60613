"""Unit tests of attacks/: objectives against closed forms, the solver, the protocol, metrics.

The model is a hand-written linear Gaussian VAE implementing the models API of
docs/CONTRACTS.md (encode / attack_layers / decode / log_likelihood / kl_to_prior /
reconstruct), on 1×2×2 images (D = 4) so an invertible encoder is easy to build and every
expected value is computed here by hand in float64 numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from attacks.metrics import (auddc, auddc_from_points, auddc_with_reason, ddc_points, lambda_grid,
                             sample_pairs, select_lambda)
from results.errors import ConfigError


# --- a linear Gaussian VAE with the models API --------------------------------------------

@dataclass
class Gaussian:
    mean: torch.Tensor
    logvar: torch.Tensor


@dataclass
class Encoding:
    posteriors: list
    z: list


class LinearGaussianVAE(nn.Module):
    """Layer 1: μ1 = W x + b, logvar1 = V x + c (x flattened, pixel range).
    Layer l > 1 (a chain): μ_l = A_l μ_{l-1}-input + a_l, logvar_l = fixed vector.
    Decoder: Bernoulli logits = U z_1 + u (+ sum of the other layers' U_l z_l)."""

    def __init__(self, D=4, z_dim=4, layers=1, attack_layers=None, seed=0, V_scale=0.1):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.D, self.z_dim, self.L = D, z_dim, layers
        W = torch.eye(z_dim, D) * 2.0 + 0.3 * torch.randn(z_dim, D, generator=g)
        self.W = nn.Parameter(W)
        self.b = nn.Parameter(0.1 * torch.randn(z_dim, generator=g))
        self.V = nn.Parameter(V_scale * torch.randn(z_dim, D, generator=g))
        self.c = nn.Parameter(-1.0 + 0.2 * torch.randn(z_dim, generator=g))
        self.A = nn.ParameterList([nn.Parameter(torch.eye(z_dim) + 0.2 * torch.randn(z_dim, z_dim, generator=g))
                                   for _ in range(layers - 1)])
        self.a = nn.ParameterList([nn.Parameter(0.1 * torch.randn(z_dim, generator=g)) for _ in range(layers - 1)])
        self.lv = nn.ParameterList([nn.Parameter(-0.5 + 0.1 * torch.randn(z_dim, generator=g)) for _ in range(layers - 1)])
        self.U = nn.ParameterList([nn.Parameter(0.5 * torch.randn(D, z_dim, generator=g)) for _ in range(layers)])
        self.u = nn.Parameter(0.1 * torch.randn(D, generator=g))
        self.attack_layers = list(range(layers)) if attack_layers is None else list(attack_layers)
        self.shape = None

    def encode(self, x, sample=True, eps=None, input_noise_std=0.0):
        self.shape = x.shape[1:]
        xf = x.flatten(1)
        posts, zs = [], []
        h = None
        for l in range(self.L):
            if l == 0:
                m = xf @ self.W.T + self.b
                lv = xf @ self.V.T + self.c
            else:
                m = h @ self.A[l - 1].T + self.a[l - 1]
                lv = self.lv[l - 1].expand_as(m)
            if eps is not None:
                z = m + (0.5 * lv).exp() * eps[l]
            elif sample:
                z = m + (0.5 * lv).exp() * torch.randn_like(m)
            else:
                z = m
            posts.append(Gaussian(m, lv))
            zs.append(z)
            h = z
        return Encoding(posts, zs)

    def decode(self, z_list):
        logits = self.u + sum(z @ U.T for z, U in zip(z_list, self.U))
        return logits.reshape((-1,) + tuple(self.shape))

    def log_likelihood(self, x, z_list):
        logits = self.decode(z_list).flatten(1)
        xf = x.flatten(1)
        return -nn.functional.binary_cross_entropy_with_logits(logits, xf, reduction="none").sum(1)

    def kl_to_prior(self, enc):  # only the 1-layer case is used in the tests
        assert self.L == 1
        g = enc.posteriors[0]
        return 0.5 * (g.logvar.exp() + g.mean ** 2 - 1 - g.logvar).sum(1)

    def reconstruct(self, x):
        enc = self.encode(x, sample=False)
        return torch.sigmoid(self.decode(enc.z))


def np_params(model):
    return {k: v.detach().double().numpy() for k, v in model.named_parameters()}


def images(P, seed=0, binary=False):
    """P images 1×2×2; non-binary ones have pixels in [0.15, 0.85] so x ± 0.1 stays in the box."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(P, 1, 2, 2, generator=g)
    return (x > 0.5).float() if binary else 0.15 + 0.7 * x


# --- objectives vs closed forms -------------------------------------------------------------

def closed_form_latent(p, x, xt, d, lam, similarity, eps1=None, eps2=None):
    """Δ and dΔ/dd for the 1-layer linear Gaussian encoder, in float64 numpy."""
    xa = x + d
    m1, lv1 = p["W"] @ xa + p["b"], p["V"] @ xa + p["c"]
    m2, lv2 = p["W"] @ xt + p["b"], p["V"] @ xt + p["c"]
    s1, s2 = np.exp(lv1 / 2), np.exp(lv2 / 2)
    if similarity == "kl":
        r = 0.5 * np.sum(lv2 - lv1 + (np.exp(lv1) + (m1 - m2) ** 2) / np.exp(lv2) - 1)
        gm = (m1 - m2) / np.exp(lv2)
        glv = 0.5 * (np.exp(lv1 - lv2) - 1)
    elif similarity == "l2_mean":
        r = np.linalg.norm(m1 - m2)
        gm, glv = (m1 - m2) / r, np.zeros_like(m1)
    elif similarity == "w2":
        r = math.sqrt(np.sum((m1 - m2) ** 2) + np.sum((s1 - s2) ** 2))
        gm, glv = (m1 - m2) / r, (s1 - s2) * 0.5 * s1 / r
    elif similarity == "l2_sample":
        diff = m1 + s1 * eps1 - (m2 + s2 * eps2)
        r = np.linalg.norm(diff)
        gm, glv = diff / r, diff / r * 0.5 * s1 * eps1
    n = np.linalg.norm(d)
    grad = p["W"].T @ gm + p["V"].T @ glv + lam * d / n
    return r + lam * n, r, grad


def test_a_registered_similarity_carries_its_unit_into_the_vocabulary(monkeypatch):
    import attacks.objectives as objectives
    from results import vocabulary

    monkeypatch.setattr(objectives, "LATENT_SIMILARITIES", dict(objectives.LATENT_SIMILARITIES))
    monkeypatch.setattr(vocabulary, "_UNITS", dict(vocabulary._UNITS))
    assert [objectives.LATENT_SIMILARITIES[s].unit for s in ("kl", "l2_mean", "l2_sample", "w2")] == [
        vocabulary.unit_of(s) for s in ("kl", "l2_mean", "l2_sample", "w2")]
    l1 = lambda m1, lv1, m2, lv2: (m1 - m2).abs().sum(-1)  # noqa: E731
    objectives.register_similarity(objectives.LatentSimilarity("l1_mean", l1, unit="latent L1 distance"))
    objectives.register_similarity(objectives.LatentSimilarity("l1_max", l1))  # no unit given
    assert vocabulary.unit_of("l1_mean") == "latent L1 distance" and vocabulary.unit_of("l1_max") == "l1_max units"
    assert vocabulary.mode_of_similarity("l1_max") == "latent"
    with pytest.raises(ConfigError, match="lower-case"):
        objectives.register_similarity(objectives.LatentSimilarity("L1", l1))
    assert "L1" not in objectives.LATENT_SIMILARITIES


@pytest.mark.parametrize("similarity", ["kl", "l2_mean", "w2", "l2_sample"])
def test_latent_objective_matches_closed_form(similarity):
    from attacks.objectives import LatentObjective

    torch.manual_seed(0)
    model = LinearGaussianVAE()
    P = 3
    x, xt = images(P, 1), images(P, 2)
    lams = torch.tensor([0.0, 0.5, 3.0])
    d = (0.2 * torch.rand(P, 1, 2, 2) - 0.1)
    kw = {}
    if similarity == "l2_sample":
        e1, e2 = torch.randn(P, 4), torch.randn(P, 4)
        kw = dict(noise=[e1], noise_target=[e2])
    obj = LatentObjective(model, x, xt, lams, similarity, **kw)
    d_req = d.clone().requires_grad_(True)
    val = obj.evaluate(d_req)
    (grad,) = torch.autograd.grad(val.total.sum(), d_req)
    p = np_params(model)
    for i in range(P):
        args = {}
        if similarity == "l2_sample":
            args = dict(eps1=e1[i].double().numpy(), eps2=e2[i].double().numpy())
        tot, dist, g = closed_form_latent(p, x[i].flatten().double().numpy(), xt[i].flatten().double().numpy(),
                                          d[i].flatten().double().numpy(), float(lams[i]), similarity, **args)
        assert val.total[i].item() == pytest.approx(tot, rel=1e-4, abs=1e-5)
        assert val.distance[i].item() == pytest.approx(dist, rel=1e-4, abs=1e-5)
        np.testing.assert_allclose(grad[i].flatten().double().numpy(), g, rtol=1e-3, atol=1e-5)
    # a subset of the problems gives the same per-problem values (what the scipy solver uses)
    sub = obj(d[[2, 0]], [2, 0]).detach()
    torch.testing.assert_close(sub, val.total.detach()[[2, 0]])


def test_latent_objective_is_zero_at_the_target_and_deterministic():
    from attacks.objectives import LatentObjective

    model = LinearGaussianVAE()
    x, xt = images(2, 1), images(2, 2)
    for sim in ("kl", "l2_mean", "w2"):
        obj = LatentObjective(model, x, xt, torch.zeros(2), sim)
        v = obj.evaluate(xt - x)
        assert v.distance.abs().max().item() < 1e-5
        torch.testing.assert_close(obj(0.01 + 0 * x), obj(0.01 + 0 * x))


def test_latent_objective_sums_attack_layers():
    """Seatbelt (all layers) vs DLGM (layer 1 only): Σ_i KL over model.attack_layers, eq. 11–12."""
    from attacks.objectives import LatentObjective, gaussian_kl

    x, xt = images(2, 3), images(2, 4)
    d = 0.05 * torch.ones(2, 1, 2, 2)
    full = LinearGaussianVAE(layers=3, seed=1)
    only1 = LinearGaussianVAE(layers=3, seed=1, attack_layers=[0])
    e1, e2 = full.encode(x + d, sample=False), full.encode(xt, sample=False)
    per_layer = [gaussian_kl(a.mean, a.logvar, b.mean, b.logvar) for a, b in zip(e1.posteriors, e2.posteriors)]
    # hand KL of layer 1 as a check of gaussian_kl itself
    m1, lv1 = e1.posteriors[0].mean.double(), e1.posteriors[0].logvar.double()
    m2, lv2 = e2.posteriors[0].mean.double(), e2.posteriors[0].logvar.double()
    hand = 0.5 * (lv2 - lv1 + (lv1.exp() + (m1 - m2) ** 2) / lv2.exp() - 1).sum(1)
    torch.testing.assert_close(per_layer[0].double(), hand, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        got_full = LatentObjective(full, x, xt, torch.zeros(2), "kl").evaluate(d).distance
        got_1 = LatentObjective(only1, x, xt, torch.zeros(2), "kl").evaluate(d).distance
    torch.testing.assert_close(got_full, sum(per_layer).detach())
    torch.testing.assert_close(got_1, per_layer[0].detach())


def closed_form_output(p, x, xt, d, lam, eps):
    """Δ_output and its gradient for the 1-layer linear Bernoulli VAE with fixed noise."""
    xa = x + d
    m, lv = p["W"] @ xa + p["b"], p["V"] @ xa + p["c"]
    s = np.exp(lv / 2)
    z = m + s * eps
    logits = p["U.0"] @ z + p["u"]
    sig = 1 / (1 + np.exp(-logits))
    loglik = np.sum(xt * np.log(sig) + (1 - xt) * np.log(1 - sig))
    kl = 0.5 * np.sum(np.exp(lv) + m ** 2 - 1 - lv)
    dist = -(loglik - kl)
    gz = p["U.0"].T @ (sig - xt)                 # d(-loglik)/dz
    gm = gz + m                                  # + dKL/dm
    glv = gz * 0.5 * s * eps + 0.5 * (np.exp(lv) - 1)
    n = np.linalg.norm(d)
    return dist + lam * n, dist, p["W"].T @ gm + p["V"].T @ glv + lam * d / n


def test_output_objective_matches_closed_form():
    from attacks.objectives import OutputObjective

    torch.manual_seed(1)
    model = LinearGaussianVAE(V_scale=0.3)
    P = 3
    x, xt = images(P, 5), images(P, 6, binary=True)
    lams = torch.tensor([0.0, 1.0, 7.0])
    d = 0.2 * torch.rand(P, 1, 2, 2) - 0.1
    eps = torch.randn(2, P, 4)  # S = 2 Monte-Carlo samples
    obj = OutputObjective(model, x, xt, lams, noise=[eps])
    d_req = d.clone().requires_grad_(True)
    val = obj.evaluate(d_req)
    (grad,) = torch.autograd.grad(val.total.sum(), d_req)
    p = np_params(model)
    for i in range(P):
        parts = [closed_form_output(p, x[i].flatten().double().numpy(), xt[i].flatten().double().numpy(),
                                    d[i].flatten().double().numpy(), float(lams[i]), eps[s, i].double().numpy())
                 for s in range(2)]
        tot = np.mean([q[0] for q in parts])
        dist = np.mean([q[1] for q in parts])
        g = np.mean([q[2] for q in parts], axis=0)
        assert val.total[i].item() == pytest.approx(tot, rel=1e-4, abs=1e-5)
        assert val.distance[i].item() == pytest.approx(dist, rel=1e-4, abs=1e-5)
        np.testing.assert_allclose(grad[i].flatten().double().numpy(), g, rtol=1e-3, atol=1e-5)


def test_build_objective_noise_is_per_problem_and_fixed():
    from attacks.objectives import build_objective
    from attacks.run import problem_generators

    model = LinearGaussianVAE()
    x, xt = images(3, 7), images(3, 8)
    gens = lambda: problem_generators(0, [1, 2, 3], [4, 5, 6], 1)  # noqa: E731
    a = build_objective(model, "output", "elbo", x, xt, torch.zeros(3), gens(), mc_samples=2)
    b = build_objective(model, "output", "elbo", x[1:], xt[1:], torch.zeros(2),
                        problem_generators(0, [2, 3], [5, 6], 1), mc_samples=2)
    torch.testing.assert_close(a.noise[0][:, 1:], b.noise[0])
    d = 0.01 * torch.ones(3, 1, 2, 2)
    torch.testing.assert_close(a(d), a(d))
    s = build_objective(model, "latent", "l2_sample", x, xt, torch.zeros(3), gens())
    assert not torch.allclose(s.eps[0], s.z_target[0])  # z1 and z2 use different noise


# --- solver -------------------------------------------------------------------------------

def _config(**kw):
    from attacks.config import AttackConfig

    # the reference solver from cold starts (the paper's protocol): these tests pin scipy's
    # behaviour; the batched default is held to it in tests/test_attacks_batched.py
    base = dict(maxiter=500, maxfun=1000, init_scale=1e-3, solver="scipy", warm_start=())
    base.update(kw)
    return AttackConfig(**base).validate()


def _solve(model, x, xt, lams, similarity="kl", mode="latent", **cfg):
    from attacks.run import attack_problems

    P = x.shape[0]
    o = attack_problems(model, x, xt, torch.as_tensor(lams, dtype=torch.float32), mode, similarity,
                        _config(**cfg), list(range(P)), list(range(100, 100 + P)), seed=0)
    return o.result, o.objective, o.distance


@pytest.mark.parametrize("similarity", ["kl", "l2_mean", "w2"])
def test_lambda_zero_reaches_the_target_posterior(similarity):
    model = LinearGaussianVAE(V_scale=0.05)  # invertible W: q(z|x+d) = q(z|x^t) iff x + d = x^t
    x, xt = images(2, 10), images(2, 11)
    res, total, dist = _solve(model, x, xt, [0.0, 0.0], similarity)
    assert dist.max().item() < 1e-3
    torch.testing.assert_close(x + res.d, xt, atol=2e-3, rtol=0)


def test_huge_lambda_gives_no_distortion():
    model = LinearGaussianVAE()
    x, xt = images(2, 12), images(2, 13)
    res, total, dist = _solve(model, x, xt, [2.0**20, 2.0**20], "kl", init_scale=0.1)
    norms = torch.linalg.vector_norm(res.d.flatten(1), dim=1)
    assert norms.max().item() < 1e-5
    res0, _, _ = _solve(model, x, xt, [0.0, 0.0], "kl", init_scale=0.1)
    assert torch.linalg.vector_norm(res0.d.flatten(1), dim=1).min().item() > 0.1


@pytest.mark.parametrize("mode,similarity", [("latent", "kl"), ("latent", "l2_sample"), ("output", "elbo")])
def test_box_is_respected_at_every_evaluation_and_objective_decreases(mode, similarity):
    from attacks.objectives import build_objective
    from attacks.run import problem_generators
    from attacks.solvers import ScipyLBFGSB

    model = LinearGaussianVAE()
    x, xt = images(3, 14, binary=True), images(3, 15)   # binary sources: many active bounds
    x[0] = 1.0 - xt[0].round()                            # a far-away target
    obj = build_objective(model, mode, similarity, x, xt, torch.tensor([0.0, 0.01, 1.0]),
                          problem_generators(0, [0, 1, 2], [3, 4, 5], 1))
    seen = []

    def wrapped(d, idx=None):
        xs = obj.x if idx is None else obj.x[list(idx)]
        seen.append((xs.double() + d.detach().double()))
        return obj(d, idx)

    lower, upper = -x.double(), 1.0 - x.double()
    d0 = torch.zeros_like(x)
    res = ScipyLBFGSB().solve(wrapped, d0, lower, upper, _config())
    assert len(seen) > 10
    tol = 1e-6  # float32 rounding of d on the torch side; scipy's float64 iterate is in the box
    for xa in seen:
        assert xa.min().item() >= -tol and xa.max().item() <= 1 + tol
    xa = x.double() + res.d.double()
    assert xa.min().item() >= -tol and xa.max().item() <= 1 + tol
    with torch.no_grad():
        start, end = obj(d0), obj(res.d)
    assert (end < start - 1e-3).all(), (start, end)
    np.testing.assert_allclose(res.objective, end.numpy(), rtol=1e-4, atol=1e-5)
    assert (res.iterations > 0).all()


# --- protocol -----------------------------------------------------------------------------

def test_lambda_grid():
    g = lambda_grid()
    assert len(g) == 51
    assert g[0] == 0.0 and g[1] == 2.0**-20 and g[-1] == 2.0**20
    assert np.all(np.diff(g) > 0)
    np.testing.assert_allclose(np.log2(g[1:]), np.linspace(-20, 20, 50))
    assert lambda_grid(3) == [0.0, 2.0**-20, 2.0**20]


def test_sample_pairs_deterministic_and_distinct():
    held = list(range(100, 140))
    a = sample_pairs(held, n_pairs=10, seed=3)
    assert a == sample_pairs(held, n_pairs=10, seed=3)
    assert a != sample_pairs(held, n_pairs=10, seed=4)
    assert len(a) == 10 and len(set(a)) == 10
    assert all(s != t and s in held and t in held for s, t in a)
    small = sample_pairs([5, 6], n_pairs=4, seed=0)
    assert all(p in {(5, 6), (6, 5)} for p in small) and len(small) == 4
    with pytest.raises(ValueError):
        sample_pairs([5, 5], n_pairs=1)


def test_select_lambda_hand_cases():
    lams = [0.0, 1.0, 2.0, 4.0, 8.0]
    # mean over the positive λ = 3.75; above: 4, 5, 5 at λ=2,4,8 -> smallest 4 -> λ = 2 (index 2)
    assert select_lambda(lams, [1.0, 1.0, 4.0, 5.0, 4.0 + 1.0]) == 2
    # the mean leaves λ = 0 out: over all λ it would be 2.25 (-> Δ 3 at λ=2), over the positive
    # ones it is 3 (-> Δ 4 at λ=4)
    assert select_lambda([0.0, 1.0, 2.0, 4.0], [0.0, 2.0, 3.0, 4.0]) == 3
    # ties in the smallest value above the mean go to the largest λ: mean 2.5, above: 3,3,3
    assert select_lambda(lams, [1.0, 2.0, 3.0, 3.0, 3.0]) == 4
    d = [0.5, 3.0, 3.0, 1.0, 0.5]  # mean 1.875 -> {3.0 at λ=1, 2} -> largest λ -> index 2
    assert select_lambda(lams, d) == 2
    # all equal: nothing strictly above the mean -> largest Δ, ties -> largest λ
    assert select_lambda(lams, [2.0] * 5) == 4
    # NaN attacks ignored: finite positive-λ [2, 9], mean 5.5 -> 9 at λ=8
    assert select_lambda(lams, [1.0, float("nan"), 2.0, float("nan"), 9.0]) == 4
    # no positive λ: the mean is over all of them
    assert select_lambda([0.0], [3.0]) == 0
    # order of the inputs does not matter
    assert select_lambda([8.0, 0.0, 4.0], [5.0, 1.0, 5.0]) == 0
    with pytest.raises(ValueError):
        select_lambda(lams, [float("nan")] * 5)
    with pytest.raises(ValueError):
        select_lambda(lams, [1.0])


def test_auddc_hand_cases():
    # points (x, y): (0.0, 1.0), (0.5, 0.5), (0.25, 0.8) and one with x > 1 which is dropped
    x = [0.0, 0.5, 0.25, 1.5]
    y = [1.0, 0.5, 0.8, -3.0]
    # sorted: (0,1) (0.25,0.8) (0.5,0.5) + (0.5,0.5) + (1,0.5)
    area = 0.25 * (1.0 + 0.8) / 2 + 0.25 * (0.8 + 0.5) / 2 + 0 + 0.5 * 0.5
    assert auddc_from_points(x, y) == pytest.approx(area)
    # min y is not the last point: (0,1) (0.2,0.1) (0.4,0.6) + (0.4,0.1) + (1,0.1)
    area2 = 0.2 * 1.1 / 2 + 0.2 * 0.7 / 2 + 0.0 + 0.6 * 0.1
    assert auddc_from_points([0.4, 0.0, 0.2], [0.6, 1.0, 0.1]) == pytest.approx(area2)
    # one point: (0.3, 0.4) + (0.3, 0.4) + (1, 0.4) -> 0.7 * 0.4
    assert auddc_from_points([0.3], [0.4]) == pytest.approx(0.28)
    assert math.isnan(auddc_from_points([1.5, -0.1], [0.0, 0.0]))
    # from the metrics: ‖x−x^t‖=2, ‖rec(x)−x^t‖=3, ‖rec(x^t)−x^t‖=1
    # attacks: ‖d‖ = 0, 1, 4 and ‖rec(x*)−x^t‖ = 3, 2, 1 -> x = 0, .5, 2; y = 1, .5, 0
    px, py = ddc_points([0.0, 1.0, 4.0], [3.0, 2.0, 1.0], 2.0, 3.0, 1.0)
    np.testing.assert_allclose(px, [0.0, 0.5, 2.0])
    np.testing.assert_allclose(py, [1.0, 0.5, 0.0])
    assert auddc([0.0, 1.0, 4.0], [3.0, 2.0, 1.0], 2.0, 3.0, 1.0) == pytest.approx(0.5 * 1.5 / 2 + 0.5 * 0.5)


def test_auddc_is_not_reported_when_the_model_reconstructs_source_and_target_alike():
    from attacks.metrics import auddc_with_reason

    value, reason = auddc_with_reason([0.0, 1.0, 4.0], [3.0, 2.0, 1.0], 2.0, 3.0, 1.0)
    assert value == pytest.approx(0.5 * 1.5 / 2 + 0.5 * 0.5) and reason == ""
    # a mean-image decoder: rec(x) = rec(x^t), so the y-axis would divide by 0 (or by noise)
    for rec_source in (1.0, 1.0 + 0.04 * 2.0):
        value, reason = auddc_with_reason([0.0, 1.0], [1.0, 1.0], 2.0, rec_source, 1.0)
        assert math.isnan(value) and "reconstructs source and target alike" in reason
    value, reason = auddc_with_reason([3.0], [1.0], 2.0, 3.0, 1.0)   # every distortion beyond ‖x − xᵗ‖
    assert math.isnan(value) and "within" in reason


# --- config -------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value", [
    ("n_pairs", 0), ("n_lambdas", 0), ("modes", ("latent", "sideways")), ("similarities", ("cosine",)),
    ("solver", "adam"), ("memory", 0), ("factr", -1.0), ("pgtol", float("nan")), ("maxiter", 0),
    ("output_mc_samples", 0), ("lams", (1.0, -2.0)), ("seed", -1), ("lam_exponents", (5.0, -5.0)),
])
def test_config_validate_names_the_bad_field(field, value):
    from attacks.config import AttackConfig
    from models.errors import ConfigError, UserError

    with pytest.raises(ConfigError, match=field) as info:
        AttackConfig(**{field: value}).validate()
    assert isinstance(info.value, UserError)


def test_config_defaults_and_tasks():
    from attacks.config import AttackConfig

    cfg = AttackConfig().validate()
    assert (cfg.memory, cfg.factr, cfg.n_pairs) == (25, 10.0, 10)
    assert cfg.resolved_lams() == lambda_grid()
    assert AttackConfig(similarities=("kl", "w2")).tasks() == [("latent", "kl"), ("latent", "w2"), ("output", "elbo")]
    assert AttackConfig(lams=(0.0, 1.0)).resolved_lams() == [0.0, 1.0]


# --- driver -------------------------------------------------------------------------------

def test_run_attacks_rows_gallery_and_batch_independence(monkeypatch):
    import attacks.run
    from attacks.run import ATTACK_COLUMNS, GALLERY_PANELS, run_attacks

    solved = []  # what the real solver returned (a spy: it still solves)
    get_solver = attacks.run.get_solver

    def spied(name):
        solver = get_solver(name)

        class Spy:
            def solve(self, *args, **kwargs):
                solved.append(solver.solve(*args, **kwargs))
                return solved[-1]
        return Spy()

    monkeypatch.setattr(attacks.run, "get_solver", spied)
    model = LinearGaussianVAE()
    model.train()
    src, tgt = images(2, 20), images(2, 21)
    lams = [0.0, 0.25, 1.0, 4.0, 16.0]
    cfg = _config(lams=tuple(lams))
    rows, gallery = run_attacks(model, src, tgt, [7, 8], [1, 2], [3, 4], lams, "latent", "kl", cfg, seed=5)
    assert model.training  # restored
    assert len(rows) == 10 and all(tuple(r) == ATTACK_COLUMNS for r in rows)
    # the evaluations column is the solver's count, problem by problem (--plan averages it)
    (result,) = solved
    assert [r["evaluations"] for r in rows] == [int(n) for n in result.evaluations]
    assert all(isinstance(r["evaluations"], int) and r["evaluations"] >= max(1, r["iterations"]) for r in rows)
    for pair in (7, 8):
        pr = [r for r in rows if r["pair"] == pair]
        assert [r["lam"] for r in pr] == lams
        assert sum(r["selected"] for r in pr) == 1
        assert len({r["auddc"] for r in pr}) == 1
        sel = select_lambda([r["lam"] for r in pr], [r["objective"] for r in pr])
        assert pr[sel]["selected"]
        want, why = auddc_with_reason([r["distortion_l2"] for r in pr], [r["adv_target_l2"] for r in pr],
                                      pr[0]["source_target_l2"], pr[0]["rec_source_target_l2"],
                                      pr[0]["rec_target_target_l2"])
        assert pr[0]["auddc"] == pytest.approx(want, nan_ok=True) and pr[0]["auddc_reason"] == why
        # objective = distance + λ‖d‖; the distortion shrinks as λ grows
        for r in pr:
            assert r["objective"] == pytest.approx(r["distance"] + r["lam"] * r["distortion_l2"], rel=1e-4, abs=1e-6)
        assert pr[0]["distortion_l2"] > pr[-1]["distortion_l2"]
    r0 = rows[0]
    assert r0["source_target_l2"] == pytest.approx(float(torch.linalg.vector_norm(src[0] - tgt[0])), rel=1e-5)
    assert isinstance(r0["iterations"], int) and r0["solver"] == "scipy" and r0["seconds"] > 0
    assert len(gallery) == 2
    for gal in gallery:
        assert (gal["channels"], gal["height"], gal["width"]) == (1, 2, 2)
        for k in GALLERY_PANELS:
            assert gal[k].dtype == np.uint8 and gal[k].shape == (2, 2, 1)
    np.testing.assert_array_equal(gallery[0]["input"][..., 0], (src[0, 0] * 255).round().byte().numpy())
    # the same pair alone gives the same results (noise depends on the pair, not the batch)
    rows_b, _ = run_attacks(model, src[1:], tgt[1:], [8], [2], [4], lams, "latent", "kl", cfg, seed=5)
    for a, b in zip(rows[5:], rows_b):
        for k in ATTACK_COLUMNS:
            if k != "seconds":  # batched metric passes may differ by float32 rounding
                assert a[k] == (pytest.approx(b[k], rel=1e-5, abs=1e-7) if isinstance(b[k], float) else b[k]), k


def test_run_attacks_output_mode_lowers_target_nll():
    from attacks.run import run_attacks

    model = LinearGaussianVAE(V_scale=0.05)
    src, tgt = images(1, 30), images(1, 31, binary=True)
    lams = [0.0, 2.0**20]
    rows, gallery = run_attacks(model, src, tgt, [0], [0], [1], lams, "output", "elbo", _config(lams=tuple(lams)))
    free, clamped = rows
    assert free["similarity"] == "elbo" and free["mode"] == "output"
    assert free["distance"] < clamped["distance"]
    assert free["target_nll"] < clamped["target_nll"] + 1.0  # one sample each; loose
    assert clamped["distortion_l2"] < 1e-4
