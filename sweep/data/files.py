"""Finding a dataset's single data file in what the user pointed at."""

from __future__ import annotations

from pathlib import Path

from sweep.data.errors import DatasetError


def find_data_file(data_dir: Path, official: str, suffixes: tuple[str, ...], dataset: str,
                   layout: str) -> Path:
    """``data_dir`` itself if it is a file; else the official file inside it; else its only file
    with one of ``suffixes``. Anything else is a ``DatasetError`` naming the path and layout."""
    if data_dir.is_file():
        return data_dir
    if not data_dir.is_dir():
        raise DatasetError(f"{dataset}: {data_dir} does not exist. Expected {layout}.")
    if (data_dir / official).is_file():
        return data_dir / official
    found = sorted(p for p in data_dir.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if len(found) == 1:
        return found[0]
    kinds = "/".join(suffixes)
    what = (f"no {kinds} file" if not found else
            f"{len(found)} candidate files ({', '.join(p.name for p in found[:5])}) and no {official}")
    raise DatasetError(f"{dataset}: {data_dir} holds {what}. Expected {layout}.")
