"""dSprites: the factor grid generated in code, and a loader for the official ``.npz``.

The grid (Matthey et al. 2017, published as ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz``):

    shape        3   square, ellipse, heart      values 1, 2, 3 (as published)
    scale        6   linspace(0.5, 1, 6)
    orientation 40   linspace(0, 2π, 40)         endpoint *included*, as published: the step is
                                                 2π/39 = 0.16110732 and classes 0 and 39 are the
                                                 same angle (so they render the same image)
    posX        32   linspace(0, 1, 32)
    posY        32   linspace(0, 1, 32)

Image ``i`` has classes ``np.unravel_index(i, (3, 6, 40, 32, 32))``: posY varies fastest, as
in the published file (the published 'color' column, always 1, is dropped here).

Rasterisation (our own; the shapes are close to, not pixel-identical with, the published ones).
Pixel (row r, column c) has centre (c + 0.5, r + 0.5) in a 64 × 64 frame. The sprite's centre
is at x = 16.5 + 31·posX, y = 16.5 + 31·posY (posY grows *downwards*, with the row index), so
one position step is exactly one pixel. A pixel is set when its centre, moved into the shape's
canonical frame (translate, rotate by −orientation, divide by ``UNIT_PX · scale``), lies inside
the canonical shape. Orientation turns the shape counter-clockwise as displayed. Canonical
shapes, in units of ``UNIT_PX · scale`` pixels, each centred on its area centroid:

    square   |u| ≤ 1, |v| ≤ 1                    area 4      (21 px wide at scale 1)
    ellipse  u² + (v/0.5)² ≤ 1                   area π/2    (long axis along x at angle 0)
    heart    (x² + y² − 1)³ ≤ x² y³ with x = u/0.6, y = v/0.6 + 0.2935 (point down at angle 0)
                                                 area ≈ 1.32

so at equal scale the areas order square > ellipse > heart, as in the published images. The
farthest point of any shape is √2 · UNIT_PX < 15 px from its centre, so every sprite stays
inside the frame at every position and angle.

Because positions are whole-pixel shifts, the generator rasterises each of the 720
(shape, scale, orientation) sprites once in a 32 × 32 patch and places it by slicing a padded
copy: the full 737,280-image grid is gathered and bit-packed chunk by chunk (377 MB packed),
and a subset rasterises only the sprites its indices use. ``render_dsprites`` is the direct,
per-pixel rasteriser for any continuous factor values; the two agree exactly on the grid.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from sweep.data.errors import DatasetError
from sweep.data.files import find_data_file

FACTOR_NAMES = ("shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES = (3, 6, 40, 32, 32)
GRID_SIZE = int(np.prod(FACTOR_SIZES))  # 737,280
SHAPE_NAMES = ("square", "ellipse", "heart")
FACTOR_VALUES = (
    np.array([1.0, 2.0, 3.0]),
    np.linspace(0.5, 1.0, 6),
    np.linspace(0.0, 2 * np.pi, 40),  # endpoint included, as in the published file
    np.linspace(0.0, 1.0, 32),
    np.linspace(0.0, 1.0, 32),
)
OFFICIAL_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
NPZ_KEYS = ("imgs", "latents_values", "latents_classes")

SIZE = 64
UNIT_PX = 10.6  # half the square's side at scale 1, in pixels
CENTRE_MIN = 16.5  # sprite centre (pixel units) at pos 0
POS_SPAN = 31.0  # pixels from pos 0 to pos 1: one pixel per position step
ELLIPSE_AXES = (1.0, 0.5)
HEART_SCALE = 0.6
HEART_CENTROID_Y = 0.29347  # area centroid of the classic heart curve (y up)

_PATCH = 32  # sprite patch side; patch pixel 16 holds the sprite centre
_PATCH_CENTRE = 16
_MAX_SHIFT = SIZE - _PATCH - 1  # 31: the largest whole-pixel offset


# ------------------------------------------------------------------------------ the grid
def factor_classes(indices: np.ndarray) -> np.ndarray:
    """Grid indices → factor classes ``[n, 5]`` (shape, scale, orientation, posX, posY)."""
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= GRID_SIZE):
        raise IndexError(f"dSprites grid indices must be in [0, {GRID_SIZE})")
    return np.stack(np.unravel_index(idx, FACTOR_SIZES), axis=-1).astype(np.int64)


def grid_index(classes: np.ndarray) -> np.ndarray:
    """Factor classes ``[n, 5]`` → grid indices (inverse of ``factor_classes``)."""
    classes = np.asarray(classes, dtype=np.int64)
    return np.ravel_multi_index(tuple(classes.T), FACTOR_SIZES).astype(np.int64)


def factor_values(classes: np.ndarray) -> np.ndarray:
    """Factor classes ``[n, 5]`` → factor values ``[n, 5]`` (shape as 1, 2, 3)."""
    classes = np.asarray(classes, dtype=np.int64)
    return np.stack([FACTOR_VALUES[k][classes[:, k]] for k in range(5)], axis=-1)


# ------------------------------------------------------------------------------ rasteriser
def _inside(shape: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of canonical-frame points (u, v) (v up) in shape classes ``shape``."""
    out = np.zeros(u.shape, dtype=bool)
    for s in np.unique(shape):
        sel = shape == s
        su, sv = u[sel], v[sel]
        if s == 0:
            hit = np.maximum(np.abs(su), np.abs(sv)) <= 1.0
        elif s == 1:
            hit = (su / ELLIPSE_AXES[0]) ** 2 + (sv / ELLIPSE_AXES[1]) ** 2 <= 1.0
        elif s == 2:
            x = su / HEART_SCALE
            y = sv / HEART_SCALE + HEART_CENTROID_Y
            x2 = x * x
            r = x2 + y * y - 1.0
            hit = r * r * r <= x2 * y * y * y
        else:
            raise ValueError(f"shape class must be 0 (square), 1 (ellipse) or 2 (heart), got {s}")
        out[sel] = hit
    return out


def _rasterise(shape, scale, orientation, dx, dy_up) -> np.ndarray:
    """Binary images ``[B, H, W]``: ``dx`` ``[B, W]`` and ``dy_up`` ``[B, H]`` are the pixel
    centres' offsets from the sprite centre (x right, y up), in pixels."""
    shape = np.asarray(shape, dtype=np.int64)
    unit = UNIT_PX * np.asarray(scale, dtype=np.float64)
    c = np.cos(np.asarray(orientation, dtype=np.float64)) / unit
    s = np.sin(np.asarray(orientation, dtype=np.float64)) / unit
    c, s = c[:, None, None], s[:, None, None]
    x, y = dx[:, None, :], dy_up[:, :, None]
    u = c * x + s * y  # rotate by -orientation, then scale to the canonical frame
    v = c * y - s * x
    b, h, w = len(shape), dy_up.shape[1], dx.shape[1]
    shape_b = np.broadcast_to(shape[:, None, None], (b, h, w))
    return _inside(shape_b, u, v).astype(np.uint8)


def render_dsprites(shape, scale, orientation, pos_x, pos_y, chunk: int = 512) -> np.ndarray:
    """Directly rasterise sprites with any factor values: uint8 ``[B, 64, 64]`` of 0/1.

    ``shape`` is the class (0 square, 1 ellipse, 2 heart); ``scale`` (1 = full size),
    ``orientation`` (radians, counter-clockwise as displayed) and ``pos_x``/``pos_y`` (in [0, 1];
    posY grows downwards) may be any floats. Arguments broadcast to one length B.
    """
    shape, scale, orientation, pos_x, pos_y = (
        np.atleast_1d(a) for a in np.broadcast_arrays(shape, scale, orientation, pos_x, pos_y)
    )
    centres_x = _snap(CENTRE_MIN + POS_SPAN * pos_x.astype(np.float64))
    centres_y = _snap(CENTRE_MIN + POS_SPAN * pos_y.astype(np.float64))
    pixel = np.arange(SIZE, dtype=np.float64) + 0.5
    out = np.empty((len(shape), SIZE, SIZE), dtype=np.uint8)
    for start in range(0, len(shape), chunk):
        sl = slice(start, start + chunk)
        dx = pixel[None, :] - centres_x[sl, None]
        dy_up = centres_y[sl, None] - pixel[None, :]
        out[sl] = _rasterise(shape[sl], scale[sl], orientation[sl], dx, dy_up)
    return out


def _snap(centre: np.ndarray) -> np.ndarray:
    """Centres within 1e-9 px of a pixel centre go exactly onto it (so k/31 · 31 lands on k)."""
    nearest = np.floor(centre) + 0.5
    return np.where(np.abs(centre - nearest) < 1e-9, nearest, centre)


def sprite_patches(sprite_ids: np.ndarray) -> np.ndarray:
    """The sprites (shape, scale, orientation) = ``np.unravel_index(id, (3, 6, 40))`` drawn
    centred on pixel (16, 16) of a 32 × 32 patch: uint8 ``[S, 32, 32]``."""
    ids = np.asarray(sprite_ids, dtype=np.int64)
    shape, scale_k, orient_k = np.unravel_index(ids, FACTOR_SIZES[:3])
    offsets = np.arange(_PATCH, dtype=np.float64) - _PATCH_CENTRE
    dx = np.broadcast_to(offsets, (len(ids), _PATCH))
    dy_up = np.broadcast_to(-offsets, (len(ids), _PATCH))
    return _rasterise(shape, FACTOR_VALUES[1][scale_k], FACTOR_VALUES[2][orient_k], dx, dy_up)


def generate_dsprites(indices: np.ndarray | None = None, chunk: int = 8192) -> np.ndarray:
    """Bit-packed images ``[n, 512]`` (``np.packbits`` of the 64 × 64 0/1 image) of the grid
    ``indices`` (all 737,280 when None). Only the sprites the indices use are rasterised."""
    idx = np.arange(GRID_SIZE, dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= GRID_SIZE):
        raise IndexError(f"dSprites grid indices must be in [0, {GRID_SIZE})")
    per_sprite = FACTOR_SIZES[3] * FACTOR_SIZES[4]
    sprite, position = np.divmod(idx, per_sprite)
    pos_x, pos_y = np.divmod(position, FACTOR_SIZES[4])
    used, slot = np.unique(sprite, return_inverse=True)
    # Padded canvases: the image at offset (row a, column b) is canvas[31 - a : 95 - a,
    # 31 - b : 95 - b], i.e. window [31 - a, 31 - b] of the 64 × 64 sliding windows.
    canvas = np.zeros((len(used), SIZE + _MAX_SHIFT, SIZE + _MAX_SHIFT), dtype=np.uint8)
    canvas[:, _MAX_SHIFT : _MAX_SHIFT + _PATCH, _MAX_SHIFT : _MAX_SHIFT + _PATCH] = sprite_patches(used)
    windows = np.lib.stride_tricks.sliding_window_view(canvas, (SIZE, SIZE), axis=(1, 2))
    out = np.empty((len(idx), SIZE * SIZE // 8), dtype=np.uint8)
    for start in range(0, len(idx), chunk):
        sl = slice(start, start + chunk)
        images = windows[slot[sl], _MAX_SHIFT - pos_y[sl], _MAX_SHIFT - pos_x[sl]]  # [n, 64, 64] copy
        out[sl] = np.packbits(images.reshape(len(images), -1), axis=1)
    return out


# ------------------------------------------------------------------------------ official file
NPZ_LAYOUT = (
    f"the official dSprites file {OFFICIAL_FILE} (or one .npz holding imgs uint8 [N,64,64] of "
    "0/1, latents_values float [N,6] and latents_classes int [N,6], columns color, shape, scale, "
    "orientation, posX, posY), given as the file's path or a folder holding it"
)


def find_npz(data_dir: Path) -> Path:
    """The dSprites ``.npz`` at ``data_dir`` (a file, or a folder with the official file or a
    single ``.npz``)."""
    return find_data_file(data_dir, OFFICIAL_FILE, (".npz",), "dSprites", NPZ_LAYOUT)


def load_npz(path: Path, choose: Callable[[int], np.ndarray | None], chunk: int = 16384):
    """Read the official ``.npz``. ``choose(N)`` gives the sorted positions to keep (None: all).

    Returns the packed images ``[n, 512]``, their factor classes and values ``[n, 5]`` (the
    'color' column dropped), the factor sizes (from the whole file), N and the positions kept.

    ``imgs`` is streamed from the zip member in chunks and packed as it goes, so the 3 GB of
    unpacked images of the full file are never held at once.
    """
    def bad(what: str) -> DatasetError:
        return DatasetError(f"dSprites: {path}: {what}. Expected {NPZ_LAYOUT}.")

    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise bad(f"not a readable .npz archive ({exc})") from None
    with archive:
        members = {Path(n).stem: n for n in archive.namelist() if n.endswith(".npy")}
        missing = [k for k in NPZ_KEYS if k not in members]
        if missing:
            raise bad(f"missing key(s) {missing}; found keys {sorted(members)}")
        values = _read_member(archive, members["latents_values"], bad)
        classes = _read_member(archive, members["latents_classes"], bad)
        with archive.open(members["imgs"]) as stream:
            shape, dtype, fortran = _npy_header(stream, bad)
            if len(shape) != 3 or shape[1:] != (SIZE, SIZE):
                raise bad(f"imgs has shape {list(shape)}, not [N, 64, 64]")
            n = shape[0]
            for key, arr in (("latents_values", values), ("latents_classes", classes)):
                if arr.ndim != 2 or arr.shape != (n, 6):
                    raise bad(f"{key} has shape {list(arr.shape)}, not [{n}, 6] (N = len(imgs))")
            if fortran or dtype.hasobject:
                raise bad("imgs is stored in Fortran order or as objects; save it as a plain C-order uint8 array")
            subset = choose(n)
            packed = _stream_packed(stream, n, dtype, subset, chunk, bad)
    classes = np.asarray(classes, dtype=np.int64)[:, 1:]
    if classes.size and classes.min() < 0:
        raise bad("latents_classes has negative entries")
    sizes = tuple(int(s) for s in classes.max(axis=0) + 1) if len(classes) else FACTOR_SIZES
    rows = slice(None) if subset is None else subset
    values = np.asarray(values[rows], dtype=np.float64)[:, 1:]
    return packed, classes[rows], values, sizes, n, subset


def _read_member(archive: zipfile.ZipFile, member: str, bad) -> np.ndarray:
    try:
        with archive.open(member) as stream:
            return np.lib.format.read_array(stream, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise bad(f"cannot read {member} ({exc})") from None


def _npy_header(stream, bad):
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    except (ValueError, OSError) as exc:
        raise bad(f"imgs is not a readable .npy array ({exc})") from None
    return tuple(shape), np.dtype(dtype), fortran


def _stream_packed(stream, n: int, dtype: np.dtype, subset, chunk: int, bad) -> np.ndarray:
    row_bytes = SIZE * SIZE * dtype.itemsize
    out = np.empty((n if subset is None else len(subset), SIZE * SIZE // 8), dtype=np.uint8)
    written = 0
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        if subset is not None:
            lo, hi = np.searchsorted(subset, [start, stop])
            if lo == hi:
                if _skip(stream, (stop - start) * row_bytes) != (stop - start) * row_bytes:
                    raise bad("imgs is truncated")
                continue
        raw = stream.read((stop - start) * row_bytes)
        if len(raw) != (stop - start) * row_bytes:
            raise bad(f"imgs is truncated (expected {n} images)")
        block = np.frombuffer(raw, dtype=dtype).reshape(stop - start, SIZE * SIZE)
        if subset is not None:
            block = block[subset[lo:hi] - start]
        top = block.max(initial=0)
        if top > 1 and not np.all((block == 0) | (block == 255)):
            raise bad(f"imgs has values other than 0/1 (max {top}); dSprites images are binary")
        out[written : written + len(block)] = np.packbits(block != 0, axis=1)
        written += len(block)
    return out


def _skip(stream, nbytes: int) -> int:
    skipped = 0
    while skipped < nbytes:
        got = len(stream.read(min(nbytes - skipped, 1 << 24)))
        if got == 0:
            break
        skipped += got
    return skipped

