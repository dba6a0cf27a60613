"""Image-folder loaders: 3D Chairs, CelebA and any folder of images.

Every image is decoded with Pillow, converted to greyscale ("L") or RGB, centre-cropped and
resized to 64 × 64 (Pillow's ``reducing_gap`` / JPEG ``draft`` make large images cheap), and
written into one preallocated uint8 array by a small thread pool (Pillow releases the GIL while
decoding and resizing).

"Mixed" images: since every image is cropped and resized, images of different sizes are
accepted (the sizes found are recorded in ``dataset.info["sizes"]``). What is an error:
  * an unreadable, truncated or non-image file with an image extension (the error names it);
  * an image smaller than a fixed crop (e.g. a 100 × 100 image with CelebA's 140 crop);
  * for ``dataset="folder"`` without ``channels``: a mix of greyscale and colour images, since
    there is then no single obvious colour mode (pass ``channels=1`` or ``channels=3``).
Images with transparency are composited onto white before conversion.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sweep.data.errors import DatasetError

SIZE = 64
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_BLOCK = 256  # images per thread-pool task
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}

CHAIRS_LAYOUT = (
    "the 3D Chairs renders rendered_chairs/<chair_id>/renders/*.png (600x600), i.e. data_dir is "
    "the folder holding rendered_chairs/ or rendered_chairs/ itself; any nested folder of "
    f"{'/'.join(e.lstrip('.') for e in IMAGE_EXTENSIONS[:4])} images also works"
)
CELEBA_LAYOUT = (
    "the aligned CelebA faces img_align_celeba/*.jpg (178x218), i.e. data_dir is the folder "
    "holding img_align_celeba/ or img_align_celeba/ itself"
)
FOLDER_LAYOUT = (
    "a folder (searched recursively) of image files ending in "
    + ", ".join(IMAGE_EXTENSIONS)
)


def find_images(root: Path, layout: str, what: str) -> list[Path]:
    """All image files under ``root`` (recursive, sorted by relative path, hidden files
    skipped). Raises DatasetError if ``root`` is missing, not a folder, or holds no images."""
    if not root.exists():
        raise DatasetError(f"{what}: {root} does not exist. Expected {layout}.")
    if not root.is_dir():
        raise DatasetError(f"{what}: {root} is not a folder. Expected {layout}.")
    found: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(folder) / name)
    if not found:
        raise DatasetError(f"{what}: {root} holds no image files. Expected {layout}.")
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    return found


def grey_or_colour(paths: list[Path], root: Path, what: str, workers: int) -> int:
    """1 if every image is greyscale, 3 if every image is colour; DatasetError if mixed."""
    def mode(path: Path) -> str:
        try:
            with Image.open(path) as im:
                return im.mode
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise _unreadable(path, exc, what, FOLDER_LAYOUT) from None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        blocks = pool.map(lambda s: [mode(p) for p in paths[s : s + _BLOCK]], range(0, len(paths), _BLOCK))
        modes = [m for b in blocks for m in b]
    grey = [p for p, m in zip(paths, modes) if m in GREY_MODES]
    colour = [p for p, m in zip(paths, modes) if m not in GREY_MODES]
    if grey and colour:
        raise DatasetError(
            f"{what}: {root} mixes greyscale images ({len(grey)}, e.g. {grey[0].relative_to(root)}) "
            f"and colour images ({len(colour)}, e.g. {colour[0].relative_to(root)}). Expected "
            f"{FOLDER_LAYOUT}, all greyscale or all colour; or pass channels=1 (convert all to "
            "greyscale) or channels=3 (convert all to RGB)."
        )
    return 1 if grey else 3


def read_images(
    paths: list[Path],
    root: Path,
    *,
    channels: int,
    crop: int | str,
    what: str,
    layout: str,
    workers: int,
) -> tuple[np.ndarray, Counter]:
    """Decode, crop and resize ``paths`` into uint8 ``[N, C, 64, 64]``; also the original
    (width, height) sizes found and their counts."""
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(paths), SIZE, SIZE, channels), dtype=np.uint8)
    view = out[..., 0] if channels == 1 else out

    def one(i: int) -> tuple[int, int]:
        path = paths[i]
        try:
            with Image.open(path) as im:
                original = im.size
                box = _crop_box(original, crop)
                if box is None:
                    raise DatasetError(
                        f"{what}: {path} is {original[0]}x{original[1]}, smaller than the "
                        f"{crop}x{crop} centre crop. Expected {layout}; pass a smaller crop "
                        "(an int, 'square' or 'none')."
                    )
                if im.format == "JPEG":
                    # Decode at 1/2, 1/4 or 1/8 size when the crop still has >= 64 pixels.
                    side = box[2] - box[0]
                    im.draft(mode, (math.ceil(original[0] * SIZE / side), math.ceil(original[1] * SIZE / side)))
                    fx, fy = im.size[0] / original[0], im.size[1] / original[1]
                    box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
                im = _to_mode(im, mode)
                small = im.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)
                view[i] = np.asarray(small, dtype=np.uint8)
        except DatasetError:
            raise
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise _unreadable(path, exc, what, layout) from None
        return original

    def block(start: int) -> Counter:
        return Counter(one(i) for i in range(start, min(start + _BLOCK, len(paths))))

    sizes: Counter = Counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for found in pool.map(block, range(0, len(paths), _BLOCK)):
            sizes.update(found)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2)), sizes


def _crop_box(size: tuple[int, int], crop: int | str) -> tuple[float, float, float, float] | None:
    """Centre-crop box (left, upper, right, lower) or None if the image is too small."""
    w, h = size
    if crop == "none":
        return (0.0, 0.0, float(w), float(h))
    side = min(w, h) if crop == "square" else int(crop)
    if side > w or side > h:
        return None
    left, top = (w - side) / 2.0, (h - side) / 2.0
    return (left, top, left + side, top + side)


def _to_mode(im: Image.Image, mode: str) -> Image.Image:
    """Convert to "L" or "RGB", compositing any transparency onto white."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit or float greyscale: scale its own range to 0..255.
        arr = np.asarray(im, dtype=np.float64)
        top = arr.max() if arr.size else 0.0
        scale = 255.0 / (65535.0 if top > 255 else 255.0) if top > 1.0 else 255.0
        im = Image.fromarray(np.clip(arr * scale, 0, 255).round().astype(np.uint8), "L")
    return im if im.mode == mode else im.convert(mode)


def _unreadable(path: Path, exc: BaseException, what: str, layout: str) -> DatasetError:
    kind = "is not a readable image" if isinstance(exc, (UnidentifiedImageError, SyntaxError)) else "cannot be decoded"
    return DatasetError(
        f"{what}: {path} {kind} ({type(exc).__name__}: {exc}). Expected {layout}; "
        "remove or replace the file."
    )
