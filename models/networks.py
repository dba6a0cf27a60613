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
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

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
    return [conv, nn.BatchNorm2d(channels), nn.ReLU()]


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
        *_conv_bn_relu(nn.Conv2d(64, width, 4), width),     # 1x1
        nn.Flatten(),
    )
    decoder = nn.Sequential(
        nn.Unflatten(1, (decoder_in, 1, 1)),
        *_conv_bn_relu(nn.ConvTranspose2d(decoder_in, width, 1), width),   # 1x1
        *_conv_bn_relu(nn.ConvTranspose2d(width, 64, 4), 64),              # 4x4
        *_conv_bn_relu(nn.ConvTranspose2d(64, 64, 4, 2, 1), 64),           # 8x8
        *_conv_bn_relu(nn.ConvTranspose2d(64, 32, 4, 2, 1), 32),           # 16x16
        *_conv_bn_relu(nn.ConvTranspose2d(32, 32, 4, 2, 1), 32),           # 32x32
        nn.ConvTranspose2d(32, c, 4, 2, 1),                                # 64x64
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
