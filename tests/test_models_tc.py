"""TC estimators (MWS, MSS) against a brute-force aggregate posterior on small synthetic data.

The "dataset" is N posteriors q(z|u_n) given explicitly, so q(z) = (1/N) sum_n q(z|u_n) and its
marginals can be computed exactly at any z (brute force over all N points)."""

import math

import pytest
import torch
from torch.distributions import Normal

from models.distributions import Gaussian
from models.tc import aggregate_log_densities, decompose_top_kl, log_weights, mss_log_weights

GRID = torch.linspace(-2.0, 2.0, 4)


def _grid_means():
    """A 4x4 product grid: q(z) factorises exactly, TC = 0 by construction."""
    return torch.stack(torch.meshgrid(GRID, GRID, indexing="ij"), -1).reshape(-1, 2)


def _line_means():
    """16 points on the diagonal: strongly dependent dimensions, TC > 0."""
    return torch.stack([torch.linspace(-2.0, 2.0, 16)] * 2, 1)


def _brute_force_tc(mu, std, samples=100_000, seed=0):
    """E_{q(z)}[log q(z) - sum_d log q(z_d)] with exact (all-N) densities, MC over z."""
    g = torch.Generator().manual_seed(seed)
    n = torch.randint(mu.shape[0], (samples,), generator=g)
    z = mu[n] + std * torch.randn(samples, mu.shape[1], generator=g)
    ld = Normal(mu[None], std).log_prob(z[:, None])                       # [S, N, D]
    log_qz = torch.logsumexp(ld.sum(2), 1) - math.log(mu.shape[0])
    log_qzd = (torch.logsumexp(ld, 1) - math.log(mu.shape[0])).sum(1)
    return (log_qz - log_qzd).mean().item()


def _estimated_tc(mu, std, batch, estimator, repeats=600, seed=0):
    """Average estimator TC over uniform batches of distinct points (as a data loader draws)."""
    torch.manual_seed(seed)
    n, total = mu.shape[0], 0.0
    for _ in range(repeats):
        idx = torch.randperm(n)[:batch]
        q = Gaussian(mu[idx], torch.full_like(mu[idx], 2 * math.log(std)))
        log_qz, log_qzd = aggregate_log_densities(q.sample(), q, n, estimator)
        total += (log_qz - log_qzd).mean().item()
    return total / repeats


@pytest.mark.parametrize("means,std,tol", [
    (_line_means, 0.3, 0.08), (_line_means, 1.0, 0.05), (_grid_means, 0.3, 0.08), (_grid_means, 1.0, 0.05)])
def test_mss_agrees_with_brute_force(means, std, tol):
    mu = means()
    truth = _brute_force_tc(mu, std)
    assert abs(_estimated_tc(mu, std, batch=16, estimator="mss") - truth) < tol


def test_tc_is_zero_for_independent_dims():
    mu = _grid_means()
    assert abs(_brute_force_tc(mu, 1.0)) < 0.02
    assert abs(_estimated_tc(mu, 1.0, batch=12, estimator="mss")) < 0.05


def test_mss_sees_dependence():
    assert _estimated_tc(_line_means(), 0.3, batch=12, estimator="mss") > 0.8


def test_mss_weight_matrix_from_the_derivation():
    b, n = 5, 40
    m = b - 1
    w = mss_log_weights(b, n, torch.zeros(())).exp().double()
    expected = torch.full((b, b), 1.0 / m, dtype=torch.float64)
    for i in range(b):                 # written element by element, not with strided views
        expected[i, (i + 1) % b] = (n - m) / (n * m)
        expected[i, i] = 1.0 / n
    torch.testing.assert_close(w, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(w.sum(1), torch.ones(b, dtype=torch.float64))
    # the reference code's bug puts 1/N down a column; ours has it only on the diagonal
    assert torch.isclose(w[:, 0], torch.tensor(1.0 / n, dtype=torch.float64)).sum() == 1


def test_identical_posteriors_mss_exact_mws_biased():
    """All q(z|u_n) equal and factorised: true TC = 0. MSS is exact (its weights sum to one);
    MWS is off by exactly (D-1) log N, its documented bias in this regime."""
    n, b, d = 1000, 8, 4
    q = Gaussian(torch.randn(1, d).expand(b, d), torch.randn(1, d).expand(b, d))
    z = q.sample()
    for est, bias in (("mss", 0.0), ("mws", (d - 1) * math.log(n))):
        log_qz, log_qzd = aggregate_log_densities(z, q, n, est)
        torch.testing.assert_close(log_qz - log_qzd, torch.full((b,), bias), atol=1e-4, rtol=0)


def test_mws_is_chens_estimator():
    """Chen et al.'s MWS: exp(log q_hat(z_i)) = (1/(N B)) sum_j q(z_i|u_j). Over random batches
    that contain the sample's own point, its mean is the lower bound
    (1/N) [q(z_i|u_i)/B + (B-1)/B * mean_{n != i} q(z_i|u_n)]."""
    torch.manual_seed(1)
    mu, std, b = _line_means(), 0.7, 6
    n = mu.shape[0]
    z = mu[0] + std * torch.randn(2)                       # a sample of data point 0
    dens = Normal(mu, std).log_prob(z).sum(1).exp()        # q(z | u_n) for all n
    bound = (dens[0] / b + (b - 1) / b * dens[1:].mean()) / n
    vals = []
    for _ in range(3000):
        idx = torch.cat([torch.tensor([0]), 1 + torch.randperm(n - 1)[: b - 1]])
        q = Gaussian(mu[idx], torch.full_like(mu[idx], 2 * math.log(std)))
        zb = torch.cat([z[None], q.sample()[1:]])
        log_qz, _ = aggregate_log_densities(zb, q, n, "mws")
        vals.append(log_qz[0].exp().item())
    assert abs(sum(vals) / len(vals) / bound.item() - 1) < 0.03


def test_decomposition_sums_to_log_ratio_per_sample():
    torch.manual_seed(2)
    q = Gaussian(torch.randn(7, 3), torch.randn(7, 3))
    z = q.sample()
    ref = Normal(q.mean, q.std).log_prob(z).sum(1) - Normal(0.0, 1.0).log_prob(z).sum(1)
    for est in ("mws", "mss"):
        top = decompose_top_kl(z, q, 100, est)
        torch.testing.assert_close(top.index_code_mi + top.tc + top.dim_kl, ref)


def test_mss_rejects_batches_it_cannot_weight():
    from models.errors import ConfigError
    with pytest.raises(ConfigError, match="dataset_size"):
        mss_log_weights(10, 5, torch.zeros(()))
    with pytest.raises(ValueError):
        mss_log_weights(1, 5, torch.zeros(()))


def _naive_weights(b, n, estimator):
    """The weight matrix of the module docstring, float64."""
    if estimator == "mws":
        return torch.full((b, b), 1.0 / (b * n), dtype=torch.float64)
    m = b - 1
    w = torch.full((b, b), 1.0 / m, dtype=torch.float64)
    i = torch.arange(b)
    w[i, (i + 1) % b] = (n - m) / (n * m)
    w[i, i] = 1.0 / n
    return w


def _naive_aggregate(z, mean, logvar, n, estimator, grad_out, block=64):
    """(log q(z_i), log prod_d q(z_{i,d})) and the gradients of <grad_out, both> with respect to
    (z, mean, logvar), from the explicit [rows, B, D] Gaussian log densities and torch.logsumexp,
    over blocks of rows so that B = 2048 fits in memory."""
    logw = _naive_weights(z.shape[0], n, estimator).log()
    mean, logvar = mean.detach().requires_grad_(), logvar.detach().requires_grad_()
    outs, grads_z = [], []
    for i in range(0, z.shape[0], block):
        zi = z[i:i + block].detach().requires_grad_()
        ld = -0.5 * (math.log(2 * math.pi) + logvar[None] + (zi[:, None] - mean[None]) ** 2 / logvar.exp()[None])
        wi = logw[i:i + block]
        out = (torch.logsumexp(wi + ld.sum(2), 1), torch.logsumexp(wi[..., None] + ld, 1).sum(1))
        ((out[0] * grad_out[0][i:i + block]).sum() + (out[1] * grad_out[1][i:i + block]).sum()).backward()
        outs.append(torch.stack([o.detach() for o in out]))
        grads_z.append(zi.grad)
    return torch.cat(outs, 1), (torch.cat(grads_z), mean.grad, logvar.grad)


def _rel_err(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("estimator", ["mws", "mss"])
@pytest.mark.parametrize("b", [2, 256, 2048])
def test_aggregate_densities_match_the_naive_computation(b, estimator):
    """Values and gradients (float64) against the explicit [B, B, D] computation, for posteriors
    as a trained encoder gives (narrow active dimensions, collapsed ones at the prior) and a few
    samples far from every posterior (where most exp arguments underflow)."""
    g = torch.Generator().manual_seed(b)
    d, n = 10, 737_280
    mean = torch.randn(b, d, generator=g, dtype=torch.float64)
    logvar = torch.cat([-6 + torch.randn(b, 5, generator=g, dtype=torch.float64),
                        0.1 * torch.randn(b, d - 5, generator=g, dtype=torch.float64)], 1)
    z = mean + (0.5 * logvar).exp() * torch.randn(b, d, generator=g, dtype=torch.float64)
    z[: max(1, b // 100)] += 8.0
    grad_out = torch.randn(2, b, generator=g, dtype=torch.float64)
    expected, expected_grads = _naive_aggregate(z, mean, logvar, n, estimator, grad_out)

    inputs = [t.clone().requires_grad_() for t in (z, mean, logvar)]
    log_qz, log_prod = aggregate_log_densities(inputs[0], Gaussian(inputs[1], inputs[2]), n, estimator)
    grads = torch.autograd.grad([log_qz, log_prod], inputs, list(grad_out))
    assert _rel_err(log_qz, expected[0]) < 1e-5 and _rel_err(log_prod, expected[1]) < 1e-5
    for actual, wanted in zip(grads, expected_grads):
        assert _rel_err(actual, wanted) < 1e-5


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_log_weights_are_the_derivations_matrix(estimator):
    for b, n in ((2, 1), (2, 40), (7, 6), (7, 40)):   # n = b - 1: the MSS partner's weight is 0
        torch.testing.assert_close(log_weights(estimator, b, n, torch.zeros((), dtype=torch.float64)).exp(),
                                   _naive_weights(b, n, estimator), rtol=1e-12, atol=0)
