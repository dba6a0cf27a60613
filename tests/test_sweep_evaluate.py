"""The sweep's evaluation maths against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sweep.train.evaluate import mig


def _grid(sizes, repeats):
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in sizes], indexing="ij"), -1).reshape(-1, len(sizes))
    return np.repeat(grid, repeats, axis=0)


# The estimator scores each sample under the other images' posteriors: with n images per factor
# value, the marginal entropy reads about 1/n nats high, so the exact answers below need enough
# repeats (n >= 48 keeps the bias below 0.02 of log K).


def test_mig_is_one_when_each_factor_has_its_own_exact_latent():
    factors = _grid((8, 4), repeats=12)
    means = torch.stack([torch.as_tensor(factors[:, 0], dtype=torch.float64),
                         torch.as_tensor(factors[:, 1], dtype=torch.float64) * 3.0,
                         torch.zeros(len(factors), dtype=torch.float64)], dim=1)
    # near-deterministic in the two informative dims; the third is the prior N(0, 1) for all
    logvars = torch.tensor([math.log(1e-6), math.log(1e-6), 0.0], dtype=torch.float64).expand_as(means)
    score = mig(means, logvars, factors, [8, 4], ["posX", "posY"])
    # I(z_k; v_k) = H(v_k) = log K_k and I(z_j; v_k) = 0 otherwise, so every gap is log K_k.
    assert abs(score - 1.0) < 0.02


def test_mig_is_zero_when_the_latents_ignore_the_factors():
    factors = _grid((8, 4), repeats=6)
    generator = torch.Generator().manual_seed(1)
    means = torch.randn(len(factors), 3, generator=generator, dtype=torch.float64) * 0.01
    logvars = torch.zeros_like(means)  # every posterior is N(~0, 1): nothing about the factors
    assert mig(means, logvars, factors, [8, 4], ["posX", "posY"]) < 0.05


def test_mig_of_one_latent_shared_by_two_factors_is_the_closed_form():
    """z = v0 + 8 v1 encodes both factors in one dim: I(z; v0) = log 8, I(z; v1) = log 4, and no
    second dim carries either, so the gaps are log 8 and log 4 and MIG = 1 - but a second dim
    that copies z halves nothing: it makes both gaps 0."""
    factors = _grid((8, 4), repeats=12)
    code = torch.as_tensor(factors[:, 0] + 8 * factors[:, 1], dtype=torch.float64)
    logvars = torch.full((len(factors), 2), math.log(1e-6), dtype=torch.float64)
    copied = torch.stack([code, code * 2.0], dim=1)
    assert mig(copied, logvars, factors, [8, 4], ["a", "b"]) < 0.02
    lone = torch.stack([code, torch.zeros_like(code)], dim=1)
    assert abs(mig(lone, logvars, factors, [8, 4], ["a", "b"]) - 1.0) < 0.02


def test_shape_factor_is_left_out_as_in_chen_et_al():
    factors = _grid((3, 8), repeats=16)
    means = torch.stack([torch.as_tensor(factors[:, 1], dtype=torch.float64),
                         torch.zeros(len(factors), dtype=torch.float64)], 1)
    logvars = torch.full_like(means, math.log(1e-6))
    assert abs(mig(means, logvars, factors, [3, 8], ["shape", "posX"]) - 1.0) < 0.02


def _dsprites_like_factors(n, seed):
    """n random points of a scale (6) x orientation (40) x posX (32) x posY (32) grid."""
    rng = np.random.default_rng(seed)
    sizes = [6, 40, 32, 32]
    return np.stack([rng.integers(0, k, n) for k in sizes], axis=1), sizes


def test_mig_of_a_perfect_code_is_near_one_on_a_small_sample():
    """One latent per factor, its value plus narrow noise; two latents carry nothing. The answer
    is 1 whatever the sample size; 512 images leave ~16 per position value."""
    factors, sizes = _dsprites_like_factors(512, seed=0)
    generator = torch.Generator().manual_seed(0)
    codes = torch.as_tensor(factors / (np.array(sizes) - 1.0), dtype=torch.float64) * 4 - 2
    means = torch.cat([codes, torch.randn(len(codes), 2, generator=generator, dtype=torch.float64)], 1)
    logvars = torch.full_like(means, 2 * math.log(0.01))
    score = mig(means, logvars, factors, sizes, ["scale", "orientation", "posX", "posY"])
    assert score > 0.9, score


@pytest.mark.parametrize("n", [512, 4096])
def test_mig_of_a_code_independent_of_the_factors_is_near_zero(n):
    """Posteriors whose means ignore the factors: I(z; v) = 0 for every pair. One latent is sharp
    (std 0.01), the others as wide as their spread, as in a VAE with one active unit. Scoring a
    sample under a mixture that holds its own sharp posterior made this 0.44 at n = 512 and 0.13
    at n = 4096: the sharp latent seemed to identify each image, hence its factor values."""
    factors, sizes = _dsprites_like_factors(n, seed=1)
    generator = torch.Generator().manual_seed(1)
    means = torch.randn(n, 6, generator=generator, dtype=torch.float64)
    stds = torch.tensor([0.01, 1, 1, 1, 1, 1], dtype=torch.float64)
    logvars = (2 * stds.log()).expand_as(means)
    score = mig(means, logvars, factors, sizes, ["scale", "orientation", "posX", "posY"])
    assert score < 0.05, score


class _Reconstructs:
    """A stand-in model whose reconstruction of x is a fixed function of it."""

    def __init__(self, fn):
        self.reconstruct = fn


def test_recon_r2_against_closed_forms():
    """1 - sum ||rec(x) - x||^2 / sum ||m - x||^2, over batches: 1 for perfect reconstructions,
    0 for the mean image m, 1 - a^2 for rec = x + a (m - x), the same whatever the batch size."""
    from sweep.train.evaluate import recon_r2

    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 1, 4, 4, generator=g)
    m = torch.rand(1, 4, 4, generator=g)
    assert recon_r2(_Reconstructs(lambda b: b), x, m, batch_size=3) == pytest.approx(1.0)
    assert recon_r2(_Reconstructs(lambda b: m.expand_as(b)), x, m, batch_size=3) == pytest.approx(0.0, abs=1e-12)
    for a in (0.5, 2.0):
        shrink = _Reconstructs(lambda b, a=a: b + a * (m - b))
        assert recon_r2(shrink, x, m, batch_size=3) == pytest.approx(1 - a * a, rel=1e-6)
        assert recon_r2(shrink, x, m, batch_size=10) == pytest.approx(recon_r2(shrink, x, m, batch_size=4))
