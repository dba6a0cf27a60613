"""Training throughput of every model kind on both paper architectures: the default path
(models.speed: bf16 autocast where measured faster, fused Adam) against plain float32.

    python benchmarks/train_step.py [--threads 1] [--batch-size 256] [--iters 10] [--warmup 3]

For each architecture (paper widths) x kind it times full training steps (objective, backward,
Adam step) of the model prepared as the sweep trains it (models.device.prepare_for_training)
after warm-up, twice:

* ``float32``: float32 throughout with torch's default (foreach) Adam, the path before issue 24
  (with today's TC estimator, which is also cheaper in float32);
* ``default``: what ``sweep.train.trainable`` runs, ``TrainingPrecision.choose(..., "auto")`` and
  ``models.speed.adam``.

Each row gives images/s, the step's FLOPs (matmuls and convolutions, forward + backward,
counted by torch.utils.flop_counter) and the share of this machine's matmul peak in the row's
precision (float32 or bf16) they represent, both peaks measured (2048 x 2048 matmuls) just
before and after the row's steps. It ends with one line
per architecture for the beta-TCVAE step:

    speedup <arch>: <X>x over fp32 (<new> ms vs <old> ms per step, <P>% of the bf16 peak)

and then with the throughput anchor of issue 32: the beta-TCVAE (beta = 6) MLP at batch 2048 on
the default path, on 1 thread and on 2 (``--anchor-only`` prints just these two lines):

    throughput mlp-b2048: <N> images/s on 1 thread (<P>% of the bf16 peak), TC <T>% of the step
    throughput mlp-b2048: <N2> images/s on 2 threads

TC is the share of the step spent in ``decompose_top_kl`` (forward + backward): the step's
median time against that of the same step with it replaced by a stub (same model, batch and
optimiser, the two interleaved).
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
from models import ModelConfig, build_model, hierarchical  # noqa: E402
from models.device import prepare_for_training  # noqa: E402
from models.distributions import Gaussian  # noqa: E402
from models.speed import TrainingPrecision, adam  # noqa: E402
from models.tc import TopKL  # noqa: E402

KINDS = [("vae", 1, 1.0), ("tcvae", 1, 4.0), ("tcdlgm", 3, 4.0), ("seatbelt", 3, 4.0)]
SPEEDUP_KIND = "tcvae"
ANCHOR_BATCH, ANCHOR_BETA = 2048, 6.0


def train_step(model, x, precision: TrainingPrecision, optimizer) -> None:
    """One training step as the sweep takes it: objective under the precision's autocast,
    backward, Adam."""
    optimizer.zero_grad(set_to_none=True)
    with precision.autocast():
        loss = model.objective(x).loss
    loss.backward()
    optimizer.step()


def step_flops(model, x) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        model.objective(x).loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_rate(a, b) -> float:
    started = time.perf_counter()
    a @ b
    return 2 * a.shape[0] ** 3 / (time.perf_counter() - started)


def time_steps(model, x, precision: TrainingPrecision, optimizer, warmup: int, iters: int,
               n: int = 2048) -> tuple[float, float, float]:
    """Median seconds per step, and the float32 and bf16 matmul FLOP/s (medians of 3 just
    before and 3 just after the timed steps: the shared machine's speed drifts by a third
    within a run). The peaks are not interleaved with the steps: a 2048^2 bf16 matmul between
    steps slowed the next bf16 step by ~20% (cold caches, the core's AMX frequency licence)."""
    a32, b32 = torch.randn(n, n), torch.randn(n, n)
    a16, b16 = a32.bfloat16(), b32.bfloat16()

    def step():
        train_step(model, x, precision, optimizer)

    def peaks():
        return [matmul_rate(a32, b32) for _ in range(3)], [matmul_rate(a16, b16) for _ in range(3)]

    before32, before16 = peaks()
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    after32, after16 = peaks()
    return float(np.median(times)), float(np.median(before32 + after32)), float(np.median(before16 + after16))


def measure(arch: str, kind: str, layers: int, beta: float, x, path: str, args) -> dict:
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind=kind, layers=layers, beta=beta, architecture=arch))
    model = prepare_for_training(model, x.device).train()   # as sweep.train.trainable trains it
    if path == "float32":
        precision, optimizer = TrainingPrecision(None, "cpu"), torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        precision, optimizer = TrainingPrecision.choose(model, x.device), adam(model.parameters(), 1e-3, x.device)
    with precision.autocast():
        flops = step_flops(model, x)
    sec, peak32, peak16 = time_steps(model, x, precision, optimizer, args.warmup, args.iters)
    peak = peak32 if precision.autocast_dtype is None else peak16
    return dict(arch=arch, kind=kind, layers=layers, path=path, precision=precision.name, sec=sec,
                flops=flops, peak=peak, peak16=peak16)


def _no_tc(z, q, dataset_size, estimator):
    """decompose_top_kl's stand-in for timing a step without it: the same KL, TC = 0."""
    kl = q.log_prob(z) - Gaussian.standard_like(z).log_prob(z)
    zero = torch.zeros_like(kl)
    return TopKL(kl, zero, zero)


def anchor(threads: list[int], warmup: int, iters: int) -> None:
    """The issue-32 throughput lines (module docstring)."""
    x = (torch.rand(ANCHOR_BATCH, 1, 64, 64, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="tcvae", layers=1, beta=ANCHOR_BETA, architecture="mlp"))
    model = prepare_for_training(model, x.device).train()
    precision, optimizer = TrainingPrecision.choose(model, x.device, "auto"), adam(model.parameters(), 1e-3, x.device)

    def step():
        train_step(model, x, precision, optimizer)

    def timed() -> float:
        started = time.perf_counter()
        step()
        return time.perf_counter() - started

    with precision.autocast():
        flops = step_flops(model, x)
    real = hierarchical.decompose_top_kl
    results = {}
    for n in threads:
        torch.set_num_threads(n)
        for _ in range(warmup):
            step()
        with_tc, without_tc = [], []
        for _ in range(iters):
            with_tc.append(timed())
            if n == threads[0]:
                hierarchical.decompose_top_kl = _no_tc
                try:
                    without_tc.append(timed())
                finally:
                    hierarchical.decompose_top_kl = real
        peak16 = float(np.median([matmul_rate(*(torch.randn(2048, 2048).bfloat16() for _ in range(2)))
                                  for _ in range(3)]))
        results[n] = (float(np.median(with_tc)), float(np.median(without_tc)) if without_tc else None, peak16)
    for n, (sec, sec_without, peak16) in results.items():
        line = f"throughput mlp-b{ANCHOR_BATCH}: {ANCHOR_BATCH / sec:,.0f} images/s on {n} thread{'s' * (n > 1)}"
        if sec_without is not None:
            line += (f" ({100 * flops / sec / peak16:.0f}% of the bf16 peak), "
                     f"TC {100 * max(0.0, sec - sec_without) / sec:.0f}% of the step")
        print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed steps first (the allocator and oneDNN settle in the first few)")
    ap.add_argument("--architectures", default="mlp,conv")
    ap.add_argument("--kinds", default=",".join(k for k, _, _ in KINDS))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's choice); the peaks use the same")
    ap.add_argument("--anchor-only", action="store_true",
                    help="print only the two issue-32 throughput lines (batch 2048, 1 and 2 threads)")
    args = ap.parse_args()
    if args.anchor_only:
        anchor([1, 2], args.warmup, args.iters)
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}; "
          "each row against the matmul peak of its precision, measured around its steps\n")
    print("| architecture | kind | L | path | precision | images/s | ms/step | GFLOP/step | GFLOP/s "
          "| peak GFLOP/s | % of peak |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    x = (torch.rand(args.batch_size, 1, 64, 64, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    speedups = []
    wanted = args.kinds.split(",")
    for arch in args.architectures.split(","):
        for kind, layers, beta in (k for k in KINDS if k[0] in wanted):
            rows = {path: measure(arch, kind, layers, beta, x, path, args) for path in ("float32", "default")}
            for r in rows.values():
                rate = r["flops"] / r["sec"]
                print(f"| {arch} | {kind} | {layers} | {r['path']} | {r['precision']} | "
                      f"{args.batch_size / r['sec']:,.0f} | {r['sec'] * 1e3:,.0f} | {r['flops'] / 1e9:.1f} | "
                      f"{rate / 1e9:.1f} | {r['peak'] / 1e9:,.0f} | {100 * rate / r['peak']:.0f}% |", flush=True)
            if kind == SPEEDUP_KIND:
                speedups.append(rows)
    print()
    for rows in speedups:
        old, new = rows["float32"], rows["default"]
        share = 100 * new["flops"] / new["sec"] / new["peak16"]
        print(f"speedup {new['arch']}: {old['sec'] / new['sec']:.2f}x over fp32 ({new['sec'] * 1e3:.0f} ms vs "
              f"{old['sec'] * 1e3:.0f} ms per step, {share:.0f}% of the bf16 peak)")
    anchor([1, 2], args.warmup, args.iters)


if __name__ == "__main__":
    main()
