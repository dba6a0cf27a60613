"""A batched projected L-BFGS solver in torch: every attack problem of a checkpoint at once.

``BatchedLBFGSB`` (config name ``"batched"``) has the interface of ``ScipyLBFGSB``: it minimises
``objective(d, idx)`` (one Δ per problem) over the box ``lower <= d <= upper``, but it pushes the
whole batch of still-running problems through the model in one forward and one backward pass per
evaluation. The problems are independent, so the gradient of ``values.sum()`` is every problem's
own gradient, and every other step below is row-wise:

* **Per-problem L-BFGS history** ``W: [A, m, 2, n]`` (the pairs s = Δd, y = Δg; m =
  ``config.batch_history``, or ``config.memory`` when that is None) in a ring shared by the
  batch: every iteration each problem writes one slot, left *empty* (masked out) when its step
  failed or its pair is skipped (sᵀy <= ε·yᵀy, ε the
  float64 machine epsilon as in scipy), so slot order is time order for every problem and no
  per-problem gather is needed. A failed line search empties that problem's slots.
* **Subspace direction** p = −(ZᵀBZ)⁻¹Zᵀg (``subspace_direction``): a variable is *fixed* when
  it sits on a bound and its gradient points out of the box (Z keeps the free ones); B is the
  L-BFGS Hessian in the compact form of Byrd, Nocedal & Schnabel (1994), B₀ = θI with θ = yᵀy /
  sᵀy of the newest pair, and the reduced system is solved with the Sherman–Morrison–Woodbury
  identity as in L-BFGS-B's subspace minimisation. Restricting the Hessian, not its inverse
  (−ZᵀHZ g), matters on binary images, where every pixel starts next to a bound: on the smoke
  checkpoints it took the MLP latent attacks within tolerance of scipy's Δ from 54% to 78%.
  Per iteration this takes one batched product over the history (which also yields the new
  pair's products, its row of the free-variable Gram matrix and the next gradient's,
  ``[A, 5, n] @ [A, n, 2m]``), an update of that Gram matrix over the variables whose free
  status changed (``_update_free_gram``, float64), one product for the step
  ``[A, 1, 2m] @ [A, 2m, n]`` and a 2m×2m solve in float64. What it leaves out of L-BFGS-B is
  the generalised Cauchy point: the active set is read off the bounds and the gradient, not
  off the path of steepest descent.
* **Per-problem line search** along the projected path x(t) = Π(x + t·p): Armijo
  (f(x(t)) ≤ f(x) + c₁ gᵀ(x(t) − x), tested in float64 as scipy does) with backtracking by the
  minimiser of the cubic through φ(0), φ'(0), φ(t), φ'(t) (the gradient at each trial comes
  with its evaluation; the cubic finds the kink of λ‖d‖ at d = 0, which plain halving
  approaches only linearly), safeguarded in [0.001 t, 0.5 t]; first trial t = 1 (t = min(1,
  1/‖p‖₂) while a problem has no curvature pair, as scipy does). An accepted step along which
  φ still falls steeply (φ'(t) < c₂ φ'(0), c₂ = 0.9: the curvature condition of scipy's
  Moré–Thuente search fails) is lengthened 4× while that improves f, at most 3 times. Only the
  problems still searching are evaluated. A search stops early when a trial's predicted
  decrease is below the resolution of f (ftol·|f|). A failed search clears that problem's
  memory and retries with the projected gradient once; a second failure ends it (scipy's
  ``ABNORMAL_TERMINATION``, or convergence when it was at the noise floor).
* **Per-problem stopping**: relative decrease (f_k − f_{k+1}) ≤ ftol · max(|f_k|, |f_{k+1}|)
  after a quasi-Newton step, with ftol = ``config.batch_ftol`` (default scipy's factr ·
  eps(float64): with Δ evaluated in float32 that means "f did not change"; a looser eps(float32)
  stopped a few latent attacks on a plateau that scipy then left); projected-gradient ∞-norm ≤
  ``config.pgtol``; ``config.maxiter`` iterations; ``config.maxfun`` evaluations. A problem that
  stops is written out and leaves the batch (the batch shrinks); it never changes again.
* **Chunking**: ``problems_per_chunk`` bounds a batch by the memory it needs (history
  2·m·n values + working vectors + the model's activations per problem) and the device's budget
  (``config.batch_memory`` or, by default, 1 GiB on CPU and half the free memory on CUDA, where
  a one-problem probe measures the activations). On CUDA that bound is the batch. On a CPU the
  batch's histories must also fit the last-level cache (``cpu_cache_bytes``; with m = 25 a
  history is 0.8 MB, and read from memory twice per iteration it costs more than an MLP's
  pass: the 510 problems of a checkpoint in one batch ran at half the speed of batches of 33),
  and ``probe_cpu_chunk`` times the first evaluations at growing batch sizes within that bound
  and keeps the cheapest per problem (a conv net's pass gets dearer beyond a few dozen problems
  there). ``config.batch_chunk`` overrides both. Chunks run one after another; within one,
  stopped problems drop out of every evaluation at once and out of the history arrays when
  half of the batch has stopped (a copy of the history costs a pass).

Each problem's trajectory depends only on its own data, so the result does not depend on which
problems share a batch (up to the float rounding of the model's batched kernels; the solver's
own sums are batch-invariant, which a test checks bitwise).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from attacks.result import ObjectiveFn, SolveResult

__all__ = ["BatchedLBFGSB", "subspace_direction", "problems_per_chunk", "probe_cpu_chunk",
           "bytes_per_problem", "device_memory_budget"]

MSG_FTOL = "CONVERGENCE: REL_REDUCTION_OF_F_<=_FACTR*EPSMCH"
MSG_PGTOL = "CONVERGENCE: NORM_OF_PROJECTED_GRADIENT_<=_PGTOL"
MSG_MAXITER = "STOP: TOTAL NO. of ITERATIONS REACHED LIMIT"
MSG_MAXFUN = "STOP: TOTAL NO. of f AND g EVALUATIONS EXCEEDS LIMIT"
MSG_ABNORMAL = "ABNORMAL_TERMINATION_IN_LNSRCH"

_C1 = 1e-4           # Armijo constant (scipy's ftol of dcsrch is 1e-3; 1e-4 is the textbook value)
_MAX_LS = 20         # trial steps per line search (scipy: 20)
_C2 = 0.9            # curvature constant of the Wolfe conditions (scipy's gtol of dcsrch)
_GROW = 4.0          # factor by which a step is lengthened (dcsrch extrapolates up to 4×)
_MAX_LONGER = 3      # lengthenings per line search
_CPU_BUDGET = 1 << 30
_PROBE_START = 32    # smallest batch the CPU probe times (below it a batch is all overhead)
_TINY = float(np.finfo(np.float32).tiny)
_CUDA_FRACTION = 0.5


# --- chunk sizing ------------------------------------------------------------------------------

def bytes_per_problem(n_vars: int, memory: int, dtype: torch.dtype = torch.float32,
                      activation_bytes: Optional[int] = None) -> int:
    """Memory one problem needs in a batch: its L-BFGS history (2·m·n values), about a dozen
    working vectors of n values (d, g, bounds, direction, trial point and gradient, masks, the
    two-loop's q and r) and the model's activations for one forward + backward pass
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


# --- the solver --------------------------------------------------------------------------------

class BatchedLBFGSB:
    """Projected L-BFGS with per-problem history, line search and stopping, run on whole
    batches in torch (CPU or GPU). See the module docstring for the algorithm."""

    name = "batched"

    def solve(self, objective: ObjectiveFn, d0: Tensor, lower: Tensor, upper: Tensor,
              config) -> SolveResult:
        P = d0.shape[0]
        shape = tuple(d0.shape[1:])
        n = int(np.prod(shape)) if shape else 1
        dtype, device = d0.dtype, d0.device
        out = torch.empty_like(d0)
        res = dict(
            f=np.full(P, np.nan), it=np.zeros(P, dtype=np.int64), nfev=np.zeros(P, dtype=np.int64),
            secs=np.zeros(P), conv=np.zeros(P, dtype=bool), msgs=[""] * P,
        )
        if P == 0:
            return SolveResult(d=out, objective=res["f"], iterations=res["it"],
                               evaluations=res["nfev"], seconds=res["secs"], converged=res["conv"],
                               messages=[])
        lo_all = lower.detach().to(device=device, dtype=dtype).reshape(P, n)
        hi_all = upper.detach().to(device=device, dtype=dtype).reshape(P, n)
        x_all = torch.minimum(torch.maximum(d0.detach().reshape(P, n), lo_all), hi_all)

        chunk = getattr(config, "batch_chunk", None)
        start = None  # (f, g) at d0 of the first problems, evaluated by the CPU probe
        if chunk is None:
            act = (_cuda_activation_bytes(objective, x_all.reshape((P,) + shape))
                   if device.type == "cuda" else None)
            chunk = problems_per_chunk(n, _history(config), dtype, device,
                                       budget=getattr(config, "batch_memory", None),
                                       activation_bytes=act, n_problems=P)
            if device.type == "cpu":
                # the histories of a batch stay in the last-level cache: each iteration reads
                # them twice, and from memory that costs more than an MLP's pass
                history = 2 * _history(config) * n * x_all.element_size()
                chunk = min(chunk, max(1, cpu_cache_bytes() // history))
                chunk, start = probe_cpu_chunk(objective, x_all, shape, chunk)
        for a in range(0, P, int(chunk)):
            ids = torch.arange(a, min(a + int(chunk), P), device=device)
            self._solve_chunk(objective, x_all, lo_all, hi_all, ids, shape, config, out, res,
                              start)
        return SolveResult(d=out, objective=res["f"], iterations=res["it"], evaluations=res["nfev"],
                           seconds=res["secs"], converged=res["conv"], messages=res["msgs"])

    # one batch of problems, from start to the last one's stop
    def _solve_chunk(self, objective, x_all, lo_all, hi_all, ids, shape, config, out, res,
                     start=None):
        t_start = time.perf_counter()
        dtype, device = x_all.dtype, x_all.device
        m = _history(config)
        maxiter, maxfun, pgtol = int(config.maxiter), int(config.maxfun), float(config.pgtol)
        ftol = getattr(config, "batch_ftol", None)
        if ftol is None:  # scipy's: factr · eps(float64)
            ftol = float(config.factr) * float(np.finfo(np.float64).eps)
        eps = float(np.finfo(np.float64).eps)  # curvature test, as scipy's L-BFGS-B
        f64 = torch.float64

        def evaluate(xs: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
            return _evaluate(objective, xs, idx, shape)

        A = ids.shape[0]
        x = x_all[ids].clone()
        lo, hi = lo_all[ids], hi_all[ids]
        n = x.shape[1]
        # history: W[:, k, 0] = s_k, W[:, k, 1] = y_k in ring slot k (the ring is shared by the
        # batch, so slot order = time order for every problem); SY[k, j] = s_kᵀy_j,
        # YY[k, j] = y_kᵀy_j; valid[k]: slot k holds an accepted pair since the last reset
        W = torch.zeros(A, m, 2, n, dtype=dtype, device=device)
        SY = torch.zeros(A, m, m, dtype=f64, device=device)
        YY = torch.zeros(A, m, m, dtype=f64, device=device)
        SS = torch.zeros(A, m, m, dtype=f64, device=device)
        # GF[j, a, i, b]: the history's Gram matrix over the free variables (Z), pair j's
        # a-vector (s|y) against pair i's b-vector, kept up to date as pairs and the free set
        # change (recomputing it costs 4m² products per variable and iteration)
        GF = torch.zeros(A, m, 2, m, 2, dtype=f64, device=device)
        valid = torch.zeros(A, m, dtype=torch.bool, device=device)
        gamma = torch.ones(A, dtype=f64, device=device)          # H0 = gamma·I
        retried = torch.zeros(A, dtype=torch.bool, device=device)  # a failed search was retried
        iters = torch.zeros(A, dtype=torch.long, device=device)
        nfev = torch.zeros(A, dtype=torch.long, device=device)
        alive = torch.ones(A, dtype=torch.bool, device=device)
        head, pushes = 0, 0

        # the first evaluation, except for the problems the CPU probe evaluated already
        # (the first ones: ids below the number it returned)
        if start is None:
            f, g = evaluate(x, ids)
        else:
            f = torch.empty(A, dtype=dtype, device=device)
            g = torch.empty(A, n, dtype=dtype, device=device)
            known = ids < start[0].shape[0]
            f[known], g[known] = start[0][ids[known]], start[1][ids[known]]
            if bool((~known).any()):
                f[~known], g[~known] = evaluate(x[~known], ids[~known])
        nfev += 1

        def free_gradient(x, g):
            """g with the components of the variables fixed at a bound zeroed (those on a bound
            whose gradient points out of the box), and the free mask as floats."""
            freef = (~(((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0)))).to(dtype)
            return g * freef, freef

        gz, freef = free_gradient(x, g)
        ab = None  # [A, k, 2]: (s_jᵀ gz, y_jᵀ gz) per ring slot, from the last history pass
        pending = torch.full((A,), -1, dtype=torch.long, device=device)  # stop decided last step
        finished: list[Tensor] = []  # global ids of the problems written out

        while True:
            # --- stopping tests at the current points; stopped problems are written out
            pg = (torch.minimum(torch.maximum(x - g, lo), hi) - x).abs().amax(dim=1)
            code = pending
            code = torch.where((code < 0) & ~torch.isfinite(f), torch.full_like(code, 4), code)
            code = torch.where((code < 0) & (pg <= pgtol), torch.full_like(code, 1), code)
            code = torch.where((code < 0) & (iters >= maxiter), torch.full_like(code, 2), code)
            code = torch.where((code < 0) & (nfev >= maxfun), torch.full_like(code, 3), code)
            stop = alive & (code >= 0)
            if bool(stop.any()):
                done = torch.nonzero(stop).flatten()
                gid = ids[done]
                out.view(out.shape[0], -1)[gid] = x[done].to(out.dtype)
                gid_np = gid.cpu().numpy()
                res["f"][gid_np] = f[done].double().cpu().numpy()
                res["it"][gid_np] = iters[done].cpu().numpy()
                res["nfev"][gid_np] = nfev[done].cpu().numpy()
                for p_, c in zip(gid_np, code[done].cpu().numpy()):
                    res["msgs"][p_] = _MESSAGES[int(c)]
                    res["conv"][p_] = int(c) in (0, 1)
                finished.append(gid)
                alive = alive & ~stop
                n_alive = int(alive.sum())
                if n_alive == 0:
                    break
                if n_alive <= A // 2:  # the batch shrinks (lazily: copying W costs a pass)
                    keep = torch.nonzero(alive).flatten()
                    (ids, x, lo, hi, f, g, gz, freef, W, SY, YY, SS, GF, valid, gamma, retried,
                     iters, nfev, alive) = (
                        t_[keep] for t_ in (ids, x, lo, hi, f, g, gz, freef, W, SY, YY, SS, GF,
                                            valid, gamma, retried, iters, nfev, alive))
                    ab = ab[keep] if ab is not None else None
                    A = n_alive
            live = torch.nonzero(alive).flatten()

            # --- direction p = −ZᵀHZ g: the L-BFGS inverse Hessian H in compact form (Byrd,
            # Nocedal & Schnabel 1994), restricted to the free variables Z
            k = min(pushes, m)
            if k:
                order = list(range(k)) if pushes <= m else [(head + j) % m for j in range(m)]
                p = subspace_direction(W[:, :k], order, valid, gamma, SY, SS, GF, ab, gz, freef)
            else:
                p = -gz
            gp = torch.linalg.vecdot(g, p)
            bad = ~(gp < 0)  # not a descent direction (rounding): use the projected gradient
            if bool(bad.any()):
                p = torch.where(bad[:, None], -gz, p)
                gp = torch.where(bad, torch.linalg.vecdot(g, p), gp)
            pnorm = torch.linalg.vector_norm(p, dim=1)
            npairs = valid.sum(dim=1)
            t = torch.where((npairs == 0) | bad, torch.clamp(1.0 / pnorm, max=1.0),
                            torch.ones_like(pnorm))
            t = torch.where(torch.isfinite(t), t, torch.ones_like(t))

            # --- line search along the projected path; only the problems still searching
            x_new, f_new, g_new = x.clone(), f.clone(), g.clone()
            accepted = torch.zeros(A, dtype=torch.bool, device=device)
            at_floor = torch.zeros(A, dtype=torch.bool, device=device)
            extended = torch.zeros(A, dtype=torch.long, device=device)  # lengthenings so far
            searching = live
            for _ in range(_MAX_LS):
                if searching.numel() == 0:
                    break
                xs, ps = x[searching], p[searching]
                los, his = lo[searching], hi[searching]
                xt = torch.minimum(torch.maximum(xs + t[searching, None] * ps, los), his)
                ft, gt = evaluate(xt, ids[searching])
                nfev[searching] += 1
                fs = f[searching]
                decrease = torch.linalg.vecdot(g[searching], xt - xs)  # < 0 along a descent path
                # slopes of φ(t) = Δ(Π(x + t·p)) at 0 and at the trial (variables on a bound
                # that p pushes outwards do not move)
                moving = ~(((xs <= los) & (ps < 0)) | ((xs >= his) & (ps > 0)))
                d_a = torch.linalg.vecdot(g[searching], ps * moving.to(dtype))     # φ'(0)
                inside = (xt > los) & (xt < his)
                d_b = torch.linalg.vecdot(gt, ps * inside.to(dtype))                # φ'(t)
                lengthening = extended[searching] > 0
                # the Armijo test in float64, as scipy's (a step that leaves the float32 f
                # unchanged does not pass it unless its predicted decrease is below f's ulp);
                # a lengthened step must also improve on the step already accepted
                ok = (torch.isfinite(ft) & torch.isfinite(gt).all(dim=1) & (xt != xs).any(dim=1)
                      & (ft.double() <= fs.double() + _C1 * decrease.double())
                      & (~lengthening | (ft < f_new[searching])))
                if bool(ok.any()):
                    acc = searching[ok]
                    x_new[acc], f_new[acc], g_new[acc] = xt[ok], ft[ok], gt[ok]
                    accepted[acc] = True
                # an accepted step along which φ still falls steeply (the curvature condition
                # φ'(t) >= c₂ φ'(0) fails) is lengthened, as scipy's Moré–Thuente search
                # does: on a flat stretch the quasi-Newton step is far too short
                longer = ok & (d_b < _C2 * d_a) & (extended[searching] < _MAX_LONGER)
                longer = longer & (nfev[searching] < maxfun)
                rej = ~ok & ~lengthening  # a failed lengthening keeps the step accepted before
                # a trial whose predicted decrease is below the resolution of f cannot pass a
                # meaningful Armijo test: the problem is at its noise floor along p
                floor = rej & (decrease.abs() <= ftol * torch.clamp(fs.abs(), min=_TINY))
                if bool(floor.any()):
                    at_floor[searching[floor]] = True
                    rej = rej & ~floor
                still = searching[rej]
                if still.numel():
                    # next trial: safeguarded minimiser of the cubic through φ(0), φ'(0), φ(t),
                    # φ'(t) along the projected path (it finds the kink of a V-shaped φ, e.g.
                    # λ‖d‖ crossing 0), the quadratic through φ(0), φ'(0), φ(t) without a real
                    # cubic minimiser; kept in [0.001 t, 0.5 t]
                    ts = t[still]
                    da, db = d_a[rej], d_b[rej]
                    f_a, f_b = f[still], ft[rej]
                    d1 = da + db - 3.0 * (f_b - f_a) / ts
                    disc = d1 * d1 - da * db
                    d2 = torch.sqrt(torch.clamp(disc, min=0.0))
                    cubic = ts - ts * (db + d2 - d1) / (db - da + 2.0 * d2)
                    denom = 2.0 * (f_b - f_a - da * ts)
                    quad = torch.where(denom > 0, -da * ts * ts / denom, 0.5 * ts)
                    tn = torch.where((disc >= 0) & torch.isfinite(cubic), cubic, quad)
                    tn = torch.where(torch.isfinite(tn), tn, 0.5 * ts)
                    t[still] = torch.minimum(torch.maximum(tn, 1e-3 * ts), 0.5 * ts)
                    still = still[nfev[still] < maxfun]
                grow = searching[longer]
                if grow.numel():
                    t[grow] = _GROW * t[grow]
                    extended[grow] += 1
                searching = torch.sort(torch.cat([still, grow])).values

            # --- curvature pairs of the accepted steps into ring slot `head` (a slot stays
            # empty, valid = False, when the step failed or sᵀy <= eps·yᵀy)
            s_vec = x_new - x
            y_vec = g_new - g
            gz_new, freef_new = free_gradient(x_new, g_new)
            if pushes:  # the stored pairs' free-variable Gram follows the free set
                _update_free_gram(GF, W, min(pushes, m), freef_new - freef)
            gz, freef = gz_new, freef_new
            W[:, head, 0] = s_vec
            W[:, head, 1] = y_vec
            k = min(pushes + 1, m)
            # one pass over the history: the new pair's products for SY, YY, SS and its row of
            # GF, and the next direction's Sᵀgz, Yᵀgz (x and g of the next iteration are known)
            # ([A, 5, n] @ [A, n, 2k]: this orientation reads the history ~3x faster on CPU)
            cross = torch.bmm(torch.stack([s_vec, y_vec, gz, s_vec * freef, y_vec * freef], dim=1),
                              W[:, :k].reshape(A, 2 * k, n).transpose(1, 2))
            cross = cross.reshape(A, 5, k, 2).permute(0, 2, 3, 1).to(f64)  # [A, k, s|y, 5]
            ab = cross[:, :, :, 2]
            GF[:, head, :, :k, :] = cross[:, :, :, 3:5].permute(0, 3, 1, 2)  # [A, new s|y, k, s|y]
            GF[:, :k, :, head, :] = cross[:, :, :, 3:5]
            SY[:, :k, head] = cross[:, :, 0, 1]      # s_jᵀ y_new
            SY[:, head, :k] = cross[:, :, 1, 0]      # s_newᵀ y_j
            YY[:, :k, head] = cross[:, :, 1, 1]
            YY[:, head, :k] = cross[:, :, 1, 1]
            SS[:, :k, head] = cross[:, :, 0, 0]
            SS[:, head, :k] = cross[:, :, 0, 0]
            sy_new = cross[:, head, 0, 1]
            yy_new = cross[:, head, 1, 1]
            ok_pair = (accepted & torch.isfinite(sy_new) & torch.isfinite(yy_new) & (yy_new > 0)
                       & (sy_new > eps * yy_new))
            valid[:, head] = ok_pair
            gamma = torch.where(ok_pair, sy_new / torch.where(ok_pair, yy_new, torch.ones_like(yy_new)),
                                gamma)
            head, pushes = (head + 1) % m, pushes + 1

            # --- a failed search clears the memory and retries once with the projected
            # gradient; a second failure (or one without memory) ends the problem
            failed = alive & ~accepted
            give_up = failed & ((npairs == 0) | retried)
            reset = failed & ~give_up
            if bool(reset.any()):
                valid[reset] = False
                gamma = torch.where(reset, torch.ones_like(gamma), gamma)
            retried = (retried | reset) & ~accepted
            iters = iters + accepted.long()
            rel = (f - f_new) / torch.clamp(torch.maximum(f.abs(), f_new.abs()), min=_TINY)
            # the decrease test judges quasi-Newton steps only: the length of a projected-
            # gradient step (first iteration, after a reset) says nothing about convergence
            small = accepted & (rel <= ftol) & (npairs > 0) & ~bad
            x, f, g = x_new, f_new, g_new
            pending = torch.full((A,), -1, dtype=torch.long, device=device)
            pending = torch.where(small | (give_up & at_floor), torch.zeros_like(pending), pending)
            pending = torch.where(give_up & ~at_floor, torch.full_like(pending, 4), pending)

        # the chunk's wall time, shared by each problem's evaluations
        wall = time.perf_counter() - t_start
        gids = torch.cat(finished).cpu().numpy()
        ev = res["nfev"][gids].astype(np.float64)
        res["secs"][gids] = wall * ev / max(ev.sum(), 1.0)


def _evaluate(objective: ObjectiveFn, xs: Tensor, idx: Tensor, shape: tuple) -> tuple[Tensor, Tensor]:
    """Δ and its gradient for the flat points ``xs`` ``[k, n]`` of problems ``idx``."""
    d = xs.detach().reshape((xs.shape[0],) + shape).requires_grad_(True)
    with torch.enable_grad():
        v = objective(d, idx)
        (grad,) = torch.autograd.grad(v.sum(), d)
    return v.detach().to(xs.dtype), grad.detach().reshape(xs.shape[0], -1).to(xs.dtype)


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


def probe_cpu_chunk(objective: ObjectiveFn, x_all: Tensor, shape: tuple, limit: int,
                    start: int = _PROBE_START) -> tuple[int, Optional[tuple[Tensor, Tensor]]]:
    """The batch size with the cheapest model pass per problem on this CPU, measured on the
    problems' own starting points.

    On a CPU a bigger batch is not always faster per problem: an MLP's pass keeps getting
    cheaper up to a few hundred problems, a conv net's gets dearer beyond a few dozen, once its
    activations leave the caches. So the starting points are evaluated in consecutive slices of
    ``start``, 2·``start``, 4·``start``, … problems (at most ``limit``), each twice (the first
    call of a shape sets up its kernels) with the second timed, until a size is 10% dearer per
    problem than the best so far. Nothing is wasted beyond those warm-up calls: the timed
    evaluations are the solver's first ones, returned as (f, g) of problems 0 … K−1 (None when
    nothing was probed).
    """
    P = x_all.shape[0]
    if P <= start or limit <= start:
        return min(P, limit), None
    fs, gs = [], []
    best, best_cost, a, size = start, float("inf"), 0, start
    while size <= limit and a + size <= P:
        idx = torch.arange(a, a + size, device=x_all.device)
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


def subspace_direction(W: Tensor, order: list[int], valid: Tensor, gamma: Tensor, SY: Tensor,
                       SS: Tensor, GF: Tensor, ab: Tensor, gz: Tensor, freef: Tensor) -> Tensor:
    """The quasi-Newton step on the free variables, −(ZᵀBZ)⁻¹Zᵀg, one per problem.

    B = θI − W̃ M W̃ᵀ is the L-BFGS Hessian in the compact form of Byrd, Nocedal & Schnabel
    (1994), with W̃ = [Y, θS], M = [[−D, Lᵀ], [L, θSᵀS]]⁻¹, θ = 1/``gamma``, D = diag(sᵢᵀyᵢ) and
    L the strictly lower part of SᵀY (time order). Z selects the free variables (``freef``);
    the reduced system is solved with the Sherman–Morrison–Woodbury identity, as in the
    subspace minimisation of L-BFGS-B (Byrd, Lu, Nocedal & Zhu 1995, section 5.1):

        (ZᵀBZ)⁻¹r = r/θ + ZᵀW̃ (M⁻¹ − W̃ᵀZZᵀW̃/θ)⁻¹ W̃ᵀZr / θ²,  r = −Zᵀg,

    which needs only 2k×2k matrices besides the history: W̃ᵀZZᵀW̃ from ``GF`` (the history's Gram
    matrix over the free variables) and W̃ᵀZr from ``ab`` (Sᵀgz, Yᵀgz). Restricting the
    Hessian, not its inverse, matters here: most pixels of a binary image sit on a bound.

    Shapes (A problems, m ring slots, k used, n variables): ``W`` [A, k, 2, n] (s, y per slot),
    ``order`` the k slots oldest first, ``valid`` [A, m], ``gamma`` [A], ``SY``/``SS`` [A, m, m]
    (sᵢᵀyⱼ, sᵢᵀsⱼ by slot), ``GF`` [A, m, 2, m, 2], ``ab`` [A, k, 2] by slot, ``gz`` and
    ``freef`` [A, n]. Slots that are not ``valid`` are left out.
    """
    A, k, _, n = W.shape
    f64, dtype = torch.float64, gz.dtype
    oi = torch.tensor(order, device=gz.device)
    vf = valid[:, order].to(f64)                                         # [A, k] time order
    vm = vf[:, :, None] * vf[:, None, :]
    theta = 1.0 / gamma
    th = theta[:, None, None]
    G = GF[:, oi][:, :, :, oi]
    SFS, SFY, YFY = G[:, :, 0, :, 0] * vm, G[:, :, 0, :, 1] * vm, G[:, :, 1, :, 1] * vm
    sy = SY[:, oi][:, :, oi] * vm
    ss = SS[:, oi][:, :, oi] * vm
    lower = torch.tril(sy, diagonal=-1)
    empty = torch.diag_embed(1.0 - vf)           # an empty slot: a decoupled 1 on the diagonal
    Minv = torch.cat([torch.cat([-torch.diag_embed(torch.diagonal(sy, dim1=1, dim2=2)) + empty,
                                 lower.transpose(1, 2)], 2),
                      torch.cat([lower, th * ss + empty], 2)], 1)
    WZZW = torch.cat([torch.cat([YFY, th * SFY.transpose(1, 2)], 2),
                      torch.cat([th * SFY, th * th * SFS], 2)], 1)
    a = ab[:, order, 0] * vf                                             # Sᵀgz
    c = ab[:, order, 1] * vf                                             # Yᵀgz
    Wr = torch.cat([-c, -theta[:, None] * a], 1)                         # W̃ᵀZr
    v = torch.linalg.solve(Minv - WZZW / th, Wr.unsqueeze(2)).squeeze(2)
    coef = torch.zeros(A, k, 2, dtype=f64, device=gz.device)             # by slot: (s, y)
    coef[:, oi, 0] = theta[:, None] * v[:, k:]
    coef[:, oi, 1] = v[:, :k]
    Wv = torch.bmm(coef.reshape(A, 1, 2 * k).to(dtype), W.reshape(A, 2 * k, n)).squeeze(1)
    return -gz * gamma[:, None].to(dtype) + (gamma * gamma)[:, None].to(dtype) * Wv * freef


def _update_free_gram(GF: Tensor, W: Tensor, k: int, change: Tensor) -> None:
    """Bring ``GF``, the Gram matrix of the first ``k`` history slots of ``W`` over the free
    variables, to a new free set: add the variables that became free (``change`` = +1) and
    remove those that became fixed (−1). The product runs over the changed variables only
    (on the smoke attacks a few hundred to ~1,500 of 4,096 per iteration: pixels on a bound
    whose tiny gradient changes sign) instead of all of them.

    Each problem's changed variables come first in index order and the padding up to the
    batch's largest count adds exact zeros, so a problem's sums, and with them its result, do
    not depend on the other problems of the batch."""
    A, n = change.shape
    moved = change != 0
    per = moved.sum(dim=1)
    count = int(per.max())
    if count == 0:
        return
    # each problem's changed variables in index order, padded with variable 0 (sign 0)
    rows, where = moved.nonzero(as_tuple=True)
    slot = torch.arange(rows.shape[0], device=rows.device) - (per.cumsum(0) - per)[rows]
    idx = torch.zeros(A, count, dtype=torch.long, device=change.device)
    idx[rows, slot] = where
    Wk = W[:, :k].reshape(A, 2 * k, n)
    cols = Wk.gather(2, idx[:, None, :].expand(A, 2 * k, count)).to(torch.float64)
    sign = (change.gather(1, idx) * (torch.arange(count, device=change.device) < per[:, None])).to(
        torch.float64)
    GF[:, :k, :, :k, :] += torch.bmm(cols * sign[:, None, :], cols.transpose(1, 2)).reshape(
        A, k, 2, k, 2)


def _history(config) -> int:
    """The batched solver's L-BFGS memory: ``config.batch_history``, else ``config.memory``."""
    h = getattr(config, "batch_history", None)
    return int(config.memory if h is None else h)


_MESSAGES = {0: MSG_FTOL, 1: MSG_PGTOL, 2: MSG_MAXITER, 3: MSG_MAXFUN, 4: MSG_ABNORMAL}
