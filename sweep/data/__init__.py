"""Datasets for the sweep: generated dSprites and loaders for users' local copies.

    from sweep.data import load_dataset
    ds = load_dataset("dsprites_generated", size=20_000, seed=0, held_out=0.1)
    x = ds.sample_batch(torch.Generator().manual_seed(0), 256)   # float [256, 1, 64, 64] in [0, 1]

Every loader returns an :class:`ImageDataset` (uint8 or bit-packed images in memory, optional
ground-truth factors, a seeded train / held-out split). Batches are in the pixel range [0, 1];
the model scales them to [-1, 1] at its encoder input. Nothing here downloads anything, and
nothing imports Ray or MLflow.
"""

from sweep.data.dataset import IMAGE_SIZE, PIXEL_RANGE, ImageDataset
from sweep.data.dsprites import generate_dsprites, render_dsprites
from sweep.data.errors import DatasetError
from sweep.data.loaders import DATASETS, DatasetSpec, dataset_names, dataset_spec, load_dataset, register_dataset

__all__ = [
    "DATASETS",
    "DatasetError",
    "DatasetSpec",
    "IMAGE_SIZE",
    "ImageDataset",
    "PIXEL_RANGE",
    "dataset_names",
    "dataset_spec",
    "register_dataset",
    "generate_dsprites",
    "load_dataset",
    "render_dsprites",
]
