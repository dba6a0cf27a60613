"""How much of the held-out pixel variance the models' reconstructions explain (``recon_r2``).

``recon_r2`` = 1 − Σ‖rec(x) − x‖² / Σ‖mean image − x‖² (``sweep.train.evaluate.recon_r2``) is the
health rule that serves every likelihood (``sweep.train.health``, ``min_recon_r2``). This prints it, per
model and number of training steps, with the held-out ELBO, its gain over the mean-image model,
the active units and the sweep's verdict (``sweep.train.health.verdict``), then a summary line per step
count: ``recon_r2`` min / median / max and how many models are healthy. The README's table
("Training and model health") comes from these three commands:

    python benchmarks/recon_r2.py dsprites --steps 0 100 300 700 --seeds 0 1
    python benchmarks/recon_r2.py dsprites --steps 700 --seeds 0 1 --no-offset
    python benchmarks/recon_r2.py folder --steps 0 150 --seeds 0 1 2

``dsprites``: the smoke sweep's seven models on its data, widths, batch and learning rate,
trained as ``benchmarks/training_health.py`` trains them (same seeds, same batches); each model
is evaluated after every step count in ``--steps`` (one run, evaluated along the way: the
evaluation reseeds torch, so a count after the first is not bit-identical to a run of that
many steps alone), on the smoke preset's ``eval_size`` held-out images. ``--no-offset``: the
decoder's mean-image offset left at zero (training_health.py's ``no-offset`` variant).

``folder``: a folder of 160 greyscale PNGs of one grey square or disc each (continuous pixels, so
the folder loader picks a Gaussian likelihood; the images of ``tests/test_sweep_health.py``'s
folder test), 4 kinds, an MLP of width 64, |z| = 4, batch 32, lr 0.01, evaluated with the sweep's
own ``_evaluate`` on 64 held-out images.

One thread; the dsprites runs take about half a minute per model and 700 steps on one core.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import build_model  # noqa: E402
from results.schema import TRAIN_ELBO  # noqa: E402
from sweep.train.health import HEALTHY, verdict  # noqa: E402

DSPRITES_MODELS = [("vae", 1.0, 1), ("tcvae", 1.0, 1), ("tcvae", 6.0, 1), ("tcdlgm", 1.0, 2),
                   ("tcdlgm", 6.0, 2), ("seatbelt", 1.0, 2), ("seatbelt", 6.0, 2)]
FOLDER_MODELS = [("tcdlgm", 4.0, 2), ("seatbelt", 4.0, 2), ("vae", 1.0, 1), ("tcvae", 6.0, 1)]


def shapes_folder(root: Path, n: int = 160, seed: int = 0) -> Path:
    """Greyscale 64×64 PNGs of one grey square or disc each, of random size, place and brightness
    on a dark background of random grey: continuous pixels, so the folder loader picks a Gaussian
    (tests/test_sweep_health.py's folder test uses them too)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    root.mkdir()
    for i in range(n):
        image = Image.new("L", (64, 64), int(rng.integers(10, 40)))
        r = int(rng.integers(8, 20))
        cx, cy = (int(c) for c in rng.integers(r, 64 - r, size=2))
        draw = ImageDraw.Draw(image)
        (draw.ellipse if i % 2 else draw.rectangle)([cx - r, cy - r, cx + r, cy + r],
                                                    fill=int(rng.integers(120, 250)))
        image.save(root / f"{i:03d}.png")
    return root


def _report(results: dict, kind: str, beta: float, layers: int, seed: int, steps: int,
            row: dict, model, seconds: float) -> None:
    health = verdict(row, model)[0]
    results[steps].append((row["recon_r2"], health))
    gain = (row[TRAIN_ELBO] - row["elbo_mean_image"]) / abs(row["elbo_mean_image"])
    print(f"{kind:9s} b={beta:g} L={layers} seed={seed} steps={steps:4d} elbo={row[TRAIN_ELBO]:8.1f} "
          f"mean_img={row['elbo_mean_image']:8.1f} gain={gain:+.0%} r2={row['recon_r2']:+.3f} "
          f"units={row['active_units']} {health} t={seconds:.0f}s", flush=True)


def _train(model, batches, optimizer, done: int, target: int) -> int:
    model.train()
    while done < target:
        loss = model.objective(batches()).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done += 1
    return done


def dsprites(steps: list[int], seeds: list[int], offset: bool, results: dict) -> None:
    from sweep.config import model_config_for
    from sweep.config.presets import smoke
    from sweep.config.trials import TrialSpec
    from sweep.train.evaluate import evaluate
    from sweep.train.trainable import cached_dataset, training_pixel_statistics

    cfg = smoke()
    data = cached_dataset("dsprites_generated", None, cfg.data.size, cfg.data.split_seed, cfg.data.held_out)
    mean, scale = training_pixel_statistics(data)
    images = data.batch(data.evaluation_indices(cfg.train.eval_size, cfg.data.split_seed))
    for seed in seeds:
        for kind, beta, layers in DSPRITES_MODELS:
            torch.manual_seed(seed * 7919)
            trial = TrialSpec("dsprites_generated", kind, beta, layers, cfg.grid.z_dims[0], seed)
            model = build_model(model_config_for(trial, cfg.train, data))
            if offset:
                model.set_mean_image(mean)
            optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
            generator = torch.Generator().manual_seed(seed * 1_000_003)
            done, started = 0, time.perf_counter()
            for target in steps:
                done = _train(model, lambda: data.sample_batch(generator, cfg.train.batch_size),
                              optimizer, done, target)
                row, _ = evaluate(model, images, mean, scale, noise_sigmas=[], noise_samples=1,
                                  batch_size=256, seed=seed)
                _report(results, kind, beta, layers, seed, done, row, model, time.perf_counter() - started)


def folder(steps: list[int], seeds: list[int], offset: bool, results: dict) -> None:
    from sweep.config import TrainConfig
    from sweep.config.trials import TrialSpec
    from sweep.data import load_dataset
    from sweep.train.trainable import _evaluate, model_config_for, training_pixel_statistics

    root = shapes_folder(Path(tempfile.mkdtemp()) / "shapes")
    data = load_dataset("folder", data_dir=root, seed=0, held_out=0.25)
    print(f"{data.likelihood} likelihood, residual std {training_pixel_statistics(data)[1]:.4f}")
    train = TrainConfig(steps=max(steps), batch_size=32, lr=1e-2, architecture="mlp", hidden_dim=64,
                        eval_size=64, noise_sigmas=[], noise_samples=1)
    for kind, beta, layers in FOLDER_MODELS:
        for seed in seeds:
            trial = TrialSpec("folder", kind, beta, layers, 4, seed)
            torch.manual_seed(seed)
            model = build_model(model_config_for(trial, train, data))
            if offset:
                model.set_mean_image(training_pixel_statistics(data)[0])
            optimizer = torch.optim.Adam(model.parameters(), lr=train.lr)
            generator = torch.Generator().manual_seed(seed)
            done, started = 0, time.perf_counter()
            for target in steps:
                done = _train(model, lambda: data.sample_batch(generator, train.batch_size, split="train"),
                              optimizer, done, target)
                row, _ = _evaluate(model, data, train, trial, 0)
                _report(results, kind, beta, layers, seed, done, row, model, time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=("dsprites", "folder"))
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="evaluate after each (default: 0 700 for dsprites, 0 150 for folder)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="default: 0 1 for dsprites, 0 1 2 for folder")
    parser.add_argument("--no-offset", action="store_true",
                        help="leave the decoder's mean-image offset at zero")
    args = parser.parse_args()
    torch.set_num_threads(1)
    is_dsprites = args.dataset == "dsprites"
    steps = sorted(set(args.steps or ([0, 700] if is_dsprites else [0, 150])))
    seeds = args.seeds or ([0, 1] if is_dsprites else [0, 1, 2])
    results: dict[int, list] = defaultdict(list)
    (dsprites if is_dsprites else folder)(steps, seeds, not args.no_offset, results)
    print()
    for target in steps:
        r2 = [r for r, _ in results[target]]
        healthy = sum(h == HEALTHY for _, h in results[target])
        print(f"summary {args.dataset}{' no-offset' if args.no_offset else ''} steps={target}: "
              f"recon_r2 min / median / max {min(r2):+.3f} / {statistics.median(r2):+.3f} / "
              f"{max(r2):+.3f}, {healthy}/{len(r2)} healthy")


if __name__ == "__main__":
    main()
