"""``load_dataset``: the one entry point from a dataset name (and a local folder) to an
:class:`ImageDataset`, through the registry of datasets (``DATASETS``). Nothing here reads the
network: the real datasets are read from the user's own copy in its published form, and dSprites
can be generated in code.

A dataset of one's own is a ``DatasetSpec`` given to ``register_dataset`` (in a module a sweep
config lists in ``plugins``): its ``load`` returns an ``ImageDataset``, usually through
``sweep.data.dataset.build_dataset``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from sweep.data import arrays, dsprites, images
from sweep.data.dataset import (
    LIKELIHOODS,
    ImageDataset,
    build_dataset,
    choose_subset,
    is_binary_uint8,
    pack_binary,
)
from sweep.data.errors import DatasetError

CELEBA_CROP = 140  # centre crop of the 178 x 218 aligned faces before resizing to 64 x 64

# load(root, size, *, seed, held_out, channels, crop, likelihood, workers) -> ImageDataset, with
# root the local copy (None for a dataset that needs none) and the options of load_dataset
Loader = Callable[..., ImageDataset]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load: Loader
    layout: str                 # what a local copy looks like (said when it is missing or wrong)
    needs_path: bool = True     # False: nothing to point at (generated in code)
    channels: int = 1           # image channels, for planning (a folder's are found on reading it)
    architecture: str = "conv"  # what train.architecture = "auto" picks for it


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Make ``spec.name`` a dataset a sweep config (``grid.datasets``) and ``load_dataset`` take."""
    if not isinstance(spec, DatasetSpec) or not spec.name:
        raise DatasetError("register_dataset() takes a DatasetSpec with a name")
    DATASETS[spec.name] = spec
    return spec


def dataset_names() -> tuple[str, ...]:
    return tuple(DATASETS)


def dataset_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    size: int | None = None,
    seed: int = 0,
    held_out: float = 0.1,
    *,
    channels: int | None = None,
    crop: int | str | None = None,
    likelihood: str | None = None,
    workers: int | None = None,
) -> ImageDataset:
    """Load (or generate) dataset ``name`` as an in-memory :class:`ImageDataset`.

    Args:
        name: a registered dataset (``dataset_names()``): built in, "dsprites_generated" (the
            full dSprites grid drawn in code, no files), "dsprites" (the official .npz),
            "chairs", "faces", "celeba", "folder" (any folder of images).
        data_dir: the local copy (folder, or the file itself for dsprites/faces); unused for
            "dsprites_generated". Each spec's ``layout`` says what it expects.
        size: take a random subset of this many images, chosen by ``seed`` (None: all). For
            generated dSprites only the chosen images are generated; for folders only the
            chosen files are decoded.
        seed: seeds the subset and the train / held-out split.
        held_out: fraction of the images kept out of training, in [0, 1).
        channels: image folders only: 1 (greyscale) or 3 (RGB). Defaults: chairs 1, celeba 3,
            folder: 1 if all images are greyscale, 3 if all are colour (mixed is an error).
        crop: image folders only: centre crop before resizing to 64 x 64: an int (square side
            in pixels), "square" (the largest centred square) or "none" (resize the whole
            image). Default: celeba 140, chairs and folder "square".
        likelihood: "bernoulli" or "gaussian" to override the default (bernoulli for binary
            images, i.e. dSprites or a folder of pure black/white images; gaussian otherwise).
        workers: decoding threads for image folders (default: up to 4, at most the CPU count).

    Returns:
        ImageDataset whose ``batch(indices)`` gives float [B, C, 64, 64] in [0, 1].

    Raises:
        DatasetError: unknown name, bad arguments, or data that is missing or not in the
            expected layout (the message names the path and the layout).
    """
    spec = dataset_spec(name)
    _check_arguments(size, seed, held_out, channels, crop, likelihood)
    root = None
    if spec.needs_path:
        if data_dir is None or str(data_dir) == "":
            raise DatasetError(
                f"dataset {name!r} needs data_dir: the path of your local copy (nothing is "
                f"downloaded). Expected {spec.layout}."
            )
        root = Path(data_dir).expanduser()
    workers = int(workers) if workers else max(1, min(4, os.cpu_count() or 1))
    return spec.load(root, size, seed=int(seed), held_out=float(held_out), channels=channels, crop=crop,
                     likelihood=likelihood, workers=workers)


# ------------------------------------------------------------------------------ per dataset
def _dsprites_generated(root, size, *, seed, held_out, channels, crop, likelihood, workers) -> ImageDataset:
    _native_only("dsprites_generated", channels, crop, 1)
    likelihood = likelihood or "bernoulli"
    subset = choose_subset(dsprites.GRID_SIZE, size, seed, "the dSprites grid")
    origin = np.arange(dsprites.GRID_SIZE, dtype=np.int64) if subset is None else subset
    classes = dsprites.factor_classes(origin)
    return build_dataset(
        "dsprites_generated",
        dsprites.generate_dsprites(origin),
        packed=True,
        channels=1,
        likelihood=likelihood,
        seed=seed,
        held_out=held_out,
        origin_index=origin,
        factors=classes,
        factor_values=dsprites.factor_values(classes),
        factor_names=dsprites.FACTOR_NAMES,
        factor_sizes=dsprites.FACTOR_SIZES,
        source="generated",
        info={"grid_size": dsprites.GRID_SIZE},
    )


def _dsprites_npz(root: Path, size, *, seed, held_out, channels, crop, likelihood, workers) -> ImageDataset:
    _native_only("dsprites", channels, crop, 1)
    likelihood = likelihood or "bernoulli"
    path = dsprites.find_npz(root)
    packed, classes, values, sizes, n, subset = dsprites.load_npz(
        path, lambda n: choose_subset(n, size, seed, str(path))
    )
    return build_dataset(
        "dsprites",
        packed,
        packed=True,
        channels=1,
        likelihood=likelihood,
        seed=seed,
        held_out=held_out,
        origin_index=np.arange(n, dtype=np.int64) if subset is None else subset,
        factors=classes,
        factor_values=values,
        factor_names=dsprites.FACTOR_NAMES,
        factor_sizes=sizes,
        source=str(path),
        info={"file_images": n},
    )


def _faces(root: Path, size, *, seed, held_out, channels, crop, likelihood, workers) -> ImageDataset:
    _native_only("faces", channels, crop, 1)
    path = arrays.find_array_file(root)
    stored = arrays.check_shape(arrays.read_array(path), path)
    grid = tuple(int(s) for s in stored.shape[:-2])
    flat = stored.reshape(-1, arrays.SIZE, arrays.SIZE)
    subset = choose_subset(len(flat), size, seed, str(path))
    origin = np.arange(len(flat), dtype=np.int64) if subset is None else subset
    pixels = arrays.to_uint8(flat if subset is None else flat[subset], path)
    if isinstance(pixels, np.memmap) or not pixels.flags.writeable:
        pixels = np.array(pixels)  # into memory (an .npy is opened memory-mapped)
    if len(grid) > 1:
        classes = np.stack(np.unravel_index(origin, grid), axis=-1)
        names, sizes = arrays.factor_names_for(grid), grid
    else:
        classes, names, sizes = None, (), ()
    return _finish(
        "faces", pixels[:, None], likelihood, seed=seed, held_out=held_out, origin=origin,
        factors=classes, factor_values=None if classes is None else classes.astype(np.float64),
        factor_names=names, factor_sizes=sizes, source=str(path), info={"grid": grid},
    )


def _image_folder(name, root, size, *, seed, held_out, channels, crop, likelihood, workers):
    what = name
    if name == "chairs":
        layout = images.CHAIRS_LAYOUT
        base = root / "rendered_chairs" if (root / "rendered_chairs").is_dir() else root
        channels = channels or 1
        crop = crop or "square"
    elif name == "celeba":
        layout = images.CELEBA_LAYOUT
        base = root / "img_align_celeba" if (root / "img_align_celeba").is_dir() else root
        channels = channels or 3
        crop = crop or CELEBA_CROP
    else:
        layout = images.FOLDER_LAYOUT
        base = root
        crop = crop or "square"
    paths = images.find_images(base, layout, what)
    subset = choose_subset(len(paths), size, seed, str(base))
    chosen = paths if subset is None else [paths[i] for i in subset]
    if channels is None:
        channels = images.grey_or_colour(chosen, base, what, workers)
    pixels, sizes = images.read_images(
        chosen, base, channels=channels, crop=crop, what=what, layout=layout, workers=workers
    )
    origin = np.arange(len(paths), dtype=np.int64) if subset is None else subset
    return _finish(
        name, pixels, likelihood, seed=seed, held_out=held_out, origin=origin,
        item_names=[p.relative_to(base).as_posix() for p in chosen], source=str(base),
        info={"sizes": {f"{w}x{h}": c for (w, h), c in sizes.most_common(10)},
              "distinct_sizes": len(sizes), "crop": crop, "files": len(paths)},
    )


def _finish(name, pixels, likelihood, *, seed, held_out, origin, factors=None, factor_values=None,
            factor_names=(), factor_sizes=(), item_names=None, source="", info=None) -> ImageDataset:
    """uint8 [N, C, 64, 64] 0..255 → dataset; pure black/white images are stored packed."""
    binary = is_binary_uint8(pixels)
    likelihood = likelihood or ("bernoulli" if binary else "gaussian")
    data = pack_binary(pixels) if binary else pixels
    return build_dataset(
        name, data, packed=binary, channels=pixels.shape[1], likelihood=likelihood, seed=seed,
        held_out=held_out, origin_index=origin, factors=factors, factor_values=factor_values,
        factor_names=factor_names, factor_sizes=factor_sizes, item_names=item_names,
        source=source, info=info,
    )


def _folder_of(name: str) -> Loader:
    return lambda root, size, **options: _image_folder(name, root, size, **options)


register_dataset(DatasetSpec("dsprites_generated", _dsprites_generated, "no files (generated in code)",
                             needs_path=False, architecture="mlp"))
register_dataset(DatasetSpec("dsprites", _dsprites_npz, dsprites.NPZ_LAYOUT, architecture="mlp"))
register_dataset(DatasetSpec("chairs", _folder_of("chairs"), images.CHAIRS_LAYOUT))
register_dataset(DatasetSpec("faces", _faces, arrays.FACES_LAYOUT))
register_dataset(DatasetSpec("celeba", _folder_of("celeba"), images.CELEBA_LAYOUT, channels=3))
register_dataset(DatasetSpec("folder", _folder_of("folder"), images.FOLDER_LAYOUT))


# ------------------------------------------------------------------------------ helpers
def _check_arguments(size, seed, held_out, channels, crop, likelihood) -> None:
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1):
        raise DatasetError(f"size: {size!r} must be a positive whole number of images, or None for all")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DatasetError(f"seed: {seed!r} must be a whole number")
    if not isinstance(held_out, (int, float)) or not 0 <= held_out < 1:
        raise DatasetError(f"held_out: {held_out!r} must be a fraction in [0, 1)")
    if channels is not None and channels not in (1, 3):
        raise DatasetError(f"channels: {channels!r} must be 1 (greyscale), 3 (RGB) or None")
    if likelihood is not None and likelihood not in LIKELIHOODS:
        raise DatasetError(f"likelihood: {likelihood!r} must be one of {', '.join(LIKELIHOODS)} or None")
    if crop is not None:
        ok = crop in ("square", "none") or (
            isinstance(crop, (int, np.integer)) and not isinstance(crop, bool) and crop >= 1
        )
        if not ok:
            raise DatasetError(f"crop: {crop!r} must be a positive int (pixels), 'square' or 'none'")


def _native_only(name: str, channels: int | None, crop, native: int) -> None:
    """A dataset stored at 64 x 64 takes neither a crop nor other channels than its own."""
    if crop is not None:
        raise DatasetError(f"crop: only image folders (chairs, celeba, folder) take a crop, not {name!r}")
    if channels is not None and channels != native:
        raise DatasetError(f"channels: {name!r} images have {native} channel(s); leave channels unset")
