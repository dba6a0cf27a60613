"""Image encoder / decoder networks, looked up by name in a small registry.

An architecture builder gets the config and the decoder's input width and returns an
``Architecture``: an encoder trunk mapping [B, C, H, W] (already scaled to [-1, 1]) to features
[B, F], and a decoder mapping [B, decoder_in] to the likelihood's raw parameters [B, C, H, W].
The last encoder layer (features -> 2|z|) belongs to the model, because the latent chain also
reads the features of x. Users add architectures with ``register_architecture``.

Built in (Chen et al. 2018, beta-TCVAE, for 64x64 images):
  mlp:  encoder C*H*W-1200-1200 (ReLU) [-2|z| in the model]; decoder |z|-1200-1200-1200-C*H*W (tanh)
  conv: encoder 4x4 stride-2 convs 32,32,64,64, a 4x4 conv to 512 (batch norm + ReLU)
        [then a 1x1 conv to 2|z|, i.e. a Linear on the 512 features, in the model];
        decoder mirrors it with transposed convs.
``hidden_dim`` (when not None) replaces 1200 (mlp) or 512 (conv) so CPU smoke runs stay cheap.
Some conv layers are subclasses computing the same function faster on CPU (issue 15:
``WholeMapConv2d``, ``PointConvTranspose2d``, ``CPUConvTranspose2d``); their parameters are the
stock layers', so checkpoints are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from models.config import ARCHITECTURES, ModelConfig, register_architecture
from models.errors import ConfigError


@dataclass
class Architecture:
    encoder: nn.Module   # [B, C, H, W] in [-1, 1] -> [B, feature_dim]
    feature_dim: int
    decoder: nn.Module   # [B, decoder_in] -> [B, C, H, W] raw likelihood parameters


def build_architecture(cfg: ModelConfig, decoder_in: int) -> Architecture:
    if cfg.architecture not in ARCHITECTURES:
        raise ConfigError(f"architecture={cfg.architecture!r} is not registered: use one of "
                          f"{', '.join(ARCHITECTURES)} or register_architecture() it first")
    return ARCHITECTURES[cfg.architecture](cfg, decoder_in)


# ------------------------------------------------------------------------------ mlp
def build_mlp(cfg: ModelConfig, decoder_in: int) -> Architecture:
    width = cfg.hidden_dim or 1200
    pixels = cfg.channels * cfg.image_size * cfg.image_size
    encoder = nn.Sequential(
        nn.Flatten(),
        nn.Linear(pixels, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(),
    )
    decoder = nn.Sequential(
        nn.Linear(decoder_in, width), nn.Tanh(),
        nn.Linear(width, width), nn.Tanh(),
        nn.Linear(width, width), nn.Tanh(),
        nn.Linear(width, pixels),
        nn.Unflatten(1, (cfg.channels, cfg.image_size, cfg.image_size)),
    )
    return Architecture(encoder, width, decoder)


# ------------------------------------------------------------------------------ conv
def _conv_bn_relu(conv: nn.Module, channels: int) -> list[nn.Module]:
    # In place: batch norm's backward reads its input, not its output, so nothing needs the
    # pre-ReLU values; saves writing a fresh activation (32 MB at 32x32, batch 256) per layer.
    return [conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


def _hwc_rows(t: Tensor) -> Tensor:
    """[N, C, H, W] -> [N, H*W*C]: a view, not a copy, when t is channels_last (see models.device)."""
    return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1)


class WholeMapConv2d(nn.Conv2d):
    """A Conv2d whose kernel covers its whole input map (the encoder's 4x4 conv of the 4x4 map),
    computed as the single matmul it is. Same parameters (checkpoints load either way), same
    result and FLOPs; oneDNN's convolution runs this shape (no spatial reuse, K = 1024) at
    ~15 GFLOP/s on one core against ~70-100 for the matmul (issue 15)."""

    def forward(self, x: Tensor) -> Tensor:
        if (x.shape[-2:] != self.weight.shape[-2:] or self.padding != (0, 0)
                or self.dilation != (1, 1) or self.groups != 1 or self.padding_mode != "zeros"):
            return super().forward(x)
        # Both sides flattened in (h, w, c) order, which is free for channels_last tensors.
        return F.linear(_hwc_rows(x), _hwc_rows(self.weight), self.bias)[:, :, None, None]


class PointConvTranspose2d(nn.ConvTranspose2d):
    """A ConvTranspose2d of a 1x1 input map (the decoder's first two layers): a single matmul
    [B, in] x [in, kh*kw*out]. Same parameters and FLOPs; for the 512 -> 64 x 4x4 layer oneDNN's
    deconvolution reaches ~10-17 GFLOP/s on one core, the matmul ~90-110 (issue 15)."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if (x.shape[-2:] != (1, 1) or output_size is not None or self.padding != (0, 0)
                or self.output_padding != (0, 0) or self.dilation != (1, 1) or self.groups != 1):
            return super().forward(x, output_size)
        cin, cout, kh, kw = self.weight.shape
        bias = None if self.bias is None else self.bias.repeat(kh * kw)   # (kh, kw, out) order
        y = F.linear(x.reshape(x.shape[0], cin), _hwc_rows(self.weight).t(), bias)
        y = y.view(-1, kh, kw, cout).permute(0, 3, 1, 2)                  # channels_last strides
        # Hand the next layer the layout the model's weights are in (NCHW unless models.device
        # made the model channels_last), so its convolution does not convert back and forth.
        return y if self.weight.is_contiguous(memory_format=torch.channels_last) else y.contiguous()


class _CPUConvTranspose2d(torch.autograd.Function):
    """conv_transpose2d (groups 1, dilation 1, no output padding) with CPU fast paths:

    * backward: oneDNN's transposed-convolution weight gradient is ~3x slower when it also
      computes the bias gradient (measured 128 ms against 35 ms for 32 -> 32 channels, 16 -> 32
      pixels, batch 256, one core; a plain Conv2d does not have this), so the bias gradient is
      summed apart (~1 ms);
    * forward, with ``fold``: a matmul plus col2im (F.fold). oneDNN vectorises a deconvolution
      over output channels, so with 1 it runs at ~6 GFLOP/s: the fold forward is 2.7x faster
      there, ~1.15x with 3 channels and slower from 8 (measured).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
                padding: tuple[int, int], fold: bool) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, bias is not None)
        if not fold:
            return F.conv_transpose2d(x, weight, bias, stride, padding)
        (kh, kw), (h, w) = weight.shape[-2:], x.shape[-2:]
        size = ((h - 1) * stride[0] - 2 * padding[0] + kh, (w - 1) * stride[1] - 2 * padding[1] + kw)
        cols = torch.matmul(weight.flatten(1).t(), x.flatten(2))   # [B, out*kh*kw, h*w]
        y = F.fold(cols, size, (kh, kw), padding=padding, stride=stride)
        return y if bias is None else y + bias.view(1, -1, 1, 1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, has_bias = ctx.conv
        gx, gw, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, stride, padding, [1, 1], True, [0, 0], 1,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        gb = grad.sum((0, 2, 3)) if has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None, None, None


class CPUConvTranspose2d(nn.ConvTranspose2d):
    """A ConvTranspose2d taking the CPU fast paths of ``_CPUConvTranspose2d`` (issue 15): the
    decoder's upsampling layers. On other devices, or with options those paths do not cover,
    it is the plain layer."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if (x.device.type != "cpu" or output_size is not None or self.groups != 1
                or self.dilation != (1, 1) or self.output_padding != (0, 0)
                or self.padding_mode != "zeros" or x.dim() != 4):
            return super().forward(x, output_size)
        if torch.is_autocast_enabled("cpu"):
            if (self.stride, self.padding, self.kernel_size) == ((2, 2), (1, 1), (4, 4)):
                return _subpixel_conv_transpose2d(x, self.weight, self.bias)
            with torch.autocast("cpu", enabled=False):   # oneDNN has no bf16 deconvolution
                return _CPUConvTranspose2d.apply(x.float(), self.weight, self.bias, self.stride,
                                                 self.padding, self.out_channels <= 3)
        return _CPUConvTranspose2d.apply(x, self.weight, self.bias, self.stride, self.padding,
                                         self.out_channels <= 3)


# The sub-pixel form of a 4x4, stride-2, padding-1 transposed convolution. Output row 2m + a
# reads input rows m + delta (delta = -1, 0, +1) through kernel row _SUBPIXEL_TAPS[a][delta + 1]
# (-1: no tap): rows m-1, m by kernel rows 3, 1 for a = 0, rows m, m+1 by rows 2, 0 for a = 1;
# columns alike. So one ordinary 3x3 convolution with 4x the output channels, one per output
# phase (a, b), computes all four phases, and interleaving them is a permute.
_SUBPIXEL_TAPS = torch.tensor([[3, 1, -1], [-1, 2, 0]])
_ROWS = _SUBPIXEL_TAPS[:, None, :, None].expand(2, 2, 3, 3)    # [a, b, 3, 3]: kernel row
_COLS = _SUBPIXEL_TAPS[None, :, None, :].expand(2, 2, 3, 3)    # kernel column
_TAPPED = (_ROWS >= 0) & (_COLS >= 0)


def _subpixel_conv_transpose2d(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """conv_transpose2d(x, weight, bias, stride 2, padding 1) for a 4x4 kernel, as a 3x3
    convolution to (phase, channel) and a permute: the same function (2.25x the multiply-adds,
    the untapped ones zero), but oneDNN runs ordinary convolutions in bf16 and has no bf16
    deconvolution. Measured (batch 256, one core, forward + backward): 32 -> 32 channels at
    16 -> 32 pixels 47 ms in bf16 against 127 ms for the float32 deconvolution (issue 24)."""
    cin, cout = weight.shape[:2]
    taps = weight[:, :, _ROWS.clamp(min=0), _COLS.clamp(min=0)] * _TAPPED.to(weight.dtype)
    kernel = taps.permute(2, 3, 1, 0, 4, 5).reshape(4 * cout, cin, 3, 3)   # out channel (a, b, o)
    y = F.conv2d(x, kernel.contiguous(memory_format=torch.channels_last),
                 None if bias is None else bias.repeat(4), 1, 1)
    b, _, h, w = y.shape
    # [B, H, W, (a, b, o)] -> [B, H, a, W, b, o] = [B, 2H, 2W, o]: one copy, channels_last out
    y = y.permute(0, 2, 3, 1).reshape(b, h, w, 2, 2, cout).permute(0, 1, 3, 2, 4, 5)
    return y.reshape(b, 2 * h, 2 * w, cout).permute(0, 3, 1, 2)


def build_conv(cfg: ModelConfig, decoder_in: int) -> Architecture:
    if cfg.image_size != 64:
        raise ConfigError(f"image_size={cfg.image_size} with architecture='conv': the conv "
                          "networks are built for 64x64 images; resize the data or use 'mlp'")
    width, c = cfg.hidden_dim or 512, cfg.channels
    encoder = nn.Sequential(
        *_conv_bn_relu(nn.Conv2d(c, 32, 4, 2, 1), 32),      # 32x32
        *_conv_bn_relu(nn.Conv2d(32, 32, 4, 2, 1), 32),     # 16x16
        *_conv_bn_relu(nn.Conv2d(32, 64, 4, 2, 1), 64),     # 8x8
        *_conv_bn_relu(nn.Conv2d(64, 64, 4, 2, 1), 64),     # 4x4
        *_conv_bn_relu(WholeMapConv2d(64, width, 4), width),  # 1x1
        nn.Flatten(),
    )
    decoder = nn.Sequential(
        nn.Unflatten(1, (decoder_in, 1, 1)),
        *_conv_bn_relu(PointConvTranspose2d(decoder_in, width, 1), width),  # 1x1
        *_conv_bn_relu(PointConvTranspose2d(width, 64, 4), 64),             # 4x4
        *_conv_bn_relu(CPUConvTranspose2d(64, 64, 4, 2, 1), 64),            # 8x8
        *_conv_bn_relu(CPUConvTranspose2d(64, 32, 4, 2, 1), 32),            # 16x16
        *_conv_bn_relu(CPUConvTranspose2d(32, 32, 4, 2, 1), 32),            # 32x32
        CPUConvTranspose2d(32, c, 4, 2, 1),                                 # 64x64
    )
    return Architecture(encoder, width, decoder)


register_architecture("mlp", build_mlp)
register_architecture("conv", build_conv)


# ------------------------------------------------------------------------------ latent chain
def chain_mlp(in_dim: int, width: int, z_dim: int) -> nn.Sequential:
    """Small MLP giving a Gaussian's (mean, logvar) over z_dim: the links of the latent chain."""
    return nn.Sequential(
        nn.Linear(in_dim, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, 2 * z_dim),
    )
