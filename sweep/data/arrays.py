"""3D Faces: a tensor or array file of 64 × 64 greyscale renders.

The published file is ``basel_face_renders.pth``: a torch uint8 tensor of shape
``[50, 21, 11, 11, 64, 64]`` indexed by (identity, azimuth, elevation, lighting). It is read
with ``torch.load(weights_only=True)``, so a file that would run code is refused. Also read:
``.npy`` and ``.npz`` arrays of shape ``[..., 64, 64]`` (a single-channel axis ``[..., 1, 64, 64]``
is dropped). Leading axes become ground-truth factors: four of them are named as the published
file's; other counts get ``factor_0, factor_1, ...``; a single leading axis means no factors.

Pixel values: uint8 0..255 as is; bool as 0/255; floats in [0, 1] are scaled by 255, floats in
[0, 255] are rounded; anything else is an error.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from sweep.data.errors import DatasetError
from sweep.data.files import find_data_file

SIZE = 64
FACES_FILE = "basel_face_renders.pth"
FACES_FACTORS = ("identity", "azimuth", "elevation", "lighting")
FACES_LAYOUT = (
    f"the 3D Faces file {FACES_FILE} (a torch uint8 tensor [50,21,11,11,64,64] of identity x "
    "azimuth x elevation x lighting), or one .pth/.pt/.npy/.npz array of shape [...,64,64]; "
    "data_dir is the file or a folder holding it"
)
_SUFFIXES = (".pth", ".pt", ".npy", ".npz")


def find_array_file(data_dir: Path) -> Path:
    return find_data_file(data_dir, FACES_FILE, _SUFFIXES, "faces", FACES_LAYOUT)


def read_array(path: Path) -> np.ndarray:
    """The image array stored in ``path`` (not yet validated beyond being an array)."""
    def bad(what: str) -> DatasetError:
        return DatasetError(f"faces: {path}: {what}. Expected {FACES_LAYOUT}.")

    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise bad(f"not a readable .npy array ({exc})") from None
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                if len(keys) != 1:
                    key = next((k for k in keys if k in ("images", "imgs", "arr_0")), None)
                    if key is None:
                        raise bad(f"holds arrays {keys}; expected one array (or one named images/imgs)")
                else:
                    key = keys[0]
                return archive[key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise bad(f"not a readable .npz archive ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError,
            TypeError, ImportError, zipfile.BadZipFile) as exc:
        raise bad(f"not a torch tensor file readable with weights_only=True ({type(exc).__name__}: "
                  f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(obj, torch.Tensor):
        raise bad(f"holds a {type(obj).__name__}, not a tensor")
    return obj.numpy()


def to_uint8(images: np.ndarray, path: Path) -> np.ndarray:
    """Pixel values to uint8 0..255 (see the module docstring)."""
    if images.dtype == np.uint8:
        return np.asarray(images)
    if images.dtype == np.bool_:
        return np.asarray(images).astype(np.uint8) * 255
    if np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating):
        arr = np.asarray(images)
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo >= 0 and hi <= 1.0 and np.issubdtype(arr.dtype, np.floating):
            return np.rint(arr * 255.0).astype(np.uint8)
        if lo >= 0 and hi <= 255.0:
            return np.rint(arr).astype(np.uint8)
        raise DatasetError(
            f"faces: {path}: pixel values span [{lo:g}, {hi:g}]; expected uint8 0..255 or floats "
            f"in [0, 1]. Expected {FACES_LAYOUT}."
        )
    raise DatasetError(f"faces: {path}: pixel dtype {images.dtype} is not numeric. Expected {FACES_LAYOUT}.")


def check_shape(images: np.ndarray, path: Path) -> np.ndarray:
    """``[..., 64, 64]`` (dropping a single-channel axis), or DatasetError."""
    shape = tuple(images.shape)
    if len(shape) >= 4 and shape[-3] == 1:
        images = images.reshape(shape[:-3] + shape[-2:])
        shape = tuple(images.shape)
    if len(shape) < 3 or shape[-2:] != (SIZE, SIZE) or 0 in shape:
        raise DatasetError(
            f"faces: {path} holds an array of shape {list(shape)}, not [..., 64, 64]. "
            f"Expected {FACES_LAYOUT}."
        )
    return images


def factor_names_for(grid: tuple[int, ...]) -> tuple[str, ...]:
    if len(grid) == len(FACES_FACTORS):
        return FACES_FACTORS
    return tuple(f"factor_{k}" for k in range(len(grid)))
