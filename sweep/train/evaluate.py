"""What the sweep measures on every trained model, on held-out data.

ELBO and its named parts against the mean-image model, the share of pixel variance the
reconstructions explain, active units and log-variances at their bound per layer, the dead share
of the encoder's first layer (the inputs of ``sweep.train.health``), the noise robustness of the
paper's Fig. 7, the weight norms of its Table 1, and the MIG disentanglement score where the dataset has
ground-truth factors.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.hierarchical import LOGVAR_BOUND
from models.likelihoods import MEAN_CLAMP
from results.schema import TRAIN_ELBO

# dSprites' shape factor is categorical and left out of MIG, as in Chen et al. (2018).
MIG_SKIPPED_FACTORS = ("shape", "color")
# Burda et al. (2016): a latent dimension is active when Cov_x(E_q[z_u]) exceeds 0.01.
ACTIVE_UNIT_THRESHOLD = 0.01
# A log-variance within 0.1 of the ±10 bound has a gradient factor (1 - tanh^2) below 0.02.
AT_BOUND_MARGIN = 0.1


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


@dataclass
class Posteriors:
    """Every layer's posterior at the deterministic encoding (each layer's mean feeds the next,
    as the attacks encode), over a set of images; float64 on the CPU."""

    means: list[torch.Tensor]              # per layer, [N, D]
    logvars: list[torch.Tensor]            # per layer, [N, D]
    prior_logvars: list[torch.Tensor]      # p(z^i | z^{i+1}) for the lower layers, [N, D]


@torch.no_grad()
def posteriors(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> Posteriors:
    layers = model.cfg.layers
    means = [[] for _ in range(layers)]
    logvars = [[] for _ in range(layers)]
    prior_logvars = [[] for _ in range(layers - 1)]
    for start in range(0, len(images), batch_size):
        encoding = model.encode(images[start : start + batch_size], sample=False)
        for i, q in enumerate(encoding.posteriors):
            means[i].append(q.mean.double().cpu())
            logvars[i].append(q.logvar.double().cpu())
        for i in range(layers - 1):
            prior_logvars[i].append(model.prior(i, encoding.z[i + 1]).logvar.double().cpu())
    return Posteriors([torch.cat(m) for m in means], [torch.cat(v) for v in logvars],
                      [torch.cat(v) for v in prior_logvars])


@torch.no_grad()
def dead_first_layer(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> float:
    """Share of the image encoder's first-layer units (neurons, or channels of a convolution)
    that never activate on ``images``: dead ReLUs, which pass no gradient and never train again.

    The first layer is the encoder's first Linear or convolution; a unit is active on an image
    when the first ReLU module after that layer (past a batch norm, say) is positive for it at
    some position. An encoder whose ReLU is not a module (``F.relu`` in a plugin's forward) is
    read at the layer's own output, pre-activation > 0, the same test for a ReLU right after it."""
    layer, relu = _first_layer_and_relu(model.inference.encoder)
    if layer is None:
        return float("nan")
    alive: torch.Tensor | None = None

    def record(_module, _inputs, output):
        nonlocal alive
        # [B, units] or [B, channels, ...]: a unit is alive if positive anywhere in the batch
        positive = (output > 0).transpose(0, 1).flatten(1).any(dim=1)
        alive = positive if alive is None else alive | positive

    handle = (relu or layer).register_forward_hook(record)
    try:
        for start in range(0, len(images), batch_size):
            model.encode(images[start : start + batch_size], sample=False)
    finally:
        handle.remove()
    return float(1.0 - alive.double().mean()) if alive is not None else float("nan")


def _first_layer_and_relu(encoder: torch.nn.Module):
    """(the first Linear / convolution, the first ReLU module after it or None), in the order
    the modules were defined (``Module.modules``: a Sequential's order)."""
    layer = None
    for module in encoder.modules():
        if layer is None and isinstance(module, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
            layer = module
        elif layer is not None and isinstance(module, (torch.nn.ReLU, torch.nn.ReLU6)):
            return layer, module
    return layer, None


def active_units(post: Posteriors, threshold: float = ACTIVE_UNIT_THRESHOLD) -> list[int]:
    """Active units per layer (Burda et al. 2016): dimensions u with Cov_x(E_q[z_u]) > threshold,
    the covariance taken over the images, E_q[z_u] at the deterministic encoding."""
    return [int((m.var(dim=0, unbiased=True) > threshold).sum()) if len(m) > 1 else 0 for m in post.means]


def logvar_at_bound(post: Posteriors, bound: float = LOGVAR_BOUND, margin: float = AT_BOUND_MARGIN) -> list[float]:
    """Per layer, the fraction of log-variances (posterior, and the conditional prior of a lower
    layer) within ``margin`` of the model's smooth bound ±``bound``, where the bound's gradient
    has all but vanished: a variance stuck there no longer trains."""
    fractions = []
    for i, logvar in enumerate(post.logvars):
        values = [logvar] + ([post.prior_logvars[i]] if i < len(post.prior_logvars) else [])
        flat = torch.cat([v.flatten() for v in values])
        fractions.append(float((flat.abs() >= bound - margin).double().mean()))
    return fractions


def mean_image_loglik(mean_image: torch.Tensor, images: torch.Tensor, likelihood: str,
                      scale: float) -> np.ndarray:
    """log p(x) per image under the mean-image model: every pixel independent, with the data's
    mean image as its parameter (Bernoulli: probabilities, clamped as the model's offset is;
    Gaussian: means, with one ``scale``). The plateau a model must leave."""
    x = images.double().flatten(1)
    m = mean_image.double().flatten().to(x.device)
    if likelihood == "bernoulli":
        p = m.clamp(MEAN_CLAMP, 1.0 - MEAN_CLAMP)
        values = x @ p.log() + (1.0 - x) @ torch.log1p(-p)
    else:
        values = (-0.5 * math.log(2 * math.pi) - math.log(scale) - 0.5 * ((x - m) / scale) ** 2).sum(1)
    return values.cpu().numpy()


@torch.no_grad()
def recon_r2(model: torch.nn.Module, images: torch.Tensor, mean_image: torch.Tensor,
             batch_size: int) -> float:
    """Share of the images' variance around the mean image that the reconstructions explain,
    1 - sum ||rec(x) - x||^2 / sum ||mean_image - x||^2 (rec: ``model.reconstruct``). Unlike a
    log-likelihood it has no unit, so one threshold serves any likelihood: a Gaussian's
    log-density, hence the mean-image model's, moves with the pixel scale and can sit near 0.
    1 for perfect reconstructions, 0 for the mean image, negative when worse than it."""
    mean = mean_image.to(images).double()
    residual = spread = 0.0
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size]
        residual += float(((model.reconstruct(x).double() - x.double()) ** 2).sum())
        spread += float(((x.double() - mean) ** 2).sum())
    return 1.0 - residual / spread if spread > 0 else float("nan")


@dataclass
class FactorInformation:
    """What MIG reads for one ground-truth factor: I(z_j; v_k) for every latent dimension j
    (nats), and its normalised gap (top two, over H(v_k) = log K_k)."""

    name: str
    information: list[float]
    gap: float

    @property
    def best_dimension(self) -> int:
        return int(np.argmax(self.information))


def mig(
    means: torch.Tensor,
    logvars: torch.Tensor,
    factors: np.ndarray,
    factor_sizes: list[int],
    factor_names: list[str],
    seed: int = 0,
) -> float:
    """Mutual information gap (Chen et al. 2018): the mean over factors of ``mig_factors``' gaps."""
    return mean_gap(mig_factors(means, logvars, factors, factor_sizes, factor_names, seed))


def mean_gap(per_factor: list[FactorInformation]) -> float:
    """MIG from ``mig_factors``' result: the mean of the factors' gaps (nan without a factor)."""
    return float(np.mean([f.gap for f in per_factor])) if per_factor else float("nan")


def mig_factors(
    means: torch.Tensor,
    logvars: torch.Tensor,
    factors: np.ndarray,
    factor_sizes: list[int],
    factor_names: list[str],
    seed: int = 0,
) -> list[FactorInformation]:
    """Per factor, I(z_j; v_k) for every dimension and the normalised gap, with Chen et al.'s
    (2018) estimator, leave-one-out.

    H(z_j) is estimated from one sample of each image's posterior, scored under the aggregate
    posterior q(z_j) = mean_n q(z_j | x_n); H(z_j | v_k) averages, over the values of factor k,
    the same estimate within the images with that value. For each factor the gap between the
    two largest I(z_j; v_k) is normalised by H(v_k) = log K_k; MIG is the mean over factors.

    Chen et al. score each sample under a mixture that includes its own image's posterior, which
    is harmless over all 737,280 dSprites images but not over a sample: a narrow posterior then
    dominates its own mixture, H is underestimated, most within the small per-value subsets, and
    a code independent of the factors scored 0.21 over 512 images. Scoring each sample under
    the mixture of the *other* images' posteriors estimates the population's entropies instead.
    """
    generator = torch.Generator().manual_seed(seed)
    stds = (0.5 * logvars).exp()
    samples = means + stds * torch.randn(means.shape, generator=generator, dtype=means.dtype)
    marginal_entropy = _leave_one_out_entropy(samples, means, stds)
    result = []
    for k, (name, size) in enumerate(zip(factor_names, factor_sizes)):
        if name in MIG_SKIPPED_FACTORS or size < 2:
            continue
        values = factors[:, k]
        conditional_entropy = torch.zeros_like(marginal_entropy)
        for value in np.unique(values):
            members = torch.as_tensor(np.flatnonzero(values == value))
            if len(members) < 2:  # one image says nothing about the spread given this value
                continue
            weight = len(members) / len(values)
            conditional_entropy += weight * _leave_one_out_entropy(samples[members], means[members], stds[members])
        information = (marginal_entropy - conditional_entropy).clamp(min=0)
        top_two = torch.topk(information, k=min(2, len(information))).values
        gap = top_two[0] - (top_two[1] if len(top_two) > 1 else 0.0)
        result.append(FactorInformation(name, [float(v) for v in information], float(gap) / math.log(size)))
    return result


def _leave_one_out_entropy(samples: torch.Tensor, means: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """Per-dimension entropy -E log q(z_j) of the mixture of the N posteriors N(means_n, stds_n^2),
    sample n (drawn from posterior n) scored under the other N - 1. Shapes: [N, D] each."""
    n, d = means.shape
    chunk = max(1, 2**22 // (n * d))  # bounded memory: chunk x N x D doubles, 32 MiB at most
    log_mixture = []
    for start in range(0, n, chunk):
        z = samples[start : start + chunk, None, :]
        log_density = (
            -0.5 * ((z - means[None]) / stds[None]) ** 2 - stds[None].log() - 0.5 * math.log(2 * math.pi)
        )
        own = torch.arange(z.shape[0])
        log_density[own, start + own] = -math.inf
        log_mixture.append(torch.logsumexp(log_density, dim=1) - math.log(n - 1))
    return -torch.cat(log_mixture).mean(dim=0)


def evaluate(
    model: torch.nn.Module,
    images: torch.Tensor,
    mean_image: torch.Tensor,
    mean_image_scale: float,
    noise_sigmas: list[float],
    noise_samples: int,
    batch_size: int,
    seed: int,
    mig_images: torch.Tensor | None = None,
    mig_factors: np.ndarray | None = None,
    factor_sizes: list[int] | None = None,
    factor_names: list[str] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The train row's evaluation columns, and the noise rows (one per sigma and image).

    ``images`` is the evaluation sample (held out, random); ``mean_image`` and
    ``mean_image_scale`` are the training split's (``ImageDataset.pixel_statistics``), the
    mean-image model the ELBO is compared with. MIG needs ``mig_images`` with their factor
    classes ``mig_factors`` (a larger held-out sample: the estimator needs many images)."""
    model.eval()
    torch.manual_seed(seed)
    parts = elbo_parts(model, images, batch_size)
    layers = model.cfg.layers
    post = posteriors(model, images, batch_size)
    row: dict[str, Any] = {
        "eval_images": len(images),
        TRAIN_ELBO: parts[TRAIN_ELBO],
        "elbo_mean_image": float(mean_image_loglik(mean_image, images, model.cfg.likelihood,
                                                   mean_image_scale).mean()),
        "recon_loglik": parts["recon_loglik"],
        "recon_r2": recon_r2(model, images, mean_image, batch_size),
        "kl_layers": [parts[f"kl_{i}"] for i in range(1, layers + 1)],
        "active_units": active_units(post),
        "logvar_at_bound": logvar_at_bound(post),
        "dead_first_layer": dead_first_layer(model, images, batch_size),
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

    row["mig"], row["mig_images"] = None, 0
    if mig_images is not None and mig_factors is not None and factor_sizes and len(mig_images) > 2:
        top = posteriors(model, mig_images, batch_size)
        row["mig"] = mig(top.means[-1], top.logvars[-1], mig_factors, factor_sizes, factor_names, seed=seed)
        row["mig_images"] = len(mig_images)
    return row, noise_rows
