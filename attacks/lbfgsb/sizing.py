"""Chunk sizing for the batched L-BFGS-B solver: how many problems one batch holds (the memory
budget, and on a CPU the last-level cache and a timed probe of the model pass)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from attacks.result import ObjectiveFn

_CPU_BUDGET = 1 << 30
_PROBE_START = 32    # smallest batch the CPU probe times (below it a batch is all overhead)
_CUDA_FRACTION = 0.5


def bytes_per_problem(n_vars: int, memory: int, dtype: torch.dtype = torch.float32,
                      activation_bytes: Optional[int] = None) -> int:
    """Memory one problem needs in a batch: its L-BFGS history (2·m·n values), about a dozen
    working vectors of n values (x, g, bounds, direction, its end, trial point and gradient,
    the Cauchy point and masks) and the model's activations for one forward + backward pass
    (``activation_bytes``; default 64·n values, generous for the project's MLP and conv nets)."""
    elt = torch.empty((), dtype=dtype).element_size()
    if activation_bytes is None:
        activation_bytes = 64 * n_vars * elt
    return int(elt * n_vars * (2 * memory + 14) + activation_bytes)


def device_memory_budget(device: torch.device, budget: Optional[int] = None) -> int:
    """Bytes a batch may use on ``device``: ``budget`` if given; else, on CUDA, half of the
    device's free memory (``torch.cuda.mem_get_info``); else 1 GiB (CPU: the task shares the
    machine, and batches beyond a few hundred problems gain nothing there)."""
    if budget is not None:
        return int(budget)
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return int(_CUDA_FRACTION * free)
    return _CPU_BUDGET


def _cuda_activation_bytes(objective: ObjectiveFn, d0: Tensor) -> Optional[int]:
    """Peak extra CUDA memory of one forward + backward pass of one problem (a probe)."""
    device = d0.device
    try:
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        k = min(2, d0.shape[0])
        d = d0[:k].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            v = objective(d, list(range(k)))
            torch.autograd.grad(v.sum(), d)
        torch.cuda.synchronize(device)
        return max(1, (torch.cuda.max_memory_allocated(device) - base) // k)
    except Exception:  # the probe is an estimate; fall back to the heuristic
        return None


def problems_per_chunk(n_vars: int, memory: int, dtype: torch.dtype, device, *,
                       budget: Optional[int] = None, activation_bytes: Optional[int] = None,
                       n_problems: Optional[int] = None) -> int:
    """How many problems one batch holds on ``device``: the memory budget
    (``device_memory_budget``) divided by ``bytes_per_problem``, at least 1 and at most
    ``n_problems``."""
    per = bytes_per_problem(n_vars, memory, dtype, activation_bytes)
    size = max(1, device_memory_budget(device, budget) // per)
    return int(min(size, n_problems)) if n_problems is not None else int(size)


def cpu_cache_bytes() -> int:
    """The size of this CPU's last-level cache (Linux sysfs), else 32 MiB."""
    best_level, size = -1, 32 << 20
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = int((index / "level").read_text())
            text = (index / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit() and level > best_level:
            best_level, size = level, int(digits) * scale
    return size


def _evaluate(objective: ObjectiveFn, xs: Tensor, idx: Tensor, shape: tuple) -> tuple[Tensor, Tensor]:
    """Δ and its gradient for the flat points ``xs`` ``[k, n]`` of problems ``idx``."""
    d = xs.detach().reshape((xs.shape[0],) + shape).requires_grad_(True)
    with torch.enable_grad():
        v = objective(d, idx)
        (grad,) = torch.autograd.grad(v.sum(), d)
    return v.detach().to(xs.dtype), grad.detach().reshape(xs.shape[0], -1).to(xs.dtype)


def probe_cpu_chunk(objective: ObjectiveFn, x_all: Tensor, shape: tuple, limit: int,
                    start: int = _PROBE_START, problems: Optional[Tensor] = None,
                    ) -> tuple[int, Optional[tuple[Tensor, Tensor]]]:
    """The batch size with the cheapest model pass per problem on this CPU, measured on the
    problems' own starting points.

    On a CPU a bigger batch is not always faster per problem: an MLP's pass keeps getting
    cheaper up to a few hundred problems, a conv net's gets dearer beyond a few dozen, once its
    activations leave the caches. So the starting points are evaluated in consecutive slices of
    ``start``, 2·``start``, 4·``start``, … problems (at most ``limit``), each twice (the first
    call of a shape sets up its kernels) with the second timed, until a size is 10% dearer per
    problem than the best so far. Nothing is wasted beyond those warm-up calls: the timed
    evaluations are the solver's first ones, returned as (f, g) of the first K of ``problems``
    (default: all, in order; None when nothing was probed).
    """
    if problems is None:
        problems = torch.arange(x_all.shape[0], device=x_all.device)
    P = problems.numel()
    if P <= start or limit <= start:
        return min(P, limit), None
    fs, gs = [], []
    best, best_cost, a, size = start, float("inf"), 0, start
    while size <= limit and a + size <= P:
        idx = problems[a:a + size]
        _evaluate(objective, x_all[idx], idx, shape)
        t0 = time.perf_counter()
        f, g = _evaluate(objective, x_all[idx], idx, shape)
        cost = (time.perf_counter() - t0) / size
        fs.append(f)
        gs.append(g)
        if cost < best_cost:
            best, best_cost = size, cost
        elif cost > 1.1 * best_cost:
            break
        a, size = a + size, 2 * size
    return best, (torch.cat(fs), torch.cat(gs))
