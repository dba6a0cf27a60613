"""Training throughput of every model kind on both paper architectures, as a markdown table.

    python benchmarks/train_step.py [--batch-size 256] [--iters 10] [--warmup 3] [--threads N]

For each architecture (paper widths) x kind it times full training steps (objective, backward,
Adam step) of the model prepared as the sweep trains it (models.device.prepare_for_training)
after warm-up and reports images/s, the step's FLOPs (matmuls and convolutions, forward +
backward, counted by torch.utils.flop_counter) and the fraction of this machine's float32
matmul peak, measured between the row's steps, those FLOPs represent.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from models import ModelConfig, build_model  # noqa: E402
from models.device import prepare_for_training  # noqa: E402

KINDS = [("vae", 1, 1.0), ("tcvae", 1, 4.0), ("tcdlgm", 3, 4.0), ("seatbelt", 3, 4.0)]


def step_flops(model, x) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        model.objective(x).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_steps(model, x, warmup: int, iters: int, n: int = 2048) -> tuple[float, float]:
    """Median seconds per step, and the median over steps of (matmul FLOP/s just after the
    step): each step is followed by one n×n float32 matmul, so a drift in the machine's speed
    (it shares its cores; the peak moved by a third within one run here) moves both."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    a, b = torch.randn(n, n), torch.randn(n, n)

    def step():
        opt.zero_grad(set_to_none=True)
        model.objective(x).loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
        a @ b
    times, peaks = [], []
    for _ in range(iters):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        t = time.perf_counter()
        a @ b
        peaks.append(2 * n ** 3 / (time.perf_counter() - t))
    return float(np.median(times)), float(np.median(peaks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed steps first (the allocator and oneDNN settle in the first few)")
    ap.add_argument("--architectures", default="mlp,conv")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's choice); the peak uses the same")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}; "
          f"each row against the float32 matmul peak measured between its steps\n")
    print("| architecture | kind | L | images/s | ms/step | GFLOP/step | GFLOP/s | matmul peak GFLOP/s | % of matmul peak |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    x = (torch.rand(args.batch_size, 1, 64, 64) > 0.5).float()
    for arch in args.architectures.split(","):
        for kind, layers, beta in KINDS:
            model = build_model(ModelConfig(kind=kind, layers=layers, beta=beta, architecture=arch))
            # as sweep.trainable trains it (channels_last on CPU for conv nets)
            model = prepare_for_training(model, x.device).train()
            flops = step_flops(model, x)
            sec, peak = time_steps(model, x, args.warmup, args.iters)
            print(f"| {arch} | {kind} | {layers} | {args.batch_size / sec:,.0f} | {sec * 1e3:,.0f} | "
                  f"{flops / 1e9:.1f} | {flops / sec / 1e9:.1f} | {peak / 1e9:.1f} | "
                  f"{100 * flops / sec / peak:.0f}% |", flush=True)


if __name__ == "__main__":
    main()
