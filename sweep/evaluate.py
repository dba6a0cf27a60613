"""What the sweep measures on every trained model, on held-out data.

ELBO and its named parts, the noise robustness of the paper's Fig. 7, the weight norms of its
Table 1, and the MIG disentanglement score where the dataset has ground-truth factors.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import torch

# dSprites' shape factor is categorical and left out of MIG, as in Chen et al. (2018).
MIG_SKIPPED_FACTORS = ("shape", "color")


@torch.no_grad()
def elbo_parts(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Objective parts (nats per image, ELBO included) averaged over held-out data.

    The top layer's MI / TC / dimension-wise KL are re-estimated with minibatch-stratified
    sampling over the evaluation set, whatever estimator trained the model: MWS is a biased
    bound (it adds about (D - 1) log N nats to TC) and fine for gradients, not for reporting.
    """
    from models.tc import decompose_top_kl

    cfg = model.cfg
    totals: dict[str, float] = defaultdict(float)
    count = 0
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        if len(x) < 2:  # the TC estimators need at least two samples
            break
        eps = [torch.randn(len(x), cfg.z_dim, device=x.device) for _ in range(cfg.layers)]
        parts = dict(model.objective(x, eps=eps).parts)
        encoding = model.encode(x, eps=eps)
        top = decompose_top_kl(encoding.z[-1], encoding.posteriors[-1], len(images), "mss")
        parts.update(index_code_mi=top.index_code_mi.mean(), tc=top.tc.mean(), dim_kl=top.dim_kl.mean())
        for name, value in parts.items():
            totals[name] += float(value) * len(x)
        count += len(x)
    return {name: value / count for name, value in totals.items()}


@torch.no_grad()
def noise_loglik(model: torch.nn.Module, images: torch.Tensor, sigma: float) -> np.ndarray:
    """log p(x | z) of the clean images with z ~ q(z | x + eps), eps ~ N(0, sigma^2 I) added to
    the [-1, 1] encoder input (the paper's noise test)."""
    encoding = model.encode(images, input_noise_std=sigma)
    return model.log_likelihood(images, encoding.z).cpu().numpy().astype(np.float64)


def weight_norms(model: torch.nn.Module) -> dict[str, float]:
    return {"encoder_l2": float(model.encoder_l2()), "decoder_l2": float(model.decoder_l2())}


@torch.no_grad()
def top_layer_posterior(model: torch.nn.Module, images: torch.Tensor, batch_size: int):
    means, logvars = [], []
    for start in range(0, len(images), batch_size):
        top = model.encode(images[start : start + batch_size], sample=False).posteriors[-1]
        means.append(top.mean.cpu())
        logvars.append(top.logvar.cpu())
    return torch.cat(means).double(), torch.cat(logvars).double()


def mig(
    means: torch.Tensor,
    logvars: torch.Tensor,
    factors: np.ndarray,
    factor_sizes: list[int],
    factor_names: list[str],
    samples_per_image: int = 1,
    seed: int = 0,
) -> float:
    """Mutual information gap (Chen et al. 2018) with their estimator.

    H(z_j) is estimated from samples of the aggregate posterior q(z_j) = mean_n q(z_j | x_n);
    H(z_j | v_k) averages, over the values of factor k, the entropy of the aggregate posterior
    of the images with that value. For each factor the gap between the two largest
    I(z_j; v_k) is normalised by H(v_k) = log K_k; MIG is the mean over factors.
    """
    generator = torch.Generator().manual_seed(seed)
    stds = (0.5 * logvars).exp()
    samples = means + stds * torch.randn(
        (samples_per_image, *means.shape), generator=generator, dtype=means.dtype
    )  # [S, N, D]
    marginal_entropy = _aggregate_entropy(samples, means, stds)
    gaps = []
    for k, (name, size) in enumerate(zip(factor_names, factor_sizes)):
        if name in MIG_SKIPPED_FACTORS or size < 2:
            continue
        values = factors[:, k]
        conditional_entropy = torch.zeros_like(marginal_entropy)
        for value in np.unique(values):
            members = torch.as_tensor(np.flatnonzero(values == value))
            weight = len(members) / len(values)
            conditional_entropy += weight * _aggregate_entropy(
                samples[:, members], means[members], stds[members]
            )
        information = (marginal_entropy - conditional_entropy).clamp(min=0)
        top_two = torch.topk(information, k=min(2, len(information))).values
        gap = top_two[0] - (top_two[1] if len(top_two) > 1 else 0.0)
        gaps.append(float(gap) / math.log(size))
    return float(np.mean(gaps)) if gaps else float("nan")


def _aggregate_entropy(samples: torch.Tensor, means: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """Per-dimension entropy of the mixture mean_n N(means_n, stds_n^2), estimated at ``samples``
    drawn from that mixture: -E log q(z_j). Shapes: samples [S, M, D], means/stds [N, D]."""
    z_all = samples.reshape(-1, samples.shape[-1])
    log_mixture = []
    for chunk in z_all.split(256):  # bounded memory: chunk x N x D at a time
        z = chunk[:, None, :]
        log_density = (
            -0.5 * ((z - means[None]) / stds[None]) ** 2 - stds[None].log() - 0.5 * math.log(2 * math.pi)
        )
        log_mixture.append(torch.logsumexp(log_density, dim=1) - math.log(means.shape[0]))
    log_mixture = torch.cat(log_mixture)
    return -log_mixture.mean(dim=0)


def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    factors: np.ndarray | None,
    factor_sizes: list[int] | None,
    factor_names: list[str] | None,
    noise_sigmas: list[float],
    noise_samples: int,
    batch_size: int,
    seed: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The train row's evaluation columns, and the noise rows (one per sigma and image)."""
    model.eval()
    torch.manual_seed(seed)
    parts = elbo_parts(model, images, batch_size)
    layers = model.cfg.layers
    row: dict[str, Any] = {
        "elbo": parts["elbo"],
        "recon_loglik": parts["recon_loglik"],
        "kl_layers": [parts[f"kl_{i}"] for i in range(1, layers + 1)],
        "index_code_mi": parts["index_code_mi"],
        "tc": parts["tc"],
        "dim_kl": parts["dim_kl"],
        **weight_norms(model),
    }

    noise_rows = []
    subset = images[:noise_samples]
    clean = noise_loglik(model, subset, 0.0)
    row["clean_loglik_mean"] = float(clean.mean())
    for sigma in noise_sigmas:
        values = noise_loglik(model, subset, sigma)
        noise_rows += [{"sigma": float(sigma), "sample": i, "loglik": float(v)} for i, v in enumerate(values)]
        if math.isclose(sigma, 1.0):
            row["noise_loglik_mean"] = float(values.mean())
            row["noise_loglik_median"] = float(np.median(values))
    row.setdefault("noise_loglik_mean", float("nan"))
    row.setdefault("noise_loglik_median", float("nan"))

    row["mig"] = None
    if factors is not None and factor_sizes:
        means, logvars = top_layer_posterior(model, images, batch_size)
        row["mig"] = mig(means, logvars, factors, factor_sizes, factor_names, seed=seed)
    return row, noise_rows
