"""The sweep's evaluation maths against closed forms."""

from __future__ import annotations

import math

import numpy as np
import torch

from sweep.evaluate import mig


def _grid(sizes, repeats):
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in sizes], indexing="ij"), -1).reshape(-1, len(sizes))
    return np.repeat(grid, repeats, axis=0)


def test_mig_is_one_when_each_factor_has_its_own_exact_latent():
    factors = _grid((8, 4), repeats=3)
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
    factors = _grid((8, 4), repeats=2)
    code = torch.as_tensor(factors[:, 0] + 8 * factors[:, 1], dtype=torch.float64)
    logvars = torch.full((len(factors), 2), math.log(1e-6), dtype=torch.float64)
    copied = torch.stack([code, code * 2.0], dim=1)
    assert mig(copied, logvars, factors, [8, 4], ["a", "b"]) < 0.02
    lone = torch.stack([code, torch.zeros_like(code)], dim=1)
    assert abs(mig(lone, logvars, factors, [8, 4], ["a", "b"]) - 1.0) < 0.02


def test_shape_factor_is_left_out_as_in_chen_et_al():
    factors = _grid((3, 8), repeats=2)
    means = torch.stack([torch.as_tensor(factors[:, 1], dtype=torch.float64),
                         torch.zeros(len(factors), dtype=torch.float64)], 1)
    logvars = torch.full_like(means, math.log(1e-6))
    assert abs(mig(means, logvars, factors, [3, 8], ["shape", "posX"]) - 1.0) < 0.02
