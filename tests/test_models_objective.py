"""The eq. 8 objective against independently written objectives (same eps, same networks)."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal

from models import ModelConfig, build_model




B, Z, N = 6, 3, 50


def _model(**kw):
    torch.manual_seed(0)
    cfg = dict(kind="tcvae", layers=1, z_dim=Z, hidden_dim=16, dataset_size=N, beta=3.0)
    cfg.update(kw)
    return build_model(ModelConfig(**cfg))


def _data(layers=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(B, 1, 64, 64, generator=g) > 0.5).float()
    eps = [torch.randn(B, Z, generator=g) for _ in range(layers)]
    return x, eps


def _log_weights(estimator, b, n):
    """MWS: 1/(BN) everywhere. MSS: 1/N own point, (N-M)/(NM) its stratum partner, 1/M others."""
    if estimator == "mws":
        return torch.full((b, b), -math.log(b * n))
    m = b - 1
    w = torch.empty(b, b)
    for i in range(b):
        for j in range(b):
            w[i, j] = 1 / n if i == j else ((n - m) / (n * m) if j == (i + 1) % b else 1 / m)
    return w.log()


def _reference_top(z, mu, std, estimator, n):
    """beta-TCVAE's decomposition written from the formulas with torch.distributions."""
    q_cond = Normal(mu, std).log_prob(z).sum(1)
    log_p = Normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z).sum(1)
    mat = Normal(mu.unsqueeze(0), std.unsqueeze(0)).log_prob(z.unsqueeze(1))   # [i, j, d]
    w = _log_weights(estimator, z.shape[0], n)
    log_qz = torch.logsumexp(mat.sum(2) + w, 1)
    log_prod = torch.logsumexp(mat + w.unsqueeze(2), 1).sum(1)
    return q_cond - log_qz, log_qz - log_prod, log_prod - log_p, q_cond - log_p


@pytest.mark.parametrize("estimator", ["mws", "mss"])
@pytest.mark.parametrize("free_bits", [0.0, 50.0])
def test_single_layer_is_beta_tcvae(estimator, free_bits):
    model = _model(tc_estimator=estimator, free_bits=free_bits)
    x, eps = _data()
    out = model.objective(x, eps=eps)

    with torch.no_grad():
        post = model.encode(x, sample=False).posteriors[0]
        mu, std = post.mean, post.logvar.mul(0.5).exp()
        z = mu + std * eps[0]
        recon = Bernoulli(logits=model.decode([z])).log_prob(x).flatten(1).sum(1)
        mi, tc, dim_kl, kl = _reference_top(z, mu, std, estimator, N)
        reg = torch.clamp((mi + dim_kl).mean(), min=free_bits) if free_bits else (mi + dim_kl).mean()
        loss = -(recon.mean() - reg - 3.0 * tc.mean())

    torch.testing.assert_close(out.loss.detach(), loss)
    for name, ref in [("recon_loglik", recon), ("index_code_mi", mi), ("tc", tc),
                      ("dim_kl", dim_kl), ("kl_1", kl), ("elbo", recon - kl)]:
        torch.testing.assert_close(out.parts[name], ref.mean(), msg=name)
    if free_bits:   # the floor is active here: the loss no longer pushes MI + dimKL down
        assert (mi + dim_kl).mean() < free_bits


def test_vae_parts_sum_to_plain_elbo_per_sample():
    """beta = 1: MI + TC + dimKL is the one-sample log q(z|x) - log p(z); elbo = recon - that."""
    model = _model(kind="vae", beta=1.0)
    x, eps = _data()
    with torch.no_grad():
        post = model.encode(x, sample=False).posteriors[0]
        z = post.mean + post.logvar.mul(0.5).exp() * eps[0]
        q = Normal(post.mean, post.logvar.mul(0.5).exp())
        kl_mc = q.log_prob(z).sum(1) - Normal(0.0, 1.0).log_prob(z).sum(1)
        recon = Bernoulli(logits=model.decode([z])).log_prob(x).flatten(1).sum(1)
        torch.testing.assert_close(model.elbo(x, eps=eps), recon - kl_mc)
        out = model.objective(x, eps=eps)
        torch.testing.assert_close(out.loss, -(recon - kl_mc).mean())
        torch.testing.assert_close(out.parts["index_code_mi"] + out.parts["tc"] + out.parts["dim_kl"],
                                   kl_mc.mean())
        # the MC KL is unbiased for the analytic one; analytic_top gives the closed form
        enc = model.encode(x, eps=eps)
        analytic = torch.distributions.kl_divergence(q, Normal(0.0, 1.0)).sum(1)
        torch.testing.assert_close(model.kl_to_prior(enc, analytic_top=True), analytic)


@pytest.mark.parametrize("kind", ["seatbelt", "tcdlgm"])
@pytest.mark.parametrize("condition_on_x", [True, False])
def test_hierarchical_objective(kind, condition_on_x):
    """L = 3: lower layers use the one-sample log q(z^i|.) - log p(z^i|z^{i+1}); top layer the
    beta-TC split; free bits per layer; beta = 1 and no free bits gives loss = -elbo."""
    fb = [2.0, 0.0, 1.0]
    model = _model(kind=kind, layers=3, beta=5.0, free_bits=fb, condition_on_x=condition_on_x)
    x, eps = _data(layers=3)
    out = model.objective(x, eps=eps)
    with torch.no_grad():
        enc = model.encode(x, eps=eps)
        qs = [Normal(p.mean, p.logvar.mul(0.5).exp()) for p in enc.posteriors]
        for q, e, z in zip(qs, eps, enc.z):
            torch.testing.assert_close(z, q.loc + q.scale * e)
        lower = []
        for i in range(2):
            p = model.prior(i, enc.z[i + 1])
            prior = Normal(p.mean, p.logvar.mul(0.5).exp())
            lower.append(qs[i].log_prob(enc.z[i]).sum(1) - prior.log_prob(enc.z[i]).sum(1))
        recon = Bernoulli(logits=model.decode(enc.z)).log_prob(x).flatten(1).sum(1)
        mi, tc, dim_kl, top = _reference_top(enc.z[2], qs[2].loc, qs[2].scale, "mws", N)
        loss = -(recon.mean() - torch.clamp(lower[0].mean(), min=2.0) - lower[1].mean()
                 - torch.clamp((mi + dim_kl).mean(), min=1.0) - 5.0 * tc.mean())
        elbo = recon - lower[0] - lower[1] - top
    torch.testing.assert_close(out.loss.detach(), loss)
    for name, ref in [("kl_1", lower[0]), ("kl_2", lower[1]), ("kl_3", top), ("tc", tc), ("elbo", elbo)]:
        torch.testing.assert_close(out.parts[name], ref.mean(), msg=name)
    torch.testing.assert_close(model.elbo(x, eps=eps).detach(), elbo)
    torch.testing.assert_close(model.kl_to_prior(enc).detach(), lower[0] + lower[1] + top)

    plain = _model(kind=kind, layers=3, beta=1.0, condition_on_x=condition_on_x)
    o = plain.objective(x, eps=eps)
    torch.testing.assert_close(o.loss.detach(), -o.parts["elbo"])
