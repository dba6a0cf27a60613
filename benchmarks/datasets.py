"""Dataset benchmark: generating the full dSprites grid, its memory, and batch sampling speed.

    python benchmarks/datasets.py [--batch-size 256] [--seconds 3] [--jpegs 400]

Prints the time to generate all 737,280 dSprites images (bit-packed, in memory), the bytes the
images hold and the process's peak RSS, the random-batch sampling rate (batches/s, images/s),
and the image-folder decoding rate on synthetic CelebA-sized JPEGs written to a temporary folder.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sweep.data import load_dataset  # noqa: E402


def peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def rate(fn, seconds: float) -> tuple[int, float]:
    fn()  # warm up
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        calls += 1
    return calls, time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--jpegs", type=int, default=400, help="0 to skip the folder benchmark")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"peak RSS before: {peak_rss_mb():.0f} MB (python + torch + numpy imported)")

    started = time.perf_counter()
    ds = load_dataset("dsprites_generated", seed=0, held_out=0.1)
    took = time.perf_counter() - started
    factor_bytes = ds.factors.nbytes + ds.factor_values.nbytes
    print(f"dSprites full grid: {len(ds):,} images generated in {took:.2f} s "
          f"({len(ds) / took:,.0f} images/s)")
    print(f"  packed images: {ds.nbytes:,} bytes ({ds.nbytes / 2**20:.0f} MiB; unpacked uint8 would be "
          f"{len(ds) * 4096 / 2**30:.2f} GiB); factors {factor_bytes / 2**20:.0f} MiB")
    print(f"  peak RSS after generation: {peak_rss_mb():.0f} MB")

    generator = torch.Generator().manual_seed(0)
    calls, secs = rate(lambda: ds.sample_batch(generator, args.batch_size), args.seconds)
    print(f"sample_batch({args.batch_size}) on packed dSprites: {calls / secs:,.0f} batches/s, "
          f"{calls * args.batch_size / secs:,.0f} images/s")

    subset_started = time.perf_counter()
    small = load_dataset("dsprites_generated", size=20_000, seed=0)
    print(f"dSprites subset of {len(small):,} (smoke preset size): {time.perf_counter() - subset_started:.2f} s")

    if args.jpegs:
        from PIL import Image

        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "img_align_celeba"
            folder.mkdir()
            rng = np.random.default_rng(0)
            base = rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)
            for k in range(args.jpegs):
                Image.fromarray(np.roll(base, k, axis=1)).save(folder / f"{k:06d}.jpg", quality=90)
            started = time.perf_counter()
            faces = load_dataset("celeba", tmp, held_out=0.1)
            took = time.perf_counter() - started
            gen = torch.Generator().manual_seed(0)
            calls, secs = rate(lambda: faces.sample_batch(gen, args.batch_size), args.seconds / 2)
        print(f"CelebA-like folder: {len(faces)} JPEGs 178x218 -> 64x64 RGB in {took:.2f} s "
              f"({len(faces) / took:,.0f} images/s; 202,599 images would take ~{202_599 / (len(faces) / took) / 60:.1f} min)")
        print(f"sample_batch({args.batch_size}) on uint8 RGB: {calls / secs:,.0f} batches/s, "
              f"{calls * args.batch_size / secs:,.0f} images/s")
    print(f"peak RSS at end: {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
