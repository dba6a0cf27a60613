"""p(x | z): turn the decoder's raw output into likelihood parameters and score pixels.

x is always in the pixel range [0, 1] (the encoder's [-1, 1] scaling is an input convention
only). ``params`` is what ``model.decode`` returns: logits for Bernoulli, means in (0, 1) for
Gaussian (a sigmoid keeps the mean in the pixel range, as a reconstruction must be).

Both add a fixed per-pixel ``offset`` to the decoder's raw output before their link function:
the logit of the training data's mean image once ``set_mean_image`` was called (zeros before),
so an untrained decoder already predicts the mean image and learns only what differs from it.
Burda et al. (2016) initialise the output bias the same way. Without it, short dSprites runs
often spend their budget on the mean-image plateau (``benchmarks/training_health.py``; the
README's "Training" section has its figures).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.config import ModelConfig


class _Likelihood(nn.Module):
    """What both likelihoods share: the mean-image offset on the link scale."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.register_buffer("offset", torch.zeros(shape))

    @torch.no_grad()
    def set_mean_image(self, mean_image: Tensor) -> None:
        """Offset the raw output by logit(mean_image) (pixels in [0, 1], shape [C, H, W])."""
        if tuple(mean_image.shape) != tuple(self.offset.shape):
            raise ValueError(f"mean image of shape {tuple(mean_image.shape)}, the model's images "
                             f"are {tuple(self.offset.shape)}")
        p = mean_image.to(self.offset).clamp(MEAN_CLAMP, 1.0 - MEAN_CLAMP)
        self.offset.copy_(torch.log(p) - torch.log1p(-p))


# A pixel that is 0 (or 1) in every training image would get an infinite logit; 1e-4 keeps the
# offset finite (|logit| <= 9.2) and costs at most 1e-4 nats per such pixel.
MEAN_CLAMP = 1e-4


class BernoulliLikelihood(_Likelihood):
    """Independent Bernoulli per pixel on logits (dSprites is binary)."""

    def params(self, raw: Tensor) -> Tensor:
        return raw + self.offset

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """log p(x | z) summed over pixels: [B]."""
        return -F.binary_cross_entropy_with_logits(params, x, reduction="none").flatten(1).sum(1)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)


class GaussianLikelihood(_Likelihood):
    """Independent Gaussian per pixel with one scale: fixed (config) or a learned scalar."""

    def __init__(self, shape: tuple[int, int, int], scale: float | None):
        super().__init__(shape)
        self.fixed_log_scale = None if scale is None else math.log(scale)
        # Learned: one log-std for all pixels, initialised at std 1 (the optimiser shrinks it).
        self.log_scale = nn.Parameter(torch.zeros(())) if scale is None else None

    def params(self, raw: Tensor) -> Tensor:
        return torch.sigmoid(raw + self.offset)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        log_scale = self.log_scale if self.log_scale is not None else \
            torch.tensor(self.fixed_log_scale, dtype=params.dtype, device=params.device)
        lp = -0.5 * math.log(2 * math.pi) - log_scale - 0.5 * ((x - params) * torch.exp(-log_scale)) ** 2
        return lp.flatten(1).sum(1)

    def mean(self, params: Tensor) -> Tensor:
        return params


def build_likelihood(cfg: ModelConfig) -> nn.Module:
    shape = (cfg.channels, cfg.image_size, cfg.image_size)
    if cfg.likelihood == "bernoulli":
        return BernoulliLikelihood(shape)
    return GaussianLikelihood(shape, cfg.gaussian_scale)
