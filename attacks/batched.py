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
* **Projected direction** p = −ZᵀHZ g: a variable is *fixed* when it sits on a bound and its
  gradient points out of the box (Z keeps the free ones); H is the L-BFGS inverse Hessian in the
  compact form of Byrd, Nocedal & Schnabel (1994) with H₀ = (sᵀy / yᵀy)·I from the newest pair.
  ZᵀHZ is positive definite on the free variables, so p is a descent direction. Per iteration
  this takes one batched matrix product over the history (which also yields the new pair's
  products and the next gradient's, ``[A, 3, n] @ [A, n, 2m]``), one for the combination
  ``[A, 1, 2m] @ [A, 2m, n]``, and m×m triangular solves in float64.
* **Per-problem line search** along the projected path x(t) = Π(x + t·p): Armijo
  (f(x(t)) ≤ f(x) + c₁ gᵀ(x(t) − x)) with backtracking by the minimiser of the cubic through
  φ(0), φ'(0), φ(t), φ'(t) (the gradient at each trial comes with its evaluation; the cubic
  finds the kink of λ‖d‖ at d = 0, which plain halving approaches only linearly), safeguarded in
  [0.001 t, 0.5 t]; first trial t = 1 (t = min(1, 1/‖p‖₂) while a problem has no curvature
  pair, as scipy does). Only the problems still searching are evaluated. A search stops early
  when a trial's predicted decrease is below the resolution of f (ftol·|f|). A failed
  search clears that problem's memory and retries with the projected gradient once; a second
  failure ends it (scipy's ``ABNORMAL_TERMINATION``, or convergence when it was at the noise
  floor).
* **Per-problem stopping**: relative decrease (f_k − f_{k+1}) ≤ ftol · max(|f_k|, |f_{k+1}|)
  after a quasi-Newton step, with ftol = ``config.batch_ftol`` (default eps(float32) ≈ 1.2e-7:
  a decrease below one float32 rounding unit of f; Δ is evaluated in float32, so scipy's
  factr · eps(float64) = 2.2e-15 can only be met by chance, while factr · eps(float32) = 1.2e-6,
  or scipy's floor of 1 in the denominator, stop measurably early on slow stretches and small
  Δ such as the latent KL); projected-gradient ∞-norm ≤
  ``config.pgtol``; ``config.maxiter`` iterations; ``config.maxfun`` evaluations. A problem that
  stops is written out and leaves the batch (the batch shrinks); it never changes again.
* **Chunking**: ``problems_per_chunk`` sizes a batch from the memory it needs (history
  2·m·n values + working vectors + the model's activations per problem) and the device's budget
  (``config.batch_memory`` or, by default, 1 GiB on CPU and half the free memory on CUDA, where
  a one-problem probe measures the activations); ``config.batch_chunk`` overrides it. Chunks run
  one after another; within one, stopped problems drop out of every evaluation at once and out
  of the history arrays when half of the batch has stopped (a copy of the history costs a pass).

Each problem's trajectory depends only on its own data, so the result does not depend on which
problems share a batch (up to the float rounding of the model's batched kernels).
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from attacks.solvers import ObjectiveFn, SolveResult

__all__ = ["BatchedLBFGSB", "problems_per_chunk", "bytes_per_problem", "device_memory_budget"]

MSG_FTOL = "CONVERGENCE: REL_REDUCTION_OF_F_<=_FACTR*EPSMCH"
MSG_PGTOL = "CONVERGENCE: NORM_OF_PROJECTED_GRADIENT_<=_PGTOL"
MSG_MAXITER = "STOP: TOTAL NO. of ITERATIONS REACHED LIMIT"
MSG_MAXFUN = "STOP: TOTAL NO. of f AND g EVALUATIONS EXCEEDS LIMIT"
MSG_ABNORMAL = "ABNORMAL_TERMINATION_IN_LNSRCH"

_C1 = 1e-4           # Armijo constant (scipy's ftol of dcsrch is 1e-3; 1e-4 is the textbook value)
_MAX_LS = 20         # trial steps per line search (scipy: 20)
_CPU_BUDGET = 1 << 30
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
        if chunk is None:
            act = (_cuda_activation_bytes(objective, x_all.reshape((P,) + shape))
                   if device.type == "cuda" else None)
            chunk = problems_per_chunk(n, _history(config), dtype, device,
                                       budget=getattr(config, "batch_memory", None),
                                       activation_bytes=act, n_problems=P)
        for a in range(0, P, int(chunk)):
            ids = torch.arange(a, min(a + int(chunk), P), device=device)
            self._solve_chunk(objective, x_all, lo_all, hi_all, ids, shape, config, out, res)
        return SolveResult(d=out, objective=res["f"], iterations=res["it"], evaluations=res["nfev"],
                           seconds=res["secs"], converged=res["conv"], messages=res["msgs"])

    # one batch of problems, from start to the last one's stop
    def _solve_chunk(self, objective, x_all, lo_all, hi_all, ids, shape, config, out, res):
        t_start = time.perf_counter()
        dtype, device = x_all.dtype, x_all.device
        m = _history(config)
        maxiter, maxfun, pgtol = int(config.maxiter), int(config.maxfun), float(config.pgtol)
        ftol = getattr(config, "batch_ftol", None)
        if ftol is None:  # one float32 rounding unit of f
            ftol = float(torch.finfo(torch.float32).eps)
        eps = float(np.finfo(np.float64).eps)  # curvature test, as scipy's L-BFGS-B
        f64 = torch.float64

        def evaluate(xs: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
            d = xs.detach().reshape((xs.shape[0],) + shape).requires_grad_(True)
            with torch.enable_grad():
                v = objective(d, idx)
                (grad,) = torch.autograd.grad(v.sum(), d)
            return v.detach().to(dtype), grad.detach().reshape(xs.shape[0], -1).to(dtype)

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
        valid = torch.zeros(A, m, dtype=torch.bool, device=device)
        gamma = torch.ones(A, dtype=f64, device=device)          # H0 = gamma·I
        retried = torch.zeros(A, dtype=torch.bool, device=device)  # a failed search was retried
        iters = torch.zeros(A, dtype=torch.long, device=device)
        nfev = torch.zeros(A, dtype=torch.long, device=device)
        alive = torch.ones(A, dtype=torch.bool, device=device)
        head, pushes = 0, 0

        f, g = evaluate(x, ids)
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
                    (ids, x, lo, hi, f, g, gz, freef, W, SY, YY, valid, gamma, retried, iters,
                     nfev, alive) = (
                        t_[keep] for t_ in (ids, x, lo, hi, f, g, gz, freef, W, SY, YY, valid,
                                            gamma, retried, iters, nfev, alive))
                    ab = ab[keep] if ab is not None else None
                    A = n_alive
            live = torch.nonzero(alive).flatten()

            # --- direction p = −ZᵀHZ g: the L-BFGS inverse Hessian H in compact form (Byrd,
            # Nocedal & Schnabel 1994), restricted to the free variables Z
            k = min(pushes, m)
            if k:
                order = list(range(k)) if pushes <= m else [(head + j) % m for j in range(m)]
                Wk = W[:, :k].reshape(A, 2 * k, n)
                vo = valid[:, order]
                vf = vo.to(f64)
                a = ab[:, order, 0] * vf                                  # Sᵀg, time order
                c = ab[:, order, 1] * vf                                  # Yᵀg
                oi = torch.tensor(order, device=device)
                sy = SY[:, oi][:, :, oi] * (vf[:, :, None] * vf[:, None, :])
                yy = YY[:, oi][:, :, oi] * (vf[:, :, None] * vf[:, None, :])
                R = torch.triu(sy) + torch.diag_embed(1.0 - vf)          # identity on empty slots
                Dg = torch.diagonal(sy, dim1=1, dim2=2)
                gm = gamma[:, None]
                u = torch.linalg.solve_triangular(R, a.unsqueeze(2), upper=True).squeeze(2)
                rhs = Dg * u + gm * torch.bmm(yy, u.unsqueeze(2)).squeeze(2) - gm * c
                w1 = torch.linalg.solve_triangular(R.transpose(1, 2), rhs.unsqueeze(2),
                                                   upper=False).squeeze(2)
                coef = torch.zeros(A, m, 2, dtype=f64, device=device)
                coef[:, oi, 0] = w1
                coef[:, oi, 1] = -gm * u
                corr = torch.bmm(coef[:, :k].reshape(A, 1, 2 * k).to(dtype), Wk).squeeze(1)
                p = -(gz * gamma[:, None].to(dtype) + corr * freef)
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
            searching = live
            for _ in range(_MAX_LS):
                if searching.numel() == 0:
                    break
                xs = x[searching]
                xt = torch.minimum(torch.maximum(xs + t[searching, None] * p[searching],
                                                 lo[searching]), hi[searching])
                ft, gt = evaluate(xt, ids[searching])
                nfev[searching] += 1
                fs = f[searching]
                decrease = torch.linalg.vecdot(g[searching], xt - xs)  # < 0 along a descent path
                ok = (torch.isfinite(ft) & torch.isfinite(gt).all(dim=1) & (xt != xs).any(dim=1)
                      & (ft <= fs + _C1 * decrease))
                if bool(ok.any()):
                    acc = searching[ok]
                    x_new[acc], f_new[acc], g_new[acc] = xt[ok], ft[ok], gt[ok]
                    accepted[acc] = True
                rej = ~ok
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
                    xr, xt_r, pr = xs[rej], xt[rej], p[still]
                    inside = (xt_r > lo[still]) & (xt_r < hi[still])
                    d_b = torch.linalg.vecdot(gt[rej], pr * inside.to(dtype))     # φ'(t)
                    moving = ~(((xr <= lo[still]) & (pr < 0)) | ((xr >= hi[still]) & (pr > 0)))
                    d_a = torch.linalg.vecdot(g[still], pr * moving.to(dtype))     # φ'(0)
                    f_a, f_b = f[still], ft[rej]
                    d1 = d_a + d_b - 3.0 * (f_b - f_a) / ts
                    disc = d1 * d1 - d_a * d_b
                    d2 = torch.sqrt(torch.clamp(disc, min=0.0))
                    cubic = ts - ts * (d_b + d2 - d1) / (d_b - d_a + 2.0 * d2)
                    denom = 2.0 * (f_b - f_a - d_a * ts)
                    quad = torch.where(denom > 0, -d_a * ts * ts / denom, 0.5 * ts)
                    tn = torch.where((disc >= 0) & torch.isfinite(cubic), cubic, quad)
                    tn = torch.where(torch.isfinite(tn), tn, 0.5 * ts)
                    t[still] = torch.minimum(torch.maximum(tn, 1e-3 * ts), 0.5 * ts)
                    still = still[nfev[still] < maxfun]
                searching = still

            # --- curvature pairs of the accepted steps into ring slot `head` (a slot stays
            # empty, valid = False, when the step failed or sᵀy <= eps·yᵀy)
            s_vec = x_new - x
            y_vec = g_new - g
            W[:, head, 0] = s_vec
            W[:, head, 1] = y_vec
            k = min(pushes + 1, m)
            # one pass over the history: the new pair's products for SY, YY and the next
            # direction's Sᵀgz, Yᵀgz (x and g of the next iteration are known now)
            gz, freef = free_gradient(x_new, g_new)
            # ([A, 3, n] @ [A, n, 2k]: this orientation reads the history ~3x faster on CPU)
            cross = torch.bmm(torch.stack([s_vec, y_vec, gz], dim=1),
                              W[:, :k].reshape(A, 2 * k, n).transpose(1, 2))
            cross = cross.reshape(A, 3, k, 2).permute(0, 2, 3, 1).to(f64)  # [A, k, s|y, 3]
            ab = cross[:, :, :, 2]
            SY[:, :k, head] = cross[:, :, 0, 1]      # s_jᵀ y_new
            SY[:, head, :k] = cross[:, :, 1, 0]      # s_newᵀ y_j
            YY[:, :k, head] = cross[:, :, 1, 1]
            YY[:, head, :k] = cross[:, :, 1, 1]
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


def _history(config) -> int:
    """The batched solver's L-BFGS memory: ``config.batch_history``, else ``config.memory``."""
    h = getattr(config, "batch_history", None)
    return int(config.memory if h is None else h)


_MESSAGES = {0: MSG_FTOL, 1: MSG_PGTOL, 2: MSG_MAXITER, 3: MSG_MAXFUN, 4: MSG_ABNORMAL}
