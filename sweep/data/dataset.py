"""The one in-memory dataset type every loader returns.

An :class:`ImageDataset` holds all of its images in one uint8 tensor (bit-packed when the
images are binary) and hands out batches by index: ``batch(indices)`` gathers rows of that
tensor and converts only those to float. There are no per-image Python objects.

Pixels: ``batch`` returns float32 ``[B, C, 64, 64]`` in the **pixel range [0, 1]** (see
docs/CONTRACTS.md, "Pixels"). The model itself scales to [-1, 1] at its encoder input (the
paper's convention) and adds its input noise there; nothing in ``sweep.data`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from sweep.data.errors import DatasetError

IMAGE_SIZE = 64
PIXEL_RANGE = (0.0, 1.0)
LIKELIHOODS = ("bernoulli", "gaussian")
SPLITS = ("train", "held_out", "all")

Indices = torch.Tensor | np.ndarray | Sequence[int] | slice | int


@dataclass(eq=False)
class ImageDataset:
    """Images ``[N, C, H, W]`` held as uint8, with optional ground-truth factors and a split.

    Fields:
        name: the dataset name given to ``load_dataset`` ("dsprites_generated", "chairs", ...).
        data: uint8 tensor. Packed (``packed=True``): ``[N, C*H*W/8]``, one bit per pixel in
            ``np.packbits`` order. Otherwise ``[N, C, H, W]`` with values 0..255.
        channels, image_size: C and H (= W = 64).
        likelihood: "bernoulli" for binary images, "gaussian" for continuous ones.
        packed: whether ``data`` is bit-packed (binary images).
        factors: int64 numpy ``[N, K]`` ground-truth factor *classes* (0..size-1), or None.
        factor_values: float64 numpy ``[N, K]`` the factor values themselves, or None.
        factor_names, factor_sizes: names and number of classes of the K factors (empty if none).
        train_indices, held_out_indices: int64 tensors of dataset positions, disjoint, sorted,
            together covering 0..N-1; drawn by seed.
        origin_index: int64 tensor ``[N]``: each image's index in the full source (grid index
            of dSprites, position in the sorted file list of a folder, flat index of an array).
        item_names: for folder datasets, each image's path relative to the data folder.
        source: where the images came from (a path, or "generated").
        info: small extra facts (e.g. original image sizes found in a folder).
    """

    name: str
    data: torch.Tensor
    channels: int
    image_size: int
    likelihood: str
    packed: bool
    train_indices: torch.Tensor
    held_out_indices: torch.Tensor
    origin_index: torch.Tensor
    factors: np.ndarray | None = None
    factor_values: np.ndarray | None = None
    factor_names: tuple[str, ...] = ()
    factor_sizes: tuple[int, ...] = ()
    item_names: tuple[str, ...] | None = None
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    # ----------------------------------------------------------------------------- facts
    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def size(self) -> int:
        """N, the number of images (the TC estimators need it; use ``len(train_indices)`` for
        the training set alone)."""
        return len(self)

    @property
    def pixel_range(self) -> tuple[float, float]:
        """The range of ``batch`` values: always (0.0, 1.0)."""
        return PIXEL_RANGE

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return (self.channels, self.image_size, self.image_size)

    @property
    def has_factors(self) -> bool:
        return self.factors is not None

    @property
    def nbytes(self) -> int:
        """Bytes held by the image tensor."""
        return self.data.numel() * self.data.element_size()

    def split_indices(self, split: str = "train") -> torch.Tensor:
        """Dataset positions of ``split``: "train", "held_out" or "all"."""
        if split == "train":
            return self.train_indices
        if split == "held_out":
            return self.held_out_indices
        if split == "all":
            return torch.arange(len(self))
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")

    # ----------------------------------------------------------------------------- batches
    def batch(self, indices: Indices) -> torch.Tensor:
        """Images at dataset positions ``indices`` as float32 ``[B, C, H, W]`` in [0, 1]."""
        idx = _as_index(indices, len(self))
        rows = self.data[idx]
        if self.packed:
            x = torch.from_numpy(np.unpackbits(rows.numpy(), axis=1)).to(torch.float32)
        else:
            x = rows.to(torch.float32).mul_(1.0 / 255.0)
        return x.reshape(len(rows), self.channels, self.image_size, self.image_size)

    def uint8(self, indices: Indices) -> torch.Tensor:
        """Images at ``indices`` as uint8 ``[B, C, H, W]`` in 0..255 (e.g. to save pictures)."""
        idx = _as_index(indices, len(self))
        rows = self.data[idx]
        if self.packed:
            x = torch.from_numpy(np.unpackbits(rows.numpy(), axis=1)).mul_(255)
        else:
            x = rows
        return x.reshape(len(rows), self.channels, self.image_size, self.image_size)

    def sample_indices(
        self, generator: torch.Generator | None, batch_size: int, split: str = "train"
    ) -> torch.Tensor:
        """``batch_size`` dataset positions drawn uniformly with replacement from ``split``."""
        pool = self.split_indices(split)
        if len(pool) == 0:
            raise DatasetError(
                f"dataset {self.name!r} ({self.source}) has no {split!r} images; "
                "lower held_out or use a larger size"
            )
        picks = torch.randint(len(pool), (int(batch_size),), generator=generator)
        return pool[picks]

    def sample_batch(
        self, generator: torch.Generator | None, batch_size: int, split: str = "train"
    ) -> torch.Tensor:
        """A random batch (uniform, with replacement) from ``split`` as float ``[B, C, H, W]``
        in [0, 1]. The draw depends only on ``generator``'s state, so a seeded generator
        gives a reproducible batch stream."""
        return self.batch(self.sample_indices(generator, batch_size, split))

    def evaluation_indices(self, size: int, seed: int) -> torch.Tensor:
        """A seeded random sample of ``size`` held-out positions (all of them when the split is
        smaller), in random order. It depends only on (split, size, seed), so every trial of a
        dataset is evaluated on the same images, and samples are nested: the first k positions
        of a larger sample are the sample of size k. (The held-out split itself is sorted, and
        dataset positions follow a grid's order, so its first positions are not a sample.)"""
        pool = self.held_out_indices
        order = np.random.default_rng([int(seed), 3]).permutation(len(pool))
        return pool[torch.from_numpy(order[: int(size)])]

    def pixel_statistics(self, split: str = "train", max_images: int = 20_000, seed: int = 0,
                         chunk: int = 4096) -> tuple[torch.Tensor, float]:
        """(mean image [C, H, W], residual std) of ``split`` in the pixel range [0, 1], from a
        seeded sample of at most ``max_images`` images. The residual std is the root mean
        squared difference between a pixel and its mean image's pixel, over pixels and images:
        the scale of the mean-image model under a Gaussian likelihood."""
        pool = self.split_indices(split)
        if len(pool) == 0:
            raise DatasetError(f"dataset {self.name!r} ({self.source}) has no {split!r} images")
        if len(pool) > max_images:
            pool = pool[torch.from_numpy(np.random.default_rng([int(seed), 4]).choice(
                len(pool), size=max_images, replace=False))]
        total = torch.zeros(self.shape, dtype=torch.float64)
        squares = torch.zeros(self.shape, dtype=torch.float64)
        for start in range(0, len(pool), chunk):
            x = self.batch(pool[start : start + chunk]).double()
            total += x.sum(0)
            squares += (x * x).sum(0)
        mean = total / len(pool)
        variance = (squares / len(pool) - mean * mean).clamp(min=0.0).mean()
        return mean.float(), float(variance.sqrt())

    def iter_batches(self, batch_size: int, split: str = "held_out") -> Iterator[torch.Tensor]:
        """All images of ``split`` in order, ``batch_size`` at a time (for evaluation)."""
        pool = self.split_indices(split)
        for start in range(0, len(pool), int(batch_size)):
            yield self.batch(pool[start : start + int(batch_size)])

    def factors_of(self, indices: Indices) -> np.ndarray:
        """Factor classes ``[B, K]`` of the images at ``indices``."""
        if self.factors is None:
            raise DatasetError(f"dataset {self.name!r} ({self.source}) has no ground-truth factors")
        idx = _as_index(indices, len(self))
        return self.factors[idx.numpy()]

    def __repr__(self) -> str:
        factors = (
            ", ".join(f"{n}={s}" for n, s in zip(self.factor_names, self.factor_sizes)) or "none"
        )
        return (
            f"ImageDataset(name={self.name!r}, N={len(self)}, shape={self.shape}, "
            f"likelihood={self.likelihood!r}, packed={self.packed}, train={len(self.train_indices)}, "
            f"held_out={len(self.held_out_indices)}, factors=[{factors}], source={self.source!r}, "
            f"MB={self.nbytes / 2**20:.1f})"
        )


def _as_index(indices: Indices, n: int) -> torch.Tensor:
    if isinstance(indices, slice):
        return torch.arange(n)[indices]
    if isinstance(indices, (int, np.integer)):
        indices = [int(indices)]
    if not isinstance(indices, torch.Tensor):
        indices = np.asarray(indices)
        if indices.size == 0:
            indices = indices.astype(np.int64)
    idx = torch.as_tensor(indices)
    if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
    idx = idx.long().reshape(-1)
    if len(idx) and (int(idx.min()) < -n or int(idx.max()) >= n):
        raise IndexError(f"index out of range for a dataset of {n} images")
    return idx


# --------------------------------------------------------------------------------- building
def choose_subset(total: int, size: int | None, seed: int, what: str) -> np.ndarray | None:
    """Sorted positions of a random subset of ``size`` out of ``total`` (None: take all)."""
    if size is None or size == total:
        return None
    if size > total:
        raise DatasetError(
            f"size={size} is larger than the {total} images of {what}; "
            f"use size <= {total} or size = None for all of them"
        )
    rng = np.random.default_rng([int(seed), 1])
    return np.sort(rng.choice(total, size=size, replace=False))


def split_positions(n: int, held_out: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and held-out positions: a seeded permutation of 0..n-1 cut at ``held_out``."""
    n_held = int(round(held_out * n))
    if held_out > 0 and n >= 2:
        n_held = min(max(n_held, 1), n - 1)
    perm = np.random.default_rng([int(seed), 2]).permutation(n)
    held = np.sort(perm[:n_held])
    train = np.sort(perm[n_held:])
    return torch.from_numpy(train.astype(np.int64)), torch.from_numpy(held.astype(np.int64))


def is_binary_uint8(images: np.ndarray, chunk: int = 4096) -> bool:
    """True if every value is 0 or 255 (checked in chunks; stops at the first other value)."""
    flat = images.reshape(len(images), -1)
    for start in range(0, len(flat), chunk):
        part = flat[start : start + chunk]
        if not np.all((part == 0) | (part == 255)):
            return False
    return True


def pack_binary(images: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """``[N, ...]`` arrays of 0/1 (or 0/255) to packed bits ``[N, prod(...)/8]``."""
    flat = images.reshape(len(images), -1)
    out = np.empty((len(flat), (flat.shape[1] + 7) // 8), dtype=np.uint8)
    for start in range(0, len(flat), chunk):
        out[start : start + chunk] = np.packbits(flat[start : start + chunk] != 0, axis=1)
    return out


def build_dataset(
    name: str,
    images: np.ndarray,
    *,
    packed: bool,
    channels: int,
    likelihood: str,
    seed: int,
    held_out: float,
    origin_index: np.ndarray,
    factors: np.ndarray | None = None,
    factor_values: np.ndarray | None = None,
    factor_names: Sequence[str] = (),
    factor_sizes: Sequence[int] = (),
    item_names: Sequence[str] | None = None,
    source: str = "",
    info: dict[str, Any] | None = None,
) -> ImageDataset:
    """Wrap loader output (packed ``[N, C*64*64/8]`` or ``[N, C, 64, 64]`` uint8) with a split."""
    n = len(images)
    if n == 0:
        raise DatasetError(f"dataset {name!r} at {source} holds no images")
    train, held = split_positions(n, held_out, seed)
    if factors is not None:
        factors = np.ascontiguousarray(factors, dtype=np.int64)
    if factor_values is not None:
        factor_values = np.ascontiguousarray(factor_values, dtype=np.float64)
    return ImageDataset(
        name=name,
        data=torch.from_numpy(np.ascontiguousarray(images)),
        channels=int(channels),
        image_size=IMAGE_SIZE,
        likelihood=likelihood,
        packed=bool(packed),
        train_indices=train,
        held_out_indices=held,
        origin_index=torch.from_numpy(np.asarray(origin_index, dtype=np.int64)),
        factors=factors,
        factor_values=factor_values,
        factor_names=tuple(factor_names) if factors is not None else (),
        factor_sizes=tuple(int(s) for s in factor_sizes) if factors is not None else (),
        item_names=tuple(item_names) if item_names is not None else None,
        source=str(source),
        info=dict(info or {}),
    )
