"""Diagonal Gaussians, the only latent distribution in the project.

Kept as a tiny value object (mean, logvar) rather than torch.distributions.Normal so attacks and
objectives can read the parameters directly, sample with a given eps, and get analytic KLs
between two posteriors without going through the distribution registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class Gaussian:
    """N(mean, diag(exp(logvar))); tensors [..., D], the last axis is the latent dimension."""

    mean: Tensor
    logvar: Tensor

    @property
    def var(self) -> Tensor:
        return self.logvar.exp()

    @property
    def std(self) -> Tensor:
        return (0.5 * self.logvar).exp()

    def sample(self, eps: Tensor | None = None) -> Tensor:
        """Reparameterised draw mean + std * eps; eps ~ N(0, I) unless given."""
        if eps is None:
            eps = torch.randn_like(self.mean)
        return self.mean + self.std * eps

    def log_prob_dims(self, z: Tensor) -> Tensor:
        """Per-dimension log density, same shape as z (broadcast against the parameters)."""
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mean) ** 2 * torch.exp(-self.logvar))

    def log_prob(self, z: Tensor) -> Tensor:
        """Log density summed over the last (latent) axis: [...]."""
        return self.log_prob_dims(z).sum(-1)

    def kl(self, other: "Gaussian") -> Tensor:
        """Analytic KL(self || other) summed over the last axis."""
        return 0.5 * (other.logvar - self.logvar
                      + (self.var + (self.mean - other.mean) ** 2) * torch.exp(-other.logvar)
                      - 1.0).sum(-1)

    def kl_to_standard(self) -> Tensor:
        """Analytic KL(self || N(0, I)) summed over the last axis."""
        return 0.5 * (self.var + self.mean ** 2 - 1.0 - self.logvar).sum(-1)

    def detach(self) -> "Gaussian":
        return Gaussian(self.mean.detach(), self.logvar.detach())

    @staticmethod
    def standard_like(z: Tensor) -> "Gaussian":
        """N(0, I) with the shape, dtype and device of z."""
        zeros = torch.zeros_like(z)
        return Gaussian(zeros, zeros)
