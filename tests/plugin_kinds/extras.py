"""A dataset, an architecture and a latent similarity from outside the package
(tests/test_plugins.py), each one registry entry, as a sweep config's ``plugins`` adds them."""

import numpy as np

from attacks.objectives import LatentSimilarity, register_similarity
from models import register_architecture
from models.networks import build_mlp
from sweep.data import DatasetSpec, register_dataset
from sweep.data.dataset import build_dataset


def l1_mean(mean1, logvar1, mean2, logvar2):
    """‖μ(x+d) − μ(xᵗ)‖₁."""
    return (mean1 - mean2).abs().sum(dim=-1)


def blobs(root, size, *, seed, held_out, channels, crop, likelihood, workers):
    """``size`` (default 64) binary 64 × 64 images of a square at a random place, made in code."""
    rng = np.random.default_rng(seed)
    n = size or 64
    images = np.zeros((n, 1, 64, 64), dtype=np.uint8)
    for i, (y, x) in enumerate(rng.integers(0, 48, size=(n, 2))):
        images[i, 0, y:y + 16, x:x + 16] = 255
    return build_dataset("blobs", images, packed=False, channels=1, likelihood=likelihood or "bernoulli",
                         seed=seed, held_out=held_out, origin_index=np.arange(n))


def narrow_mlp(cfg, decoder_in):
    """The MLP at a width of 32, whatever the config says."""
    cfg = type(cfg).from_dict({**cfg.to_dict(), "hidden_dim": 32})
    return build_mlp(cfg, decoder_in)


register_similarity(LatentSimilarity("l1_mean", l1_mean))
register_dataset(DatasetSpec("blobs", blobs, "nothing (generated in code)", needs_path=False, architecture="mlp"))
register_architecture("narrow_mlp", narrow_mlp)
