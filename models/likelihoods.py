"""p(x | z): turn the decoder's raw output into likelihood parameters and score pixels.

x is always in the pixel range [0, 1] (the encoder's [-1, 1] scaling is an input convention
only). ``params`` is what ``model.decode`` returns: logits for Bernoulli, means in (0, 1) for
Gaussian (a sigmoid keeps the mean in the pixel range, as a reconstruction must be).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.config import ModelConfig


class BernoulliLikelihood(nn.Module):
    """Independent Bernoulli per pixel on logits (dSprites is binary)."""

    def params(self, raw: Tensor) -> Tensor:
        return raw

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x | z) summed over pixels: [B]."""
        return -F.binary_cross_entropy_with_logits(params, x, reduction="none").flatten(1).sum(1)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)


class GaussianLikelihood(nn.Module):
    """Independent Gaussian per pixel with one scale: fixed (config) or a learned scalar."""

    def __init__(self, scale: float | None):
        super().__init__()
        self.fixed_log_scale = None if scale is None else math.log(scale)
        # Learned: one log-std for all pixels, initialised at std 1 (the optimiser shrinks it).
        self.log_scale = nn.Parameter(torch.zeros(())) if scale is None else None

    def params(self, raw: Tensor) -> Tensor:
        return torch.sigmoid(raw)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        log_scale = self.log_scale if self.log_scale is not None else \
            torch.tensor(self.fixed_log_scale, dtype=params.dtype, device=params.device)
        lp = -0.5 * math.log(2 * math.pi) - log_scale - 0.5 * ((x - params) * torch.exp(-log_scale)) ** 2
        return lp.flatten(1).sum(1)

    def mean(self, params: Tensor) -> Tensor:
        return params


def build_likelihood(cfg: ModelConfig) -> nn.Module:
    if cfg.likelihood == "bernoulli":
        return BernoulliLikelihood()
    return GaussianLikelihood(cfg.gaussian_scale)
