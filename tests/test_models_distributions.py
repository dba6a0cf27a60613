"""Gaussian log-densities, sampling and KLs against torch.distributions."""

import torch
from torch.distributions import Normal, kl_divergence

from models import Gaussian


def _pair(seed=0, shape=(5, 4)):
    g = torch.Generator().manual_seed(seed)
    mk = lambda: Gaussian(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    return mk(), mk(), torch.randn(shape, generator=g)


def _normal(q):
    return Normal(q.mean, q.logvar.mul(0.5).exp())


def test_log_prob_matches_torch():
    q, _, z = _pair()
    torch.testing.assert_close(q.log_prob_dims(z), _normal(q).log_prob(z))
    torch.testing.assert_close(q.log_prob(z), _normal(q).log_prob(z).sum(-1))


def test_kl_between_gaussians_matches_torch():
    q, p, _ = _pair(1)
    torch.testing.assert_close(q.kl(p), kl_divergence(_normal(q), _normal(p)).sum(-1))


def test_kl_to_standard_matches_torch():
    q, _, _ = _pair(2)
    std = Normal(torch.zeros_like(q.mean), torch.ones_like(q.mean))
    torch.testing.assert_close(q.kl_to_standard(), kl_divergence(_normal(q), std).sum(-1))
    torch.testing.assert_close(q.kl(Gaussian.standard_like(q.mean)), q.kl_to_standard())


def test_sample_with_given_eps_and_moments():
    q, _, eps = _pair(3)
    torch.testing.assert_close(q.sample(eps), q.mean + q.logvar.mul(0.5).exp() * eps)
    torch.testing.assert_close(q.std ** 2, q.var)
    big = Gaussian(torch.full((20000, 2), 1.5), torch.full((20000, 2), 2 * torch.log(torch.tensor(0.5)).item()))
    s = big.sample()
    assert abs(s.mean().item() - 1.5) < 0.02 and abs(s.std().item() - 0.5) < 0.02
