"""Minibatch estimators of the top layer's beta-TC decomposition (Chen et al. 2018).

For the top layer z = z^L with parent u (x when L = 1, else z^{L-1} [and x's features]):

    log q(z|u) - log p(z) = [log q(z|u) - log q(z)]              index-code MI
                          + [log q(z) - sum_d log q(z_d)]        total correlation
                          + [sum_d log q(z_d) - log p(z_d)]      dimension-wise KL

exactly, per sample, whatever estimates of log q(z) and log q(z_d) are plugged in. The aggregate
posterior q(z) = (1/N) sum_n q(z | u_n) is estimated from the batch: with the matrix
log q(z_{i,d} | u_j) for every sample i, batch member j and dimension d, and log weights w_ij,

    log q(z_i)          ~ logsumexp_j [ w_ij + sum_d log q(z_{i,d} | u_j) ]
    log prod_d q(z_i,d) ~ sum_d logsumexp_j [ w_ij + log q(z_{i,d} | u_j) ]

MWS (minibatch-weighted sampling): w_ij = -log(B N) for every j.
    Chen et al. derive it as an importance-sampling *lower bound*: the batch is treated as the
    sample's own point plus B-1 uniform draws, which only covers batches that contain the own
    point. Its expectation is (1/N)[q(z_i|u_i)/B + (B-1)/B * mean_{n != i} q(z_i|u_n)], below
    q(z_i) by a factor between about 1/B (non-overlapping posteriors) and 1/N (posteriors equal
    to the aggregate). Hence the MWS *values* of MI, TC and dim-KL are biased (TC upward, by up
    to (D-1) log N nats); only their sum is exact. Kept as the default because it is the
    reference implementation's default; prefer MSS when the reported TC value matters.

MSS (minibatch-stratified sampling), derived from Chen et al. 2018, Appendix C.2. Let the
    batch hold B distinct points and M = B - 1. Split the N data points into M strata of N/M
    points. Seen from sample i, the batch is: its own point u_i, one more point from u_i's
    stratum, and one point from each of the other M - 1 strata. Writing q(z_i) as
        (1/N) q(z_i|u_i) + (1/N) sum_{n in own stratum, n != i} q(z_i|u_n)
                         + sum_{other strata s} (1/N) sum_{n in s} q(z_i|u_n)
    and estimating each stratum's sum by (its size) x (the one batch member drawn from it):
        own point                         weight 1/N                       (exact)
        the same-stratum partner          weight (N/M - 1)/N = (N-M)/(N M)
        each of the other M - 1 members   weight (N/M)/N     = 1/M
    The weights sum to 1/N + (N-M)/(NM) + (M-1)/M = 1, and because the B-1 other members are
    exchangeable draws from the N-1 other points, E[q_hat(z_i)] = q(z_i) for any uniform batch
    (the log is then biased only by Jensen's inequality, vanishing as B grows). The partner of i
    is taken to be batch member (i + 1) mod B. The weight matrix is thus 1/N on the diagonal,
    (N-M)/(NM) on the cyclic super-diagonal and 1/M elsewhere. (The reference code means this
    matrix, but its strided fill writes a column instead of the (super-)diagonal.)
The per-dimension marginals q(z_d) use the same weights. MSS needs 2 <= B <= N + 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from models.distributions import LOG_2PI, Gaussian
from models.errors import ConfigError


def log_weight_parts(estimator: str, batch: int, dataset_size: int) -> tuple[float, float, float]:
    """The [B, B] log weight matrix as three numbers: its value off the band, and what the
    diagonal and the cyclic super-diagonal (j = i + 1 mod B) add to it."""
    if estimator == "mws":
        return -math.log(batch * dataset_size), 0.0, 0.0
    if estimator != "mss":
        raise ValueError(f"tc_estimator={estimator!r}: use 'mws' or 'mss'")
    n, m = dataset_size, batch - 1
    if m < 1:
        raise ValueError("tc_estimator='mss' needs a batch of at least 2 samples")
    if m > n:
        raise ConfigError(f"dataset_size={n} is smaller than the batch ({batch}) minus one: "
                          "set dataset_size to the number of training images")
    off = -math.log(m)
    partner = math.log((n - m) / (n * m)) if n > m else -math.inf   # the same-stratum partner
    return off, -math.log(n) - off, partner - off                     # own point: 1/N


def log_weights(estimator: str, batch: int, dataset_size: int, like: Tensor) -> Tensor:
    """The [B, B] log weight matrix, dtype and device of ``like``."""
    off, diag, partner = log_weight_parts(estimator, batch, dataset_size)
    w = torch.full((batch, batch), off, dtype=like.dtype, device=like.device)
    _add_band(w[:, None], 0, diag, partner)
    return w


def mws_log_weights(batch: int, dataset_size: int, like: Tensor) -> Tensor:
    return log_weights("mws", batch, dataset_size, like)


def mss_log_weights(batch: int, dataset_size: int, like: Tensor) -> Tensor:
    return log_weights("mss", batch, dataset_size, like)


def _add_band(x: Tensor, i0: int, diag: float, partner: float) -> None:
    """x [rows, K, B] holds rows i0 .. i0 + rows - 1 (first axis) of a [B, K, B] array: add diag
    at j = i and partner at j = i + 1 mod B (last axis), in place."""
    b = x.shape[2]
    if diag != 0.0:
        torch.diagonal(x, offset=i0, dim1=0, dim2=2).add_(diag)
    if partner != 0.0:
        torch.diagonal(x, offset=i0 + 1, dim1=0, dim2=2).add_(partner)
        if i0 + x.shape[0] == b:
            x[-1, :, 0] += partner


# Elements of one [rows, D, B] chunk: on a CPU, per thread (each takes its share of every pass), the
# two buffers (1 MiB each in float32) stay in the core's L2 cache between the chunk's passes; on a
# GPU, chunks large enough to keep it busy.
CHUNK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 24}


def _chunk_rows(batch: int, dims: int, device: torch.device) -> int:
    elements = CHUNK_ELEMENTS.get(device.type, 1 << 24)
    if device.type == "cpu":
        elements *= torch.get_num_threads()
    return max(1, min(batch, elements // (batch * dims)))


# exp of a float32 below -87.3 (a denormal or zero result) takes a slow path on x86 CPUs, ~100x
# slower (docs/PERFORMANCE.md), and most pairs (i, j) of narrow posteriors are that far below the
# row's maximum. Arguments are raised to this floor first: it changes a log-sum-exp by at most
# B e^-60 (1e-23 at B = 2048) relative, and the softmax weights by as little.
EXP_FLOOR = -60.0


def _exp_shifted_(x: Tensor, shift: Tensor) -> Tensor:
    """exp(x - shift) in place, arguments raised to EXP_FLOOR."""
    return x.sub_(shift).clamp_min_(EXP_FLOOR).exp_()


def _logsumexp_(x: Tensor, dim: int) -> Tensor:
    """logsumexp over dim (max-shifted, arguments floored at EXP_FLOOR); overwrites x."""
    top = x.amax(dim, keepdim=True)
    return _exp_shifted_(x, top).sum(dim).log_().add_(top.squeeze(dim))


class _AggregateLogDensities(torch.autograd.Function):
    """(logsumexp_j [b_ij + log q(z_i | u_j)], sum_d logsumexp_j [b_ij + log q(z_{i,d} | u_j)])
    with b the band of the log weights (``_add_band``), a few rows i at a time: [rows, D, B]
    buffers instead of [B, B, D]. The joint log density [B, B] is the sum over d of the
    marginals', each from z - m directly (no expanded square to cancel), and is kept for the
    backward, which recomputes each chunk of the marginals for their softmax weights over j."""

    @staticmethod
    def _chunk(z, mean_t, std_t, log_norm_t, i0, u, out):
        # u <- (z_i - m_j) / std_j, out <- log q(z_{i,d} | u_j), both [rows, D, B]
        torch.sub(z[i0:i0 + u.shape[0], :, None], mean_t[None], out=u).mul_(std_t[None])
        torch.addcmul(log_norm_t[None], u, u, value=-0.5, out=out)

    @staticmethod
    def forward(ctx, z, mean, logvar, diag, partner):
        z = z.contiguous()
        mean_t = mean.t().contiguous()                                  # [D, B], j last
        std_t = torch.exp(-0.5 * logvar).t().contiguous()
        log_norm_t = (-0.5 * (LOG_2PI + logvar)).t().contiguous()
        b, d = z.shape
        rows = _chunk_rows(b, d, z.device)
        u_buf, out_buf = z.new_empty(rows, d, b), z.new_empty(rows, d, b)
        joint, lse_dims = z.new_empty(b, b), z.new_empty(b, d)
        for i0 in range(0, b, rows):
            u, out = u_buf[:b - i0], out_buf[:b - i0]                  # the last may be short
            i1 = i0 + u.shape[0]
            _AggregateLogDensities._chunk(z, mean_t, std_t, log_norm_t, i0, u, out)
            torch.sum(out, 1, out=joint[i0:i1])
            _add_band(out, i0, diag, partner)
            lse_dims[i0:i1] = _logsumexp_(out, 2)
        _add_band(joint[:, None], 0, diag, partner)
        lse_joint = _logsumexp_(joint.clone(), 1)
        ctx.save_for_backward(z, mean_t, std_t, log_norm_t, joint, lse_joint, lse_dims)
        ctx.band, ctx.rows = (diag, partner), rows
        return lse_joint, lse_dims.sum(1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_joint, grad_dims):
        z, mean_t, std_t, log_norm_t, joint, lse_joint, lse_dims = ctx.saved_tensors
        b, d = z.shape
        rows = ctx.rows
        u_buf, w_buf = z.new_empty(rows, d, b), z.new_empty(rows, d, b)
        # d loss / d log q(z_{i,d} | u_j): both softmaxes over j, each times its output's grad
        w_joint = _exp_shifted_(joint - lse_joint[:, None], 0.0).mul_(grad_joint[:, None])   # [B, B]
        grad_dims = grad_dims[:, None, None]
        lse_dims = lse_dims[..., None]
        grad_z = torch.empty_like(z)
        sum_w, sum_wu, sum_wu2 = z.new_zeros(d, b), z.new_zeros(d, b), z.new_zeros(d, b)
        for i0 in range(0, b, rows):
            u, w = u_buf[:b - i0], w_buf[:b - i0]
            i1 = i0 + u.shape[0]
            _AggregateLogDensities._chunk(z, mean_t, std_t, log_norm_t, i0, u, w)
            _add_band(w, i0, *ctx.band)
            _exp_shifted_(w, lse_dims[i0:i1]).mul_(grad_dims[i0:i1]).add_(w_joint[i0:i1, None])
            sum_w += w.sum(0)
            w.mul_(u).mul_(std_t[None])                                   # ... (z - m) / var
            grad_z[i0:i1] = w.sum(2)
            sum_wu += w.sum(0)
            sum_wu2 += w.mul_(u).sum(0)
        # d/dlogvar_j of log q(z|u_j) is ((z - m)^2 / var - 1) / 2; sum_wu2 has one 1/std too many
        grad_logvar = 0.5 * (sum_wu2 / std_t.clamp_min(torch.finfo(z.dtype).tiny) - sum_w)
        return grad_z.neg_(), sum_wu.t(), grad_logvar.t(), None, None


def aggregate_log_densities(z: Tensor, q: Gaussian, dataset_size: int, estimator: str) -> tuple[Tensor, Tensor]:
    """(log q(z_i), log prod_d q(z_{i,d})) for every sample of the batch, each [B].

    One pass over rows of the batch (``_AggregateLogDensities``) gives both; no [B, B, D] tensor
    is held, forward or backward. The weight matrix is a constant (taken out of the log-sum-exps)
    plus a band on the diagonal and super-diagonal (``log_weight_parts``).
    """
    off, diag, partner = log_weight_parts(estimator, z.shape[0], dataset_size)
    log_qz, log_prod_qzd = _AggregateLogDensities.apply(z, q.mean, q.logvar, diag, partner)
    return log_qz + off, log_prod_qzd + z.shape[1] * off


@dataclass
class TopKL:
    """Per-sample terms of the top layer's KL; mi + tc + dim_kl == log q(z|u) - log p(z)."""
    index_code_mi: Tensor
    tc: Tensor
    dim_kl: Tensor

    @property
    def total(self) -> Tensor:
        return self.index_code_mi + self.tc + self.dim_kl


def decompose_top_kl(z: Tensor, q: Gaussian, dataset_size: int, estimator: str) -> TopKL:
    """Split log q(z|u) - log N(z; 0, I) into MI, TC and dimension-wise KL, each [B]."""
    log_q_cond = q.log_prob(z)
    log_p = Gaussian.standard_like(z).log_prob(z)
    log_qz, log_prod_qzd = aggregate_log_densities(z, q, dataset_size, estimator)
    return TopKL(log_q_cond - log_qz, log_qz - log_prod_qzd, log_prod_qzd - log_p)
