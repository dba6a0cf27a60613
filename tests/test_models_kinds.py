"""Every model kind and depth trains: the loss falls and every parameter gets a gradient."""

import pytest
import torch

from models import ModelConfig, build_model




CASES = [  # (kind, layers, architecture, likelihood)
    ("vae", 1, "mlp", "bernoulli"),
    ("tcvae", 1, "mlp", "bernoulli"),
    ("tcvae", 1, "conv", "gaussian"),
    ("tcdlgm", 2, "mlp", "bernoulli"),
    ("tcdlgm", 3, "mlp", "gaussian"),
    ("seatbelt", 2, "mlp", "bernoulli"),
    ("seatbelt", 3, "mlp", "bernoulli"),
    ("seatbelt", 3, "conv", "bernoulli"),
]


def _build(kind, layers, arch, likelihood, **kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(kind=kind, layers=layers, architecture=arch, likelihood=likelihood,
                                   beta=1.0 if kind == "vae" else 4.0, z_dim=4, hidden_dim=24,
                                   dataset_size=1000, **kw))


def _batch(b=16):
    g = torch.Generator().manual_seed(3)
    return (torch.rand(b, 1, 64, 64, generator=g) > 0.5).float()


@pytest.mark.parametrize("kind,layers,arch,likelihood", CASES)
def test_every_parameter_gets_a_gradient(kind, layers, arch, likelihood):
    model = _build(kind, layers, arch, likelihood, tc_estimator="mss")
    model.objective(_batch(8)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"


@pytest.mark.parametrize("kind,layers,arch,likelihood", CASES)
def test_a_few_adam_steps_lower_the_loss(kind, layers, arch, likelihood):
    model = _build(kind, layers, arch, likelihood, free_bits=0.1)
    x = _batch()
    eps = [torch.randn(16, 4, generator=torch.Generator().manual_seed(i)) for i in range(layers)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = model.objective(x, eps=eps).loss.item()
    for _ in range(12):
        opt.zero_grad()
        model.objective(x).loss.backward()
        opt.step()
    after = model.objective(x, eps=eps).loss.item()
    assert after < before - 1.0, (before, after)
