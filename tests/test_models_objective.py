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


def _analytic_kl(mu, std):
    """KL(N(mu, std^2) || N(0, I)) per sample, by torch.distributions."""
    return torch.distributions.kl_divergence(Normal(mu, std), Normal(0.0, 1.0)).sum(1)


def _fb(kl, nats):
    return torch.clamp(kl.mean(), min=nats) if nats else kl.mean()


@pytest.mark.parametrize("estimator", ["mws", "mss"])
@pytest.mark.parametrize("free_bits", [0.0, 50.0])
def test_single_layer_is_beta_tcvae(estimator, free_bits):
    """Eq. 8 with L = 1: -recon + MI + beta TC + dimKL, written -recon + FB(KL) + (beta-1) TC with
    the closed-form KL; MI + TC + dimKL is the one-sample log q(z|x) - log p(z)."""
    model = _model(tc_estimator=estimator, free_bits=free_bits)
    x, eps = _data()
    out = model.objective(x, eps=eps)

    with torch.no_grad():
        post = model.encode(x, sample=False).posteriors[0]
        mu, std = post.mean, post.logvar.mul(0.5).exp()
        z = mu + std * eps[0]
        recon = Bernoulli(logits=model.decode([z])).log_prob(x).flatten(1).sum(1)
        mi, tc, dim_kl, kl_mc = _reference_top(z, mu, std, estimator, N)
        kl = _analytic_kl(mu, std)
        loss = -(recon.mean() - _fb(kl, free_bits) - 2.0 * tc.mean())

    torch.testing.assert_close(out.loss.detach(), loss)
    for name, ref in [("recon_loglik", recon), ("index_code_mi", mi), ("tc", tc),
                      ("dim_kl", dim_kl), ("kl_1", kl), ("elbo", recon - kl)]:
        torch.testing.assert_close(out.parts[name], ref.mean(), msg=name)
    torch.testing.assert_close(mi + tc + dim_kl, kl_mc)
    if free_bits:   # the floor is active here: the loss no longer pushes the KL down
        assert kl.mean() < free_bits


def test_vae_loss_is_the_negative_elbo():
    """beta = 1, no free bits: the loss is -ELBO with the closed-form KL, per sample in elbo()."""
    model = _model(kind="vae", beta=1.0)
    x, eps = _data()
    with torch.no_grad():
        post = model.encode(x, sample=False).posteriors[0]
        std = post.logvar.mul(0.5).exp()
        z = post.mean + std * eps[0]
        recon = Bernoulli(logits=model.decode([z])).log_prob(x).flatten(1).sum(1)
        kl = _analytic_kl(post.mean, std)
        torch.testing.assert_close(model.elbo(x, eps=eps), recon - kl)
        out = model.objective(x, eps=eps)
        torch.testing.assert_close(out.loss, -(recon - kl).mean())
        # kl_to_prior is the one-sample MC KL unless asked for the closed form
        q = Normal(post.mean, std)
        enc = model.encode(x, eps=eps)
        kl_mc = q.log_prob(z).sum(1) - Normal(0.0, 1.0).log_prob(z).sum(1)
        torch.testing.assert_close(model.kl_to_prior(enc), kl_mc)
        torch.testing.assert_close(model.kl_to_prior(enc, analytic_top=True), kl)


@pytest.mark.parametrize("kind", ["seatbelt", "tcdlgm"])
@pytest.mark.parametrize("condition_on_x", [True, False])
def test_hierarchical_objective(kind, condition_on_x):
    """L = 3: lower layers use the one-sample log q(z^i|.) - log p(z^i|z^{i+1}); the top layer
    its closed-form KL plus (beta - 1) TC; free bits per layer; beta = 1 and no free bits gives
    loss = -elbo."""
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
        mi, tc, dim_kl, top_mc = _reference_top(enc.z[2], qs[2].loc, qs[2].scale, "mws", N)
        top = _analytic_kl(qs[2].loc, qs[2].scale)
        loss = -(recon.mean() - _fb(lower[0], 2.0) - lower[1].mean() - _fb(top, 1.0) - 4.0 * tc.mean())
        elbo = recon - lower[0] - lower[1] - top
    torch.testing.assert_close(out.loss.detach(), loss)
    for name, ref in [("kl_1", lower[0]), ("kl_2", lower[1]), ("kl_3", top), ("tc", tc), ("elbo", elbo)]:
        torch.testing.assert_close(out.parts[name], ref.mean(), msg=name)
    torch.testing.assert_close(model.elbo(x, eps=eps).detach(), elbo)
    torch.testing.assert_close(model.kl_to_prior(enc).detach(), lower[0] + lower[1] + top_mc)

    plain = _model(kind=kind, layers=3, beta=1.0, condition_on_x=condition_on_x)
    o = plain.objective(x, eps=eps)
    torch.testing.assert_close(o.loss.detach(), -o.parts["elbo"])


def _top_head_gradient(model, loss):
    """Gradient of ``loss`` w.r.t. the parameters that output the top layer's posterior."""
    head = model.inference.head if model.cfg.layers == 1 else model.inference.chain[-1][-1]
    grads = torch.autograd.grad(loss, list(head.parameters()), retain_graph=True)
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("estimator", ["mws", "mss"])
@pytest.mark.parametrize("layers", [1, 3])
def test_free_bits_keep_the_top_layer_kl_gradient(estimator, layers):
    """With free bits below the KL, the top layer's KL pulls on its posterior under either TC
    estimator: at beta = 1 the penalty's gradient on the top posterior is the gradient of the
    mean closed-form KL, computed here from its parameters alone. (MWS's MI + dimKL sits
    about (D - 1) log N nats below zero; a floor on it had no gradient at all.)"""
    kind = "tcvae" if layers == 1 else "seatbelt"
    floor = 0.01   # above zero, below the untrained top layer's KL (a few hundredths of a nat)
    model = _model(kind=kind, layers=layers, beta=1.0, free_bits=[0.0] * (layers - 1) + [floor],
                   tc_estimator=estimator, dataset_size=737_280)
    x, eps = _data(layers=layers)
    out = model.objective(x, eps=eps)
    enc = model.encode(x, eps=eps)
    penalty = out.loss + model.log_likelihood(x, enc.z).mean()   # the loss without -recon
    top = enc.posteriors[-1]
    kl = _analytic_kl(top.mean, top.logvar.mul(0.5).exp()).mean()
    assert kl > floor   # the floor is not what is active
    # with L > 1 the lower layers' KLs also reach the top posterior (through z^L, their prior's input)
    expected = kl + sum((kl_i.mean() for kl_i in model.lower_kls(enc)), torch.zeros(()))
    torch.testing.assert_close(_top_head_gradient(model, penalty), _top_head_gradient(model, expected))
    assert _top_head_gradient(model, kl).abs().sum() > 0


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_free_bits_never_switch_off_the_tc_pressure(estimator):
    """Free bits far above the KL silence the KL's gradient, not the TC's: it keeps its weight
    beta (before issue 23 it kept beta - 1, the floored KL having taken TC's share with it)."""
    model = _model(kind="tcvae", beta=6.0, free_bits=1e4, tc_estimator=estimator)
    x, eps = _data()
    out = model.objective(x, eps=eps)
    enc = model.encode(x, eps=eps)
    penalty = out.loss + model.log_likelihood(x, enc.z).mean()
    top = enc.posteriors[-1]
    from models.tc import decompose_top_kl
    tc = decompose_top_kl(enc.z[-1], top, N, estimator).tc.mean()
    torch.testing.assert_close(_top_head_gradient(model, penalty), _top_head_gradient(model, 6.0 * tc))


@pytest.mark.parametrize("beta", [1.0, 6.0])
@pytest.mark.parametrize("theta, side", [(1.0, "above"), (0.2, "below")])
def test_top_free_bits_gradient_against_its_closed_form(beta, theta, side):
    """KL_L = e^theta and TC = 0.3 theta^2, floor 2 nats; the top layer's terms of the loss are
    FB(KL_L, TC) + (beta - 1) TC. Above the floor (theta = 1, KL 2.72) their derivative is
    e^theta + (beta - 1) 0.6 theta, the unfloored eq. 8; below it (theta = 0.2, KL 1.22) it is
    beta 0.6 theta: the floor frees the KL's bits, TC keeps its weight beta. The value is
    max(2, KL_L) + (beta - 1) TC either way."""
    from models.hierarchical import _top_free_bits

    t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    kl, tc = torch.exp(t), 0.3 * t ** 2
    assert (kl.item() > 2.0) == (side == "above")
    value = _top_free_bits(kl, 2.0, tc) + (beta - 1.0) * tc
    (grad,) = torch.autograd.grad(value, t)
    want = math.exp(theta) + (beta - 1.0) * 0.6 * theta if side == "above" else beta * 0.6 * theta
    assert float(grad) == pytest.approx(want, rel=1e-12)
    assert value.item() == pytest.approx(max(2.0, math.exp(theta)) + (beta - 1.0) * 0.3 * theta ** 2, rel=1e-12)
    # a kind whose regulariser is not the TC penalty gets the plain floor: no gradient below it
    (plain,) = torch.autograd.grad(_top_free_bits(torch.exp(t), 2.0, None), t)
    assert float(plain) == pytest.approx(math.exp(theta) if side == "above" else 0.0)


@pytest.mark.parametrize("beta", [1.0, 6.0])
@pytest.mark.parametrize("side", ["above", "below"])
@pytest.mark.parametrize("kind, layers", [("tcvae", 1), ("seatbelt", 3)])
def test_top_layer_gradient_with_free_bits_in_the_model(beta, side, kind, layers):
    """The model's loss, on the parameters that output q(z^L|.): above the top floor the gradient
    of KL_L + (beta - 1) TC (+ the lower layers' KLs, which read z^L through their prior),
    below it that of beta TC (+ the same), TC from the estimator the model trains with."""
    from models.tc import decompose_top_kl

    floor = 0.01 if side == "above" else 1e4   # the untrained top layer's KL: a few hundredths
    model = _model(kind=kind, layers=layers, beta=beta, free_bits=[0.0] * (layers - 1) + [floor],
                   dataset_size=737_280)
    x, eps = _data(layers=layers)
    out = model.objective(x, eps=eps)
    enc = model.encode(x, eps=eps)
    penalty = out.loss + model.log_likelihood(x, enc.z).mean()
    top = enc.posteriors[-1]
    kl = _analytic_kl(top.mean, top.logvar.mul(0.5).exp()).mean()
    tc = decompose_top_kl(enc.z[-1], top, 737_280, "mws").tc.mean()
    assert (kl.item() > floor) == (side == "above")
    lower = sum((kl_i.mean() for kl_i in model.lower_kls(enc)), torch.zeros(()))
    expected = lower + (kl + (beta - 1.0) * tc if side == "above" else beta * tc)
    torch.testing.assert_close(_top_head_gradient(model, penalty), _top_head_gradient(model, expected))
    assert model.beta_layer == layers - 1
