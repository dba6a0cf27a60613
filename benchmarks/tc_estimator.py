"""Forward + backward time of the TC estimator's aggregate densities (models.tc), per option.

    python benchmarks/tc_estimator.py [--threads 1] [--batches 256,2048] [--reps 3]

For D = 10 latent dimensions in float32 (as the training step computes them), MSS weights, and
two kinds of posteriors: ``wide`` (means N(0, 1), log-variances N(-1, 1)) and ``trained``
(5 active dimensions with means N(0, 1) and standard deviations ~0.07, 5 collapsed ones at the
prior, as a beta-TCVAE's encoder ends up), it times log q(z) and log prod_d q(z_d) and their
gradients with respect to z, the means and the log-variances: median wall and process CPU
milliseconds of ``--reps`` calls after one untimed call:

* ``dense``: the function before issue 32, kept here: [B, B, D] tensors for the marginals and
  the joint from three float64 matmuls;
* ``dense compiled``: ``torch.compile`` of ``dense`` (its compile time is printed apart);
* ``checkpointed rows``: plain autograd over chunks of rows, each under
  ``torch.utils.checkpoint`` (holds [rows, B, D] at a time; backward re-runs each chunk);
* ``streaming``: ``models.tc.aggregate_log_densities``, the custom autograd function.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from models.distributions import LOG_2PI, Gaussian  # noqa: E402
from models.tc import aggregate_log_densities, log_weights  # noqa: E402

DATASET_SIZE = 737_280
DIMS = 10


def dense(z, mean, logvar):
    logw = log_weights("mss", z.shape[0], DATASET_SIZE, z)
    precision = torch.exp(-logvar)
    log_norm = -0.5 * (LOG_2PI + logvar)
    z64, m64, p64 = z.double(), mean.double(), precision.double()
    quadratic = (z64 * z64) @ p64.t() - 2.0 * z64 @ (p64 * m64).t() + (p64 * m64 * m64).sum(1)[None]
    joint = (log_norm.double().sum(1)[None] - 0.5 * quadratic).to(z.dtype)
    log_qz = torch.logsumexp(joint + logw, dim=1)
    diff = z[:, None, :] - mean[None]
    per_dim = torch.addcmul(log_norm[None] + logw[..., None], diff * diff, precision[None], value=-0.5)
    return log_qz, torch.logsumexp(per_dim, dim=1).sum(1)


def _rows(z_rows, logw_rows, mean, logvar):
    per_dim = logw_rows[..., None] + Gaussian(mean[None], logvar[None]).log_prob_dims(z_rows[:, None])
    return torch.logsumexp(per_dim.sum(2) - (DIMS - 1) * logw_rows, 1), torch.logsumexp(per_dim, 1).sum(1)


def checkpointed_rows(z, mean, logvar, rows=64):
    logw = log_weights("mss", z.shape[0], DATASET_SIZE, z)
    parts = [checkpoint(_rows, z[i:i + rows], logw[i:i + rows], mean, logvar, use_reentrant=False)
             for i in range(0, z.shape[0], rows)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def streaming(z, mean, logvar):
    return aggregate_log_densities(z, Gaussian(mean, logvar), DATASET_SIZE, "mss")


def posteriors(kind: str, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(batch, DIMS, generator=g)
    if kind == "wide":
        logvar = torch.randn(batch, DIMS, generator=g) - 1.0
    else:   # 5 active dimensions (std ~0.07), 5 collapsed to the prior N(0, 1)
        logvar = torch.cat([-5.5 + 0.5 * torch.randn(batch, 5, generator=g),
                            0.05 * torch.randn(batch, 5, generator=g)], 1)
        mean[:, 5:] *= 0.05
    z = mean + (0.5 * logvar).exp() * torch.randn(batch, DIMS, generator=g)
    return [t.requires_grad_() for t in (z, mean, logvar)]


def once(fn, inputs) -> None:
    log_qz, log_prod = fn(*inputs)
    (log_qz.sum() - 2.0 * log_prod.sum()).backward()
    for t in inputs:
        t.grad = None


def time_option(fn, inputs, reps: int) -> tuple[float, float]:
    """Median wall and process CPU seconds (on a shared machine the CPU time is the steadier)."""
    once(fn, inputs)
    wall, cpu = [], []
    for _ in range(reps):
        started, started_cpu = time.perf_counter(), time.process_time()
        once(fn, inputs)
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return float(np.median(wall)), float(np.median(cpu))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="256,2048")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--options", default="dense,dense compiled,checkpointed rows,streaming")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    wanted = args.options.split(",")

    options = {"dense": dense, "checkpointed rows": checkpointed_rows, "streaming": streaming}
    compile_s = {}
    if "dense compiled" in wanted:
        compiled = torch.compile(dense, dynamic=False)
        for b in batches:   # one compile per batch size, timed apart
            started = time.perf_counter()
            once(compiled, posteriors("wide", b))
            compile_s[b] = time.perf_counter() - started
        options["dense compiled"] = compiled

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, D = {DIMS}, float32, MSS; "
          f"ms per forward + backward, wall (process CPU), median of {args.reps}\n")
    print("| option | posteriors | " + " | ".join(f"B = {b}" for b in batches) + " |")
    print("|---|---|" + "---:|" * len(batches))
    for kind in ("wide", "trained"):
        for name in wanted:
            cells = ["{:,.1f} ({:,.1f})".format(*(1e3 * t for t in time_option(options[name], posteriors(kind, b), args.reps)))
                     for b in batches]
            print(f"| {name} | {kind} | " + " | ".join(cells) + " |", flush=True)
    if compile_s:
        print("\ncompile time (first call, forward + backward): "
              + ", ".join(f"B = {b}: {s:.1f} s" for b, s in compile_s.items()))


if __name__ == "__main__":
    main()
