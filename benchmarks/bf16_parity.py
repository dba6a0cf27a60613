"""Does bf16 training end where float32 training ends? Held-out ELBO after the same run both ways.

    python benchmarks/bf16_parity.py [--steps 2000] [--seeds 0 1] [--threads 1]

beta-TCVAE (beta 6, |z| 10) at the paper widths (MLP 1200) on the full generated dSprites,
trained ``--steps`` Adam steps at batch 256, lr 1e-3 (the fidelity recipe) from the same
initial weights, on the same batches and the same encoder noise, once in float32 and once under
bf16 autocast (``models.speed``; fused Adam both ways). Both are scored on the same 2,048
held-out images with the same noise draws (``HierarchicalVAE.elbo``, float32). Prints, per seed,
both ELBOs and their difference; then the mean difference beside the float32 runs' spread over
seeds (what a change of seed alone moves the ELBO by), and one line:

    parity: bf16 - fp32 held-out ELBO <d> nats (mean over <n> seeds; per seed <...>)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from models import ModelConfig, build_model  # noqa: E402
from models.speed import TrainingPrecision, adam  # noqa: E402
from sweep.data import load_dataset  # noqa: E402


def held_out_elbo(model, images: torch.Tensor, seed: int = 123) -> float:
    torch.manual_seed(seed)
    with torch.no_grad():
        return float(torch.cat([model.elbo(images[i:i + 512]) for i in range(0, len(images), 512)]).mean())


def train(data, dtype, seed: int, steps: int, batch_size: int, lr: float, mean_image) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(kind="tcvae", beta=6.0, dataset_size=len(data.train_indices)))
    model.set_mean_image(mean_image)
    precision, optimizer = TrainingPrecision(dtype, "cpu"), adam(model.parameters(), lr, "cpu")
    batches = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed + 1)   # the encoder noise: the same stream both ways
    for _ in range(steps):
        x = data.sample_batch(batches, batch_size)
        with precision.autocast():
            loss = model.objective(x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data = load_dataset("dsprites_generated", seed=0, held_out=0.05)
    images = data.batch(data.evaluation_indices(2048, seed=0))
    mean_image = data.pixel_statistics("train")[0]
    fp32, bf16 = [], []
    for seed in args.seeds:
        started = time.perf_counter()
        fp32.append(held_out_elbo(train(data, None, seed, args.steps, args.batch_size, args.lr, mean_image), images))
        bf16.append(held_out_elbo(train(data, torch.bfloat16, seed, args.steps, args.batch_size, args.lr,
                                        mean_image), images))
        print(f"seed {seed}: held-out ELBO float32 {fp32[-1]:.2f}, bf16 {bf16[-1]:.2f}, "
              f"difference {bf16[-1] - fp32[-1]:+.2f} nats ({(time.perf_counter() - started) / 60:.1f} min)",
              flush=True)
    diffs = np.array(bf16) - np.array(fp32)
    spread = f"{np.ptp(fp32):.2f}" if len(fp32) > 1 else "n/a"
    print(f"\nfloat32 spread over seeds (max - min): {spread} nats")
    print(f"parity: bf16 - fp32 held-out ELBO {diffs.mean():+.2f} nats (mean over {len(diffs)} seeds; "
          f"per seed {', '.join(f'{d:+.2f}' for d in diffs)})")


if __name__ == "__main__":
    main()
