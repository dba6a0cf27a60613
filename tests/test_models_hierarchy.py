"""What each kind's graph depends on, and the encode/decode contract."""

import pytest
import torch

from models import ModelConfig, build_model

Z = 3




def _model(kind="seatbelt", layers=3, **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(kind=kind, layers=layers, beta=1.0 if kind == "vae" else 2.0,
                                   z_dim=Z, hidden_dim=16, dataset_size=100, **kw)).eval()


def _x(b=4, seed=0):
    return torch.rand(b, 1, 64, 64, generator=torch.Generator().manual_seed(seed))


def _z(layers, b=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, Z, generator=g) for _ in range(layers)]


def test_tcdlgm_decoder_ignores_upper_layers():
    model = _model("tcdlgm", 3)
    z = _z(3)
    changed = [z[0], z[1] + 5.0, -z[2]]
    torch.testing.assert_close(model.decode(z), model.decode(changed))
    assert not torch.allclose(model.decode(z), model.decode([z[0] + 1.0, z[1], z[2]]))
    assert model.attack_layers == [0]


def test_seatbelt_decoder_depends_on_every_layer():
    model = _model("seatbelt", 3)
    z = _z(3)
    base = model.decode(z)
    for i in range(3):
        moved = [t + 1.0 if j == i else t for j, t in enumerate(z)]
        assert not torch.allclose(base, model.decode(moved)), f"layer {i + 1} is ignored"
    assert model.attack_layers == [0, 1, 2]


@pytest.mark.parametrize("kind", ["vae", "tcvae"])
def test_single_layer_attack_layers(kind):
    assert _model(kind, 1).attack_layers == [0]


def _layer2_given_z1_zero(model, x):
    """q(z^2 | z^1 = 0 [, x]): choose eps_1 so that z^1 is exactly zero for every image."""
    q1 = model.encode(x, sample=False).posteriors[0]
    eps = [-q1.mean / q1.std] + [torch.zeros(x.shape[0], Z) for _ in range(model.cfg.layers - 1)]
    enc = model.encode(x, eps=eps)
    assert enc.z[0].abs().max() < 1e-5
    return enc.posteriors[1]


def test_condition_on_x_changes_the_graph():
    xa, xb = _x(seed=0), _x(seed=1)
    with torch.no_grad():
        chain = _model(condition_on_x=False)      # 2019 form: q(z^2 | z^1) only
        a, b = _layer2_given_z1_zero(chain, xa), _layer2_given_z1_zero(chain, xb)
        torch.testing.assert_close(a.mean, b.mean, atol=1e-5, rtol=0)
        torch.testing.assert_close(a.logvar, b.logvar, atol=1e-5, rtol=0)
        skip = _model(condition_on_x=True)        # 2021 form: q(z^2 | z^1, x)
        a, b = _layer2_given_z1_zero(skip, xa), _layer2_given_z1_zero(skip, xb)
        assert not torch.allclose(a.mean, b.mean, atol=1e-4)


def test_encode_modes():
    model = _model("seatbelt", 3)
    x = _x()
    with torch.no_grad():
        det = model.encode(x, sample=False)
        assert len(det.posteriors) == len(det.z) == 3
        for q, z in zip(det.posteriors, det.z):
            assert q.mean.shape == q.logvar.shape == z.shape == (4, Z)
            torch.testing.assert_close(z, q.mean)           # the mean feeds the next layer
        torch.testing.assert_close(model.encode(x, sample=False).z[2], det.z[2])
        eps = _z(3, seed=5)
        e1, e2 = model.encode(x, eps=eps), model.encode(x, eps=eps)
        for a, b in zip(e1.z, e2.z):
            torch.testing.assert_close(a, b)
        s1, s2 = model.encode(x), model.encode(x)
        assert not torch.allclose(s1.z[0], s2.z[0])
        noisy = model.encode(x, sample=False, input_noise_std=1.0)
        assert not torch.allclose(noisy.posteriors[0].mean, det.posteriors[0].mean)
        # the model centres pixels on the training mean image itself: that image is a zero input
        mean = _x(1, seed=7)[0]
        model.set_mean_image(mean)
        h = model.inference.encoder(torch.zeros(1, 1, 64, 64))
        torch.testing.assert_close(model.encode(mean[None], sample=False).features, h)


@pytest.mark.parametrize("encoder_input,expected", [
    ("centred", lambda x, mean: x - mean), ("pixels", lambda x, mean: x), ("symmetric", lambda x, mean: 2 * x - 1)])
def test_encoder_inputs_and_the_noise_test_in_the_papers_units(encoder_input, expected):
    """Each input is what its name says; the noise test's sigma is in the paper's [-1, 1] units
    whatever the input: on a pixel-scaled input it adds sigma / 2, since 2(x + e/2) - 1 = (2x - 1) + e."""
    model = _model("tcvae", 1, encoder_input=encoder_input)
    x, mean = _x(), _x(1, seed=7)[0]
    model.set_mean_image(mean)
    torch.testing.assert_close(model.encoder_input(x), expected(x, mean))
    sigma = 0.7
    torch.manual_seed(11)
    noisy = model.encoder_input(x, sigma)
    torch.manual_seed(11)
    e = sigma * torch.randn_like(x)          # the paper's noise on 2x - 1
    scale = 1.0 if encoder_input == "symmetric" else 0.5
    torch.testing.assert_close(noisy, expected(x, mean) + scale * e)


@pytest.mark.parametrize("likelihood,scale", [("bernoulli", None), ("gaussian", None), ("gaussian", 0.1)])
def test_reconstruct_log_likelihood_and_elbo_shapes(likelihood, scale):
    model = _model("seatbelt", 2, likelihood=likelihood, gaussian_scale=scale)
    x = _x()
    with torch.no_grad():
        rec = model.reconstruct(x)
        assert rec.shape == x.shape and rec.min() >= 0 and rec.max() <= 1
        enc = model.encode(x)
        assert model.log_likelihood(x, enc.z).shape == (4,)
        assert model.kl_to_prior(enc).shape == (4,)
        assert model.elbo(x).shape == (4,)
        if likelihood == "gaussian" and scale is not None:
            mean = model.decode(enc.z)
            ref = torch.distributions.Normal(mean, scale).log_prob(x).flatten(1).sum(1)
            torch.testing.assert_close(model.log_likelihood(x, enc.z), ref)


def test_bad_input_shape_is_reported():
    with pytest.raises(ValueError, match=r"\[B, 1, 64, 64\]"):
        _model().encode(torch.rand(2, 3, 64, 64))


def test_weight_norms_split_inference_and_generative_sides():
    model = _model("seatbelt", 3)
    enc = sum((p.double() ** 2).sum() for n, p in model.named_parameters() if n.startswith("inference."))
    dec = sum((p.double() ** 2).sum() for n, p in model.named_parameters() if n.startswith("generative."))
    assert enc.sqrt().item() == pytest.approx(model.encoder_l2())
    assert dec.sqrt().item() == pytest.approx(model.decoder_l2())
    assert len(list(model.parameters())) == len(list(model.inference.parameters())) + len(list(model.generative.parameters()))


def test_users_can_register_an_architecture():
    from torch import nn

    from models import register_architecture
    from models.networks import ARCHITECTURES, Architecture

    def tiny(cfg, decoder_in):
        pixels = cfg.channels * cfg.image_size ** 2
        return Architecture(nn.Sequential(nn.Flatten(), nn.Linear(pixels, 5), nn.ReLU()), 5,
                            nn.Sequential(nn.Linear(decoder_in, pixels),
                                          nn.Unflatten(1, (cfg.channels, cfg.image_size, cfg.image_size))))

    register_architecture("tiny-test", tiny)
    try:
        model = build_model(ModelConfig(kind="seatbelt", layers=2, architecture="tiny-test", z_dim=Z,
                                        image_size=8, channels=3, hidden_dim=4))
        x = torch.rand(4, 3, 8, 8)
        assert model.reconstruct(x).shape == x.shape
        assert torch.isfinite(model.objective(x).loss)
    finally:
        del ARCHITECTURES["tiny-test"]
