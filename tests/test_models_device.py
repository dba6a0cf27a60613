"""The CPU speed-ups of issue 15 compute the same loss and gradients as the plain layers.

The conv net's faster layers (``WholeMapConv2d``, ``PointConvTranspose2d``,
``CPUConvTranspose2d``, in-place ReLU) and ``prepare_for_training``'s channels_last layout
only reorder float arithmetic, so they must agree with stock NCHW ``nn.Conv2d`` /
``nn.ConvTranspose2d`` / ``nn.ReLU`` to float tolerance, and leave the state_dict as it was.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models import ModelConfig, build_model
from models.device import prepare_for_training, uses_channels_last
from models.networks import CPUConvTranspose2d, PointConvTranspose2d, WholeMapConv2d

TOL = dict(rtol=1e-4, atol=1e-5)


def _plain(model: nn.Module) -> nn.Module:
    """A copy with the stock layers: the reference computation."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, WholeMapConv2d):
            m.__class__ = nn.Conv2d
        elif isinstance(m, (PointConvTranspose2d, CPUConvTranspose2d)):
            m.__class__ = nn.ConvTranspose2d
        elif isinstance(m, nn.ReLU):
            m.inplace = False
    return model


def _loss_and_grads(model: nn.Module, x: torch.Tensor, eps: list[torch.Tensor]):
    model.zero_grad(set_to_none=True)
    loss = model.objective(x, eps=eps).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _models_and_batch(kind, layers, beta, channels, dtype):
    torch.manual_seed(0)
    cfg = ModelConfig(kind=kind, layers=layers, beta=beta, architecture="conv", channels=channels,
                      z_dim=4, hidden_dim=48, dataset_size=100,
                      likelihood="bernoulli" if channels == 1 else "gaussian")
    model = build_model(cfg).train().to(dtype)
    x = torch.rand(6, channels, 64, 64, dtype=dtype)
    if channels == 1:
        x = (x > 0.5).to(dtype)
    eps = [torch.randn(6, 4, dtype=dtype) for _ in range(layers)]   # the same noise on both paths
    return cfg, _plain(model), prepare_for_training(copy.deepcopy(model), "cpu"), x, eps


KINDS = [("vae", 1, 1.0, 1), ("seatbelt", 3, 4.0, 3)]


@pytest.mark.parametrize("kind,layers,beta,channels", KINDS)
def test_prepared_conv_model_computes_the_plain_models_float64(kind, layers, beta, channels):
    """In float64 (rounding ~1e-16) both paths agree to ~1e-14: the same function, reordered."""
    cfg, plain, fast, x, eps = _models_and_batch(kind, layers, beta, channels, torch.float64)
    ref_loss, ref_grads = _loss_and_grads(plain, x, eps)
    loss, grads = _loss_and_grads(fast, x, eps)
    assert torch.allclose(loss, ref_loss, rtol=1e-10, atol=0)
    assert grads.keys() == ref_grads.keys()
    # atol on the model's gradient scale: a conv bias before batch norm has gradient 0 (~1e-13)
    scale = max(float(g.abs().max()) for g in ref_grads.values())
    for name, g in grads.items():
        assert torch.allclose(g, ref_grads[name], rtol=1e-9, atol=1e-11 * scale), name
    for (name, b), (_, ref) in zip(fast.named_buffers(), plain.named_buffers()):
        assert torch.allclose(b, ref, rtol=1e-9, atol=1e-12), name   # batch norm running stats

    # checkpoints: same keys and shapes, and the state loads into a fresh (plain-layout) model
    state, ref_state = fast.state_dict(), plain.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in ref_state.items()}
    fresh = build_model(cfg).to(torch.float64)
    fresh.load_state_dict(state)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("kind,layers,beta,channels", KINDS)
def test_prepared_conv_model_matches_plain_float32(kind, layers, beta, channels):
    """float32, the path training takes (oneDNN, channels_last): the loss to float tolerance. The
    gradients agree to ~1e-5 relative, except that a batch-norm output within rounding of 0 can
    land on the other side of its ReLU's kink (seen: -9e-8 in float64, +1e-6 channels_last),
    which moves a 6-image batch's gradients by up to ~2e-2: the bound leaves room for that while
    catching any real formulation error (O(1))."""
    _, plain, fast, x, eps = _models_and_batch(kind, layers, beta, channels, torch.float32)
    ref_loss, ref_grads = _loss_and_grads(plain, x, eps)
    loss, grads = _loss_and_grads(fast, x, eps)
    assert torch.allclose(loss, ref_loss, rtol=1e-5, atol=0), (loss, ref_loss)
    for name, g in grads.items():
        ref = ref_grads[name]
        if float(ref.abs().max()) < 1e-3:
            continue   # a conv bias before batch norm: its gradient is 0 up to rounding
        assert float((g - ref).norm() / ref.norm()) < 5e-2, name


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("layer,shape", [
    (lambda: WholeMapConv2d(8, 16, 4), (5, 8, 4, 4)),
    (lambda: WholeMapConv2d(8, 16, 4, bias=False), (5, 8, 4, 4)),
    (lambda: WholeMapConv2d(8, 16, 4), (5, 8, 6, 6)),                  # not a whole map: plain
    (lambda: PointConvTranspose2d(8, 16, 4), (5, 8, 1, 1)),
    (lambda: PointConvTranspose2d(8, 16, 1, bias=False), (5, 8, 1, 1)),
    (lambda: PointConvTranspose2d(8, 16, 4), (5, 8, 2, 2)),            # not a point: plain
    (lambda: CPUConvTranspose2d(8, 1, 4, 2, 1), (5, 8, 7, 6)),
    (lambda: CPUConvTranspose2d(8, 3, 4, 2, 1, bias=False), (5, 8, 5, 5)),
    (lambda: CPUConvTranspose2d(8, 3, 3, 1, 0), (5, 8, 5, 5)),
    (lambda: CPUConvTranspose2d(8, 16, 4, 2, 1), (5, 8, 5, 5)),  # many channels: no fold
    (lambda: CPUConvTranspose2d(8, 16, 4, 2, 1, output_padding=1), (5, 8, 5, 5)),  # plain
])
def test_fast_layers_match_stock_layers(layer, shape, channels_last):
    torch.manual_seed(0)
    fast = layer()
    stock = copy.deepcopy(fast)
    stock.__class__ = nn.ConvTranspose2d if isinstance(fast, nn.ConvTranspose2d) else nn.Conv2d
    x = torch.randn(shape)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x_fast, x_stock = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_fast, y_stock = fast(x_fast), stock(x_stock)
    assert y_fast.shape == y_stock.shape
    assert torch.allclose(y_fast, y_stock, **TOL)
    g = torch.randn_like(y_stock)
    y_fast.backward(g)
    y_stock.backward(g)
    assert torch.allclose(x_fast.grad, x_stock.grad, **TOL)
    for (name, p), q in zip(fast.named_parameters(), stock.parameters()):
        assert torch.allclose(p.grad, q.grad, **TOL), name


def test_channels_last_only_for_conv_models():
    conv = build_model(ModelConfig(kind="vae", architecture="conv", z_dim=4, hidden_dim=16))
    mlp = build_model(ModelConfig(kind="vae", architecture="mlp", z_dim=4, hidden_dim=16))
    assert uses_channels_last(conv, "cpu") == torch.backends.mkldnn.is_available()
    assert uses_channels_last(conv, "cuda")   # decided without touching a GPU
    assert not uses_channels_last(mlp, "cpu")
    assert not uses_channels_last(mlp, "cuda")
    before = {k: v.stride() for k, v in mlp.state_dict().items()}
    prepare_for_training(mlp, "cpu")
    assert {k: v.stride() for k, v in mlp.state_dict().items()} == before
