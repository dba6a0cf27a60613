"""L-BFGS-B in torch for a whole batch of attack problems: scipy's algorithm, one model pass.

``BatchedLBFGSB`` (config name ``"batched"``) has the interface of ``ScipyLBFGSB`` and runs the
same algorithm, L-BFGS-B 3.0 as scipy ships it (Byrd, Lu, Nocedal & Zhu 1995; Morales & Nocedal
2011), step for step, on every problem, but it evaluates every running problem in one forward
and one backward pass of the model. The problems are independent, so the gradient of
``values.sum()`` is every problem's own gradient, and everything else is row-wise:

* **Slots fed from a queue** (``_Slots``). The batch is a fixed number of slots, each running
  one problem through scipy's reverse-communication loop: it asks for an evaluation (its start,
  or a trial step of its line search), and when the line search ends it runs its own stop
  tests and history update and computes its next direction. Each *tick* evaluates every
  running slot once, so a problem in a long line search never holds the others back, and when
  a problem stops the next one from the queue takes its slot: the model pass stays full until
  the queue is empty, and the longest problems no longer finish alone. With warm starts
  (``after``, ``attacks.warm``) a problem joins the queue when the one it starts from ends.
  Once the queue is empty and half of the slots are idle, the state is compacted to the
  running ones.
* **Generalised Cauchy point** (``cauchy_point``): the first local minimiser of the quadratic
  model along the projected steepest-descent path, with B the L-BFGS matrix in compact form
  (B = θI − W̃MW̃ᵀ, W̃ = [Y, θS]). The segment before the first breakpoint is tested for every
  slot at once; slots whose minimiser lies beyond it sort their breakpoints and test the
  segments in blocks, with the quantities scipy's ``cauchy`` updates breakpoint by breakpoint
  (f', f'', Wᵀd, Wᵀ(x − xᶜ)) written as prefix sums.
* **Subspace minimisation** (``subspace_step``): the Newton step of the model on the variables
  free at the Cauchy point, −(ZᵀBZ)⁻¹ r, by the Sherman–Morrison–Woodbury identity (the same
  2m×2m system scipy's ``formk`` factorises), then scipy's projection onto the box and its
  backtracking when the projected point is not a descent direction.
* **Line search**: Moré–Thuente ``dcsrch`` as scipy's ``lnsrlb`` runs it (ftol 1e-3, gtol 0.9,
  xtol 0.1, steps up to the largest feasible one, at most ``_MAXLS`` evaluations), vectorised
  over slots in float64 numpy (``dcsrch``, ``_dcstep``). A failed search restores the iterate
  and clears the memory, and ends the problem when the memory was already empty.
* **Stopping** as scipy's: projected-gradient ∞-norm <= pgtol; (f_k − f_{k+1}) <=
  factr·eps·max(|f_k|, |f_{k+1}|, 1); maxiter iterations; more than maxfun evaluations.
* **History**: per slot a ring of m (s, y) pairs ``W [C, m, 2, n]`` with insertion stamps (time
  order for the compact form's L), their products SᵀY and SᵀS and their Gram matrix over the
  variables free at the last Cauchy point (``GF``), which follows the free set by adding and
  removing only the variables that changed (``_update_free_gram``). One pass over the history
  per iteration gives the new pair's products and the Cauchy direction's Wᵀd; one more gives
  the subspace step. Everything is float64 as in scipy, the iterates included (a float32 x
  cannot take the short steps of a line search near a minimum, which then fails and ends the
  problem early), except what the model sees and the history itself, kept in the model's
  dtype: its pairs come from the model's gradients, and its passes are most of the solver's
  own memory traffic (their products go on in float64).
* **Capacity**: ``problems_per_chunk`` bounds the slots by memory (history 2·m·n values, working
  vectors, the model's activations); on CUDA that is the batch. On a CPU the histories must
  also fit the last-level cache (``cpu_cache_bytes``), and ``probe_cpu_chunk`` times the model
  pass at growing batch sizes within that bound and keeps the cheapest per problem.
  ``config.batch_chunk`` sets it.

Each problem's trajectory depends only on its own data (the slot it runs in and its
neighbours do not enter any sum), up to the float rounding of the model's batched kernels; a
test checks this bitwise with a row-wise evaluation.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from attacks.result import NONFINITE_VALUE, ObjectiveFn, SolveResult
from attacks.warm import COLD, successors

__all__ = ["BatchedLBFGSB", "cauchy_point", "subspace_step", "middle_matrix", "dcsrch",
           "LineSearch", "problems_per_chunk", "probe_cpu_chunk", "bytes_per_problem",
           "device_memory_budget"]

# scipy's messages (task and task_msg of setulb, as scipy.optimize.minimize reports them)
MSG_FTOL = "CONVERGENCE: RELATIVE REDUCTION OF F <= FACTR*EPSMCH"
MSG_PGTOL = "CONVERGENCE: NORM OF PROJECTED GRADIENT <= PGTOL"
MSG_MAXITER = "STOP: TOTAL NO. OF ITERATIONS REACHED LIMIT"
MSG_MAXFUN = "STOP: TOTAL NO. OF F,G EVALUATIONS EXCEEDS LIMIT"
MSG_ABNORMAL = "ABNORMAL: "
_MESSAGES = {0: MSG_FTOL, 1: MSG_PGTOL, 2: MSG_MAXITER, 3: MSG_MAXFUN, 4: MSG_ABNORMAL}
_CONVERGED = (0, 1)

_EPS = float(np.finfo(np.float64).eps)
_FTOL, _GTOL, _XTOL = 1e-3, 0.9, 0.1   # lnsrlb's dcsrch constants
_MAXLS = 20                            # scipy's maxls: evaluations per line search
_STPMX = 1e10                          # lnsrlb's bound on a step before the box bounds it
_BLOCKS = (16, 64, 256, 1024)          # Cauchy scan: breakpoints tested by each stage, then all
_CPU_BUDGET = 1 << 30
_PROBE_START = 32    # smallest batch the CPU probe times (below it a batch is all overhead)
_CUDA_FRACTION = 0.5

# slot states
_EMPTY, _START, _SEARCH, _DIRECTION = 0, 1, 2, 3


# --- chunk sizing ------------------------------------------------------------------------------

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


# --- the line search: scipy's dcsrch / dcstep, vectorised over slots ---------------------------

@dataclass
class LineSearch:
    """The state of Moré–Thuente's ``dcsrch`` for every slot (float64 numpy, one entry per
    slot), with scipy's names."""

    stp: np.ndarray
    stpmax: np.ndarray
    finit: np.ndarray
    ginit: np.ndarray
    gtest: np.ndarray
    stx: np.ndarray
    fx: np.ndarray
    gx: np.ndarray
    sty: np.ndarray
    fy: np.ndarray
    gy: np.ndarray
    stmin: np.ndarray
    stmax: np.ndarray
    width: np.ndarray
    width1: np.ndarray
    brackt: np.ndarray   # bool
    stage: np.ndarray    # int

    @classmethod
    def empty(cls, C: int) -> "LineSearch":
        arrays = {f.name: np.zeros(C) for f in fields(cls)}
        arrays["brackt"] = np.zeros(C, dtype=bool)
        arrays["stage"] = np.ones(C, dtype=np.int64)
        return cls(**arrays)

    def start(self, idx: np.ndarray, f: np.ndarray, g: np.ndarray, stp: np.ndarray,
              stpmax: np.ndarray) -> None:
        """dcsrch's START for slots ``idx``: f, g = φ(0), φ'(0) < 0; ``stp`` the first trial."""
        self.stp[idx], self.stpmax[idx] = stp, stpmax
        self.brackt[idx], self.stage[idx] = False, 1
        self.finit[idx], self.ginit[idx], self.gtest[idx] = f, g, _FTOL * g
        self.width[idx] = stpmax
        self.width1[idx] = stpmax / 0.5
        self.stx[idx], self.fx[idx], self.gx[idx] = 0.0, f, g
        self.sty[idx], self.fy[idx], self.gy[idx] = 0.0, f, g
        self.stmin[idx], self.stmax[idx] = 0.0, stp + 4.0 * stp

    def compact(self, keep: np.ndarray) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name)[keep])


def dcsrch(ls: LineSearch, idx: np.ndarray, f: np.ndarray, g: np.ndarray) -> np.ndarray:
    """One call of scipy's ``dcsrch`` for the slots ``idx`` with φ(stp) = ``f``, φ'(stp) = ``g``:
    returns True where the search ends (its CONVERGENCE and WARNING tasks, which L-BFGS-B
    accepts) and leaves the next trial step in ``ls.stp`` elsewhere. stpmin is 0."""
    stp, stpmax = ls.stp[idx], ls.stpmax[idx]
    brackt, stage = ls.brackt[idx], ls.stage[idx]
    ginit, gtest, finit = ls.ginit[idx], ls.gtest[idx], ls.finit[idx]
    stx, fx, gx = ls.stx[idx], ls.fx[idx], ls.gx[idx]
    sty, fy, gy = ls.sty[idx], ls.fy[idx], ls.gy[idx]
    stmin, stmax = ls.stmin[idx], ls.stmax[idx]
    width, width1 = ls.width[idx], ls.width1[idx]

    ftest = finit + stp * gtest
    stage = np.where((stage == 1) & (f <= ftest) & (g >= 0.0), 2, stage)
    done = (brackt & ((stp <= stmin) | (stp >= stmax)))                  # rounding errors
    done |= brackt & (stmax - stmin <= _XTOL * stmax)                     # xtol test
    done |= (stp == stpmax) & (f <= ftest) & (g <= gtest)                 # stp = stpmax
    done |= (stp == 0.0) & ((f > ftest) | (g >= gtest))                   # stp = stpmin
    done |= (f <= ftest) & (np.abs(g) <= _GTOL * (-ginit))                # convergence

    # the modified function psi(stp) = f(stp) − f(0) − ftol·stp·f'(0) while in stage 1
    mod = (stage == 1) & (f <= fx) & (f > ftest)
    shift_f = np.where(mod, gtest, 0.0)
    nstx, nfx, ngx, nsty, nfy, ngy, nstp, nbrackt = _dcstep(
        stx, fx - stx * shift_f, gx - shift_f, sty, fy - sty * shift_f, gy - shift_f,
        stp, f - stp * shift_f, g - shift_f, brackt, stmin, stmax)
    nfx, nfy = nfx + nstx * shift_f, nfy + nsty * shift_f
    ngx, ngy = ngx + shift_f, ngy + shift_f

    # a bisection step when the interval does not shrink fast enough
    wide = nbrackt & (np.abs(nsty - nstx) >= 0.66 * width1)
    nstp = np.where(wide, nstx + 0.5 * (nsty - nstx), nstp)
    nwidth1 = np.where(nbrackt, width, width1)
    nwidth = np.where(nbrackt, np.abs(nsty - nstx), width)
    nstmin = np.where(nbrackt, np.minimum(nstx, nsty), nstp + 1.1 * (nstp - nstx))
    nstmax = np.where(nbrackt, np.maximum(nstx, nsty), nstp + 4.0 * (nstp - nstx))
    nstp = np.minimum(np.maximum(nstp, 0.0), stpmax)
    stuck = nbrackt & ((nstp <= nstmin) | (nstp >= nstmax) | (nstmax - nstmin <= _XTOL * nstmax))
    nstp = np.where(stuck, nstx, nstp)

    go = ~done
    for name, new in (("stp", nstp), ("brackt", nbrackt), ("stage", stage), ("stx", nstx),
                      ("fx", nfx), ("gx", ngx), ("sty", nsty), ("fy", nfy), ("gy", ngy),
                      ("stmin", nstmin), ("stmax", nstmax), ("width", nwidth),
                      ("width1", nwidth1)):
        arr = getattr(ls, name)
        arr[idx[go]] = new[go]
    ls.stage[idx] = stage   # dcsrch saves the stage on every return
    return done


def _dcstep(stx, fx, dx, sty, fy, dy, stp, fp, dp, brackt, stpmin, stpmax):
    """scipy's ``dcstep`` elementwise: the safeguarded step and the updated interval.
    Returns (stx, fx, dx, sty, fy, dy, stp, brackt)."""
    with np.errstate(all="ignore"):
        sgnd = dp * np.sign(dx)
        case1 = fp > fx
        case2 = ~case1 & (sgnd < 0.0)
        case3 = ~case1 & ~case2 & (np.abs(dp) < np.abs(dx))   # else case 4

        theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp
        s = np.maximum(np.abs(theta), np.maximum(np.abs(dx), np.abs(dp)))
        rad = (theta / s) ** 2 - (dx / s) * (dp / s)
        # case 1: a higher function value, the minimum is bracketed
        gam = s * np.sqrt(rad)
        gam1 = np.where(stp < stx, -gam, gam)
        p1 = (gam1 - dx) + theta
        q1 = ((gam1 - dx) + gam1) + dp
        stpc1 = stx + p1 / q1 * (stp - stx)
        stpq1 = stx + ((dx / ((fx - fp) / (stp - stx) + dx)) / 2.0) * (stp - stx)
        stpf1 = np.where(np.abs(stpc1 - stx) < np.abs(stpq1 - stx), stpc1,
                         stpc1 + (stpq1 - stpc1) / 2.0)
        # case 2: derivatives of opposite sign, bracketed
        gam2 = np.where(stp > stx, -gam, gam)
        p2 = (gam2 - dp) + theta
        q2 = ((gam2 - dp) + gam2) + dx
        stpc2 = stp + p2 / q2 * (stx - stp)
        stpq2 = stp + (dp / (dp - dx)) * (stx - stp)
        stpf2 = np.where(np.abs(stpc2 - stp) > np.abs(stpq2 - stp), stpc2, stpq2)
        # case 3: same sign, the derivative magnitude decreases
        gam3 = s * np.sqrt(np.maximum(0.0, rad))
        gam3 = np.where(stp > stx, -gam3, gam3)
        p3 = (gam3 - dp) + theta
        q3 = (gam3 + (dx - dp)) + gam3
        r3 = p3 / q3
        stpc3 = np.where((r3 < 0.0) & (gam3 != 0.0), stp + r3 * (stx - stp),
                         np.where(stp > stx, stpmax, stpmin))
        stpq3 = stp + (dp / (dp - dx)) * (stx - stp)
        near = np.where(np.abs(stpc3 - stp) < np.abs(stpq3 - stp), stpc3, stpq3)
        near = np.where(stp > stx, np.minimum(stp + 0.66 * (sty - stp), near),
                        np.maximum(stp + 0.66 * (sty - stp), near))
        far = np.where(np.abs(stpc3 - stp) > np.abs(stpq3 - stp), stpc3, stpq3)
        far = np.maximum(stpmin, np.minimum(stpmax, far))
        stpf3 = np.where(brackt, near, far)
        # case 4: same sign, the derivative magnitude does not decrease
        theta4 = 3.0 * (fp - fy) / (sty - stp) + dy + dp
        s4 = np.maximum(np.abs(theta4), np.maximum(np.abs(dy), np.abs(dp)))
        gam4 = s4 * np.sqrt((theta4 / s4) ** 2 - (dy / s4) * (dp / s4))
        gam4 = np.where(stp > sty, -gam4, gam4)
        p4 = (gam4 - dp) + theta4
        q4 = ((gam4 - dp) + gam4) + dy
        stpc4 = stp + p4 / q4 * (sty - stp)
        stpf4 = np.where(brackt, stpc4, np.where(stp > stx, stpmax, stpmin))

        stpf = np.where(case1, stpf1, np.where(case2, stpf2, np.where(case3, stpf3, stpf4)))
    brackt = brackt | case1 | case2
    # the interval that contains the step
    to_y = case1
    swap = case2
    nsty = np.where(to_y, stp, np.where(swap, stx, sty))
    nfy = np.where(to_y, fp, np.where(swap, fx, fy))
    ndy = np.where(to_y, dp, np.where(swap, dx, dy))
    nstx = np.where(to_y, stx, stp)
    nfx = np.where(to_y, fx, fp)
    ndx = np.where(to_y, dx, dp)
    return nstx, nfx, ndx, nsty, nfy, ndy, stpf, brackt


# --- the compact L-BFGS matrix ----------------------------------------------------------------
#
# Everything below works in the history's own coordinates: the 2m columns of Wₙ = [s₀, y₀, s₁,
# y₁, …] (W reshaped to [C, 2m, n], by ring position). B = θI − W̃MW̃ᵀ with W̃ = [Y, θS] is
# B = θI − Wₙ Mₙ Wₙᵀ with Mₙ = T M Tᵀ (W̃ = Wₙ T: T takes y_j to column j and θ·s_j to column
# m + j), so products with the history need no reordering or scaling.

def middle_matrix(SY: Tensor, SS: Tensor, stamp: Tensor, theta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The middle matrix of the compact L-BFGS form, B = θI − Wₙ Mₙ Wₙᵀ, and its inverse, in
    the history's coordinates (s₀, y₀, s₁, y₁, …), for pairs stored by ring position.

    In scipy's coordinates W̃ = [Y, θS], M⁻¹ = [[−D, Lᵀ], [L, θSᵀS]] with D = diag(sᵢᵀyᵢ) and L
    the products sᵢᵀyⱼ of pairs i newer than j (``stamp``: insertion order; −1 marks an empty
    position, decoupled with a unit diagonal). M comes from the Cholesky factor J of
    T = θSᵀS + LD⁻¹Lᵀ as in scipy's ``formt`` / ``bmv``: with X = J⁻¹LD⁻¹,
    M = [[−D⁻¹ + XᵀX, XᵀJ⁻¹], [J⁻ᵀX, J⁻ᵀJ⁻¹]].

    ``SY[i, j]`` = sᵢᵀyⱼ, ``SS[i, j]`` = sᵢᵀsⱼ, float64 ``[A, m, m]``; ``theta`` ``[A]``.
    Returns (Mₙ, Mₙ⁻¹, ok) ``[A, 2m, 2m]``, Mₙ zero on empty positions; ``ok`` is False where T
    is not positive definite (scipy then clears the memory).
    """
    A, m, _ = SY.shape
    valid = stamp >= 0
    vf = valid.to(SY.dtype)
    pair = vf[:, :, None] * vf[:, None, :]
    D = torch.diagonal(SY, dim1=1, dim2=2) * vf + (1.0 - vf)
    L = SY * (pair * (stamp[:, :, None] > stamp[:, None, :]).to(SY.dtype))
    th = theta[:, None, None]
    SSm = SS * pair + torch.diag_embed(1.0 - vf)
    LD = L / D[:, None, :]
    J, info = torch.linalg.cholesky_ex(th * SSm + LD @ L.transpose(1, 2))
    ok = info == 0
    J = torch.where(ok[:, None, None], J, torch.eye(m, dtype=J.dtype, device=J.device))
    eye = torch.eye(m, dtype=SY.dtype, device=SY.device).expand(A, m, m)
    sol = torch.linalg.solve_triangular(J, torch.cat([LD, eye], dim=2), upper=False)
    X, Jinv = sol[:, :, :m], sol[:, :, m:]
    M_yy = -torch.diag_embed(1.0 / D) + X.transpose(1, 2) @ X      # blocks of M on W̃ = [Y, θS]
    M_ys = X.transpose(1, 2) @ Jinv
    M_ss = Jinv.transpose(1, 2) @ Jinv
    # to the history's coordinates: y_j is W̃'s column j, s_j is column m + j scaled by θ
    Mn = torch.empty(A, m, 2, m, 2, dtype=SY.dtype, device=SY.device)
    Mn[:, :, 1, :, 1] = M_yy
    Mn[:, :, 1, :, 0] = th * M_ys
    Mn[:, :, 0, :, 1] = th * M_ys.transpose(1, 2)
    Mn[:, :, 0, :, 0] = th * th * M_ss
    Mn = Mn * (vf[:, :, None, None, None] * vf[:, None, None, :, None])
    Minv = torch.empty_like(Mn)
    Minv[:, :, 1, :, 1] = -torch.diag_embed(D)
    Minv[:, :, 1, :, 0] = L.transpose(1, 2) / th
    Minv[:, :, 0, :, 1] = L / th
    Minv[:, :, 0, :, 0] = SSm / th
    return Mn.reshape(A, 2 * m, 2 * m), Minv.reshape(A, 2 * m, 2 * m), ok


# --- the generalised Cauchy point --------------------------------------------------------------

@dataclass
class Cauchy:
    """The generalised Cauchy point of every slot and what the subspace step needs from it
    (vectors of 2m in the history's coordinates)."""

    xcp: Tensor          # [A, n] the point
    t: Tensor            # [A] f64, its parameter on the path x − t·g (projected)
    c: Tensor            # [A, 2m] f64, Wₙᵀ(xcp − x)
    p: Tensor            # [A, 2m] f64, Wₙᵀd on the segment of the point (d: the path direction)
    free: Tensor         # [A, n] bool, the variables free at the point
    segments: Tensor     # [A] long, breakpoints passed (scipy's nseg − 1)
    # the breakpoints passed before the point, one entry each: slot, variable, and the
    # history's row there [k, m, 2]; None when no slot passed one
    passed_slot: Optional[Tensor] = None
    passed_var: Optional[Tensor] = None
    passed_rows: Optional[Tensor] = None

    def take(self, rows: Tensor) -> "Cauchy":
        """The rows ``rows`` of the point (without the passed breakpoints' bookkeeping)."""
        return Cauchy(xcp=self.xcp[rows], t=self.t[rows], c=self.c[rows], p=self.p[rows],
                      free=self.free[rows], segments=self.segments[rows])


def cauchy_point(x: Tensor, g: Tensor, lo: Tensor, hi: Tensor, theta: Tensor, M: Tensor,
                 p0: Tensor, W: Tensor, active: Optional[Tensor] = None,
                 breakpoints: Optional[tuple[Tensor, Tensor]] = None) -> Cauchy:
    """The first local minimiser of m(x + s) = gᵀs + ½sᵀBs along the projected path
    x(t) = Π(x − t·g), per slot, as scipy's ``cauchy``.

    ``x, g, lo, hi`` ``[A, n]``; ``theta`` ``[A]`` and ``M`` = Mₙ ``[A, 2m, 2m]`` float64 (from
    ``middle_matrix``); ``p0`` = Wₙᵀd ``[A, 2m]`` with d the path direction (−g except where a
    variable sits on a bound it is pushed against); ``W`` the history ``[A, m, 2, n]``, read at
    the breakpoints that are passed. Rows not ``active`` (bool ``[A]``, default all) are left
    at their first segment. ``breakpoints``: ``_breakpoints(x, g, lo, hi)`` if already computed.

    With k breakpoints passed (variables b₁ … b_k fixed at their bounds at parameters
    t₁ <= … <= t_k), the segment that follows has direction d_k, slope
    f1 = gᵀd_k + d_kᵀB(x(t_k) − x) at its start and curvature f2 = d_kᵀBd_k, and holds the
    point when −f1/f2 < t_{k+1} − t_k. scipy updates f1, f2 breakpoint by breakpoint; here they
    are written with prefix sums over the sorted breakpoints (‖d_k‖², p_k = Wₙᵀd_k,
    c_k = Wₙᵀ(x(t_k) − x)), so a block of segments is tested at once.
    """
    A, n = x.shape
    f64 = torch.float64
    tb, free = breakpoints if breakpoints is not None else _breakpoints(x, g, lo, hi)
    free_f = free.to(g.dtype)
    d = -g * free_f
    # the variables that do not move get no breakpoint, +inf (their tb is ±0 or NaN): 1/0
    tb = (torch.nan_to_num(tb, nan=0.0, posinf=float("inf")) + (1.0 - free_f)) / free_f
    dd0 = torch.linalg.vecdot(d, d).to(f64)
    f2_org = theta * dd0 - torch.linalg.vecdot(p0, (M @ p0.unsqueeze(2)).squeeze(2))
    dtm = dd0 / f2_org
    first = ~(dtm >= tb.amin(dim=1).to(f64))   # the point lies before the first breakpoint
    if active is not None:
        first = first | ~active
    t = torch.where(first & (dd0 > 0), torch.clamp(dtm, min=0.0), torch.zeros_like(dtm))
    cp = Cauchy(xcp=x, t=t, c=t[:, None] * p0, p=p0.clone(), free=free,
                segments=torch.zeros(A, dtype=torch.long, device=x.device))
    # rows without pairs (B = θI: a problem's first iteration, when its start puts half of the
    # pixels next to a bound, often passes thousands of breakpoints) need no history
    plain = (M.abs().amax(dim=(1, 2)) == 0)
    for rows, history in ((~first & ~plain, True), (~first & plain, False)):
        scan = torch.nonzero(rows).flatten()
        if scan.numel():
            _scan_breakpoints(cp, scan, x, g, lo, hi, tb, theta, M, p0, dd0, f2_org,
                              W if history else None)
    # the free variables move along d; the passed ones already sit on their bounds in xcp
    cp.xcp = cp.xcp + cp.t[:, None].to(x.dtype) * d * cp.free.to(x.dtype)
    return cp


def _breakpoints(x: Tensor, g: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Each variable's breakpoint on the path x − t·g (where it reaches the bound −g points
    to) and whether it moves at all: ``free`` is False for a variable on a bound that −g
    pushes against (or with g = 0 there), as scipy's ``iwhere`` > 0.

    (x − lo)/g and (x − hi)/g have opposite signs and the larger one is the breakpoint; it is
    0 (or NaN) exactly for the variables that cannot move, and +inf for g = 0 inside the box.
    (This avoids torch.where, which costs 5–25 µs per 4,096 values on a CPU against ~1 µs
    for arithmetic.)"""
    with torch.no_grad():
        tb = torch.maximum((x - lo) / g, (x - hi) / g)
    return tb, tb > 0


def _scan_breakpoints(cp: Cauchy, scan: Tensor, x, g, lo, hi, tb, theta, M, p0, dd0, f2_org,
                      W) -> None:
    """The Cauchy point of the slots ``scan``, whose first segment does not hold it: take
    their next breakpoints in order (the smallest ``_BLOCKS[0]``, then up to the next stage's
    count, then all that are left), test those segments at once, and go on with the slots that
    have not found their point. Fixes the passed variables on their bounds in ``cp.xcp`` and
    drops them from ``cp.free``. ``W`` None: the slots have no pairs (B = θI), and only
    ‖d‖² changes along the path.

    A passed variable b moved by z_b = t_b·d_b, so its contributions are d_b·w_b to p and
    t_b·d_b·w_b to c (w_b: the history at b), and ‖d‖² loses g_b²."""
    f64 = torch.float64
    dev = x.device
    n, m = x.shape[1], p0.shape[1] // 2
    R = scan.numel()
    tbs = tb[scan]                                                 # passed ones are set to inf
    nbreak = torch.isfinite(tbs).sum(dim=1)
    p_hat = p0[scan].clone()                                       # p at the current stage
    Q = torch.zeros_like(p_hat)                                    # Σ t_b d_b w_b (passed b)
    dd = dd0[scan].clone()
    t_prev = torch.zeros(R, dtype=f64, device=dev)
    k_star = torch.zeros(R, dtype=torch.long, device=dev)
    t_star = torch.zeros(R, dtype=f64, device=dev)
    p_star, c_star = p_hat.clone(), torch.zeros_like(p_hat)
    passed: list[tuple[Tensor, Tensor, Tensor]] = []   # (row in scan, variable, history there)
    todo = torch.arange(R, device=dev)
    start = 0
    for size in (*_BLOCKS, n):
        if todo.numel() == 0 or start >= n:
            break
        K = min(size, n) - start
        rows = scan[todo]
        if start + K < n:
            tk, idx = torch.topk(tbs[todo], K, dim=1, largest=False, sorted=True)
        else:
            tk, idx = torch.sort(tbs[todo], dim=1)
            tk, idx = tk[:, :K], idx[:, :K]
        tk = tk.to(f64)
        db = -g.reshape(-1).take(rows[:, None] * n + idx).to(f64)        # d at the breakpoints
        Gin = torch.cumsum(db * db, 1)
        tprev = torch.cat([t_prev[todo, None], tk[:, :-1]], dim=1)
        ddk = dd[todo, None] - (Gin - db * db)
        if W is not None:
            # the values at the start of the segment that ends at each breakpoint
            cols = _history_columns(W, rows, idx).transpose(1, 2).to(f64)    # [r, K, 2m]
            dw = db[:, :, None] * cols
            zw = tk.nan_to_num(posinf=0.0)[:, :, None] * dw
            Pin, Qin = torch.cumsum(dw, 1), torch.cumsum(zw, 1)
            pk = p_hat[todo, None] - (Pin - dw)
            ck = Q[todo, None] + (Qin - zw) + tprev[:, :, None] * pk
            Mpk = pk @ M[rows]
            pMp = (pk * Mpk).sum(-1)
            pMc = (ck * Mpk).sum(-1)
        else:
            cols = torch.zeros(idx.shape[0], K, 2 * m, dtype=f64, device=dev)
            dw = zw = pk = ck = Pin = Qin = cols
            pMp = pMc = torch.zeros_like(ddk)
        th = theta[rows, None]
        f1 = ddk * (th * tprev - 1.0) - pMc
        f2 = torch.maximum(th * ddk - pMp, _EPS * f2_org[rows, None])
        hit = (-f1 < f2 * (tk - tprev)) & torch.isfinite(tk)             # −f1/f2 < Δt
        found = hit.any(dim=1)
        ended = ~found & (nbreak[todo] <= start + K)                    # every breakpoint passed
        j = torch.where(found, hit.to(torch.int8).argmax(dim=1),
                        (nbreak[todo] - 1 - start).clamp(0, K - 1))
        r = torch.arange(todo.numel(), device=dev)
        done = found | ended
        if bool(done.any()):
            dtm = torch.where(found, torch.clamp(-f1[r, j] / f2[r, j], min=0.0), torch.zeros_like(th[:, 0]))
            # where every breakpoint passed: the values after the last one
            p_end = pk[r, j] - dw[r, j] * ended[:, None]
            t_end = torch.where(ended, tk[r, j], tprev[r, j] + dtm)
            c_end = torch.where(ended[:, None], Q[todo] + Qin[r, j], ck[r, j] + dtm[:, None] * pk[r, j])
            sel = todo[done]
            t_star[sel], p_star[sel], c_star[sel] = t_end[done], p_end[done], c_end[done]
            k_star[sel] = torch.where(ended, nbreak[todo], start + j)[done]
        n_passed = torch.where(found, j, torch.where(ended, nbreak[todo] - start, torch.full_like(j, K)))
        on = torch.arange(K, device=dev)[None, :] < n_passed[:, None]
        passed.append((todo[:, None].expand(-1, K)[on], idx[on], cols[on]))
        go = ~done
        if not bool(go.any()):
            break
        gt_ = todo[go]
        p_hat[gt_] = p_hat[gt_] - Pin[go, -1]
        Q[gt_] = Q[gt_] + Qin[go, -1]
        dd[gt_] = dd[gt_] - Gin[go, -1]
        t_prev[gt_] = tk[go, -1]
        tbs[gt_] = tbs[gt_].scatter(1, idx[go], float("inf"))
        todo = gt_
        start += K
    cp.t[scan], cp.p[scan], cp.c[scan], cp.segments[scan] = t_star, p_star, c_star, k_star
    prow = torch.cat([r_ for r_, _, _ in passed])
    if prow.numel() == 0:
        return
    pvar = torch.cat([v for _, v, _ in passed])
    slot = scan[prow]
    flat = slot * n + pvar
    up = g.reshape(-1).take(flat) < 0
    bound = torch.where(up, hi.reshape(-1).take(flat), lo.reshape(-1).take(flat))
    xcp = cp.xcp.clone()
    xcp.view(-1)[flat] = bound
    free = cp.free.clone()
    free.view(-1)[flat] = False
    cp.xcp, cp.free = xcp, free
    if W is not None:   # what the Gram matrix's new row must lose (slots with pairs only)
        rows_w = torch.cat([c for _, _, c in passed]).to(x.dtype).reshape(-1, m, 2)
        if cp.passed_slot is None:
            cp.passed_slot, cp.passed_var, cp.passed_rows = slot, pvar, rows_w
        else:
            cp.passed_slot = torch.cat([cp.passed_slot, slot])
            cp.passed_var = torch.cat([cp.passed_var, pvar])
            cp.passed_rows = torch.cat([cp.passed_rows, rows_w])


# --- subspace minimisation ---------------------------------------------------------------------

def subspace_step(x: Tensor, g: Tensor, lo: Tensor, hi: Tensor, theta: Tensor, M: Tensor,
                  Minv: Tensor, cp: Cauchy, GF: Tensor, W: Tensor,
                  rows: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """The end point z of the search direction of the slots ``rows`` (default: all), which
    have pairs: the minimiser of the quadratic model over the variables free at the Cauchy
    point (the others held there), projected onto the box, as scipy's ``cmprlb`` + ``subsm``
    (L-BFGS-B 3.0). (Without pairs, B = θI, scipy ends the direction at the Cauchy point.)

    The unconstrained step from xᶜ is −(ZᵀBZ)⁻¹r with r = Zᵀ(g + B(xᶜ − x)); by the
    Sherman–Morrison–Woodbury identity, with U = ZᵀWₙ,

        (ZᵀBZ)⁻¹ = I/θ + U (Mₙ⁻¹ − UᵀU/θ)⁻¹ Uᵀ / θ²,

    (the 2m×2m system scipy's ``formk`` factorises), so besides one pass over the history it
    needs only 2m×2m matrices: UᵀU is ``GF`` (the history's Gram matrix over the free
    variables) and UᵀZᵀr = −(1 − θt)·p + UᵀU·Mc, from the Cauchy point's p = Wₙᵀd and
    c = Wₙᵀ(xᶜ − x) (a free variable moved by −t·g). If the projected point has a free variable
    on a bound and is not a descent direction from x, the step is cut back to the box instead
    (scipy's backtracking); a slot with no free variable stays at the Cauchy point.

    Every argument has a row per slot. Returns (z, solve_ok) for ``rows``: ``solve_ok`` False
    where the 2m×2m system is singular (z is then the Cauchy point).
    """
    A, m = GF.shape[0], GF.shape[1]
    f64 = torch.float64
    if rows is None:
        rows = torch.arange(A, device=x.device)
    th = theta[rows]
    Mr = M[rows]
    U = GF[rows].reshape(-1, 2 * m, 2 * m)
    keep = (Mr.abs().amax(dim=2) > 0).to(f64)                     # stored positions
    U = U * keep[:, :, None] * keep[:, None, :]
    Mc = (Mr @ cp.c[rows].unsqueeze(2)).squeeze(2)
    WZr = (1.0 - th * cp.t[rows])[:, None] * cp.p[rows] + (U @ Mc.unsqueeze(2)).squeeze(2)
    v, info = torch.linalg.solve_ex(Minv[rows] - U / th[:, None, None], WZr.unsqueeze(2))
    solved = info == 0
    coef = (Mc / th[:, None] + v.squeeze(2) / (th * th)[:, None]) * solved[:, None]
    Wv = _history_times(W, rows, coef.unsqueeze(1).to(W.dtype)).to(x.dtype)
    xr, xc, lor, hir, Ff = x[rows], cp.xcp[rows], lo[rows], hi[rows], cp.free[rows].to(x.dtype)
    thx = th[:, None].to(x.dtype)
    du = Ff * ((-g[rows] - thx * (xc - xr)) / thx + Wv)
    # scipy's subsm: project onto the box; keep the projection unless a free variable ends on
    # a bound (xs outside or on the box: (xs − lo)(hi − xs) <= 0) and the projected point is
    # not a descent direction from x, then back off along du to the box instead
    xs = xc + du
    xp = torch.clamp(xs, min=lor, max=hir)
    iword = (((xs - lor) * (hir - xs)) + (1.0 - Ff)).amin(dim=1) <= 0
    back = torch.nonzero(iword & solved).flatten()
    if back.numel():
        ddp = torch.linalg.vecdot((xp[back] - xr[back]).to(f64), g[rows[back]].to(f64))
        back = back[ddp > 0]
        if back.numel():
            xp[back] = _backtrack(xc[back], du[back], lor[back], hir[back])
    keep_cp = ~solved | (Ff.amax(dim=1) == 0)
    if bool(keep_cp.any()):
        xp[keep_cp] = xc[keep_cp]
    return xp, solved


def _history_times(W: Tensor, rows: Tensor, coef: Tensor) -> Tensor:
    """Σⱼ coef[., j] · (s, y)ⱼ for the history rows ``rows``, ``[k, n]``, with ``coef``
    ``[k, 1, 2m]`` by (position, s|y)."""
    C, m, _, n = W.shape
    if W.device.type != "cpu":
        full = torch.zeros(C, 1, 2 * m, dtype=coef.dtype, device=coef.device)
        full[rows] = coef
        return torch.bmm(full, W.reshape(C, 2 * m, n)).squeeze(1)[rows]
    # on a CPU one product per row reads only the rows needed (a batched product over every
    # slot, or a copy of the rows, read them all or twice): 2.5 against 4.6 ms for half of
    # 128 slots
    Wn = W.reshape(C, 2 * m, n)
    out = torch.empty(rows.numel(), n, dtype=W.dtype, device=W.device)
    for i, r in enumerate(rows.tolist()):
        torch.mv(Wn[r].t(), coef[i, 0], out=out[i])
    return out


def _backtrack(xc: Tensor, du: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """xᶜ + α·du with α the largest step in [0, 1] that stays in the box (scipy's subsm after a
    positive directional derivative); the variable that limits α is set on its bound. ``du``
    is 0 off the free variables."""
    with torch.no_grad():
        ratio = torch.nan_to_num(torch.maximum((lo - xc) / du, (hi - xc) / du), nan=float("inf"), posinf=float("inf"))
    alpha, ibd = ratio.min(dim=1)
    z = xc + torch.clamp(alpha, max=1.0)[:, None].to(xc.dtype) * du
    limited = torch.nonzero(alpha < 1.0).flatten()
    if limited.numel():
        i = ibd[limited]
        up = du[limited, i] > 0
        z[limited, i] = torch.where(up, hi[limited, i], lo[limited, i])
    return z


def _history_columns(W: Tensor, rows: Tensor, idx: Tensor) -> Tensor:
    """The history at variables ``idx`` ``[k, K]`` of rows ``rows`` ``[k]``: ``[k, 2m, K]``.
    A gather over every row (the others read variable 0) when most rows are wanted; flat
    indices otherwise (copying the wanted rows out first would read all of their history)."""
    C, m, _, n = W.shape
    K = idx.shape[1]
    if 2 * rows.numel() >= C:
        full = torch.zeros(C, K, dtype=torch.long, device=idx.device)
        full[rows] = idx
        return W.reshape(C, 2 * m, n).gather(2, full[:, None, :].expand(C, 2 * m, K))[rows]
    j = torch.arange(2 * m, device=idx.device)
    flat = (rows[:, None, None] * (2 * m) + j[None, :, None]) * n + idx[:, None, :]
    return W.reshape(-1).take(flat)


def _update_free_gram(GF: Tensor, W: Tensor, change: Tensor) -> None:
    """Bring ``GF``, the Gram matrix of the history ``W`` over the free variables, to a new
    free set: add the variables that became free (``change`` = +1) and remove those that
    became fixed (−1). The product runs over the changed variables only (a few hundred of
    4,096 per iteration on the smoke attacks, a few thousand at times), one row at a time (in
    the history's dtype, added to the float64 matrix: in float64 it cost a third more, and its
    rounding, 1e-7 of the update, does not outlive the m iterations a pair is kept).

    A problem's sums involve only its own variables, so they do not depend on the other
    problems of the batch."""
    A, n = change.shape
    m = W.shape[1]
    moved = change != 0
    rows = torch.nonzero(moved.view(torch.uint8).amax(dim=1)).flatten()
    Wn = W.reshape(A, 2 * m, n)
    G = GF.view(A, 2 * m, 2 * m)
    for r in rows.tolist():
        idx = torch.nonzero(moved[r]).flatten()
        cols = Wn[r].index_select(1, idx)
        sign = change[r].index_select(0, idx).to(cols.dtype)
        G[r] += torch.mm(cols * sign, cols.t()).to(torch.float64)


# --- the batch of slots ------------------------------------------------------------------------

@dataclass
class _Slots:
    """Every slot's problem and its L-BFGS-B state. Vectors ``[C, n]`` in the problems' dtype;
    history products and θ float64 on the device; per-slot scalars float64 / int numpy."""

    pid: np.ndarray        # [C] problem in the slot, −1: empty
    state: np.ndarray      # [C] _EMPTY, _START (x0 is evaluated next), _SEARCH (a trial step
                           #     is), _DIRECTION (needs its next direction)
    stop: np.ndarray       # [C] the stop code once the problem has ended (−1: running)
    lo: Tensor
    hi: Tensor
    x: Tensor              # iterate
    g: Tensor              # gradient at x
    d: Tensor              # search direction z − x
    z: Tensor              # end of the direction (the projected subspace minimiser)
    xt: Tensor             # the point evaluated next
    f: np.ndarray          # Δ at x
    gdold: np.ndarray      # gᵀd at x: φ'(0) of the line search
    dtd: np.ndarray        # ‖d‖²
    ifun: np.ndarray       # evaluations of the current line search
    iters: np.ndarray
    nfev: np.ndarray
    seconds: np.ndarray
    W: Tensor              # [C, m, 2, n] (s, y) by ring position
    stamp: Tensor          # [C, m] insertion order of the pairs, −1: empty
    SY: Tensor             # [C, m, m] sᵢᵀyⱼ by position (i newer than j, and i = j)
    SS: Tensor             # [C, m, m] sᵢᵀsⱼ
    GF: Tensor             # [C, m, 2, m, 2] Gram matrix of W over the free variables
    free: Tensor           # [C, n] bool: free at the last Cauchy point (what GF is over)
    theta: Tensor          # [C]
    newest: Tensor         # [C] position of the pair stored since the last direction, −1: none
    updates: np.ndarray    # pairs ever stored: the next stamp
    ls: LineSearch

    @classmethod
    def empty(cls, C: int, n: int, m: int, dtype, device, history_dtype=None) -> "_Slots":
        def vec():
            return torch.zeros(C, n, dtype=dtype, device=device)

        f64 = dict(dtype=torch.float64, device=device)
        return cls(
            pid=np.full(C, -1), state=np.zeros(C, dtype=np.int64), stop=np.full(C, -1),
            lo=vec(), hi=vec(), x=vec(), g=vec(), d=vec(), z=vec(), xt=vec(),
            f=np.zeros(C), gdold=np.zeros(C), dtd=np.zeros(C), ifun=np.zeros(C, dtype=np.int64),
            iters=np.zeros(C, dtype=np.int64), nfev=np.zeros(C, dtype=np.int64), seconds=np.zeros(C),
            W=torch.zeros(C, m, 2, n, dtype=history_dtype or dtype, device=device),
            stamp=torch.full((C, m), -1, dtype=torch.long, device=device),
            SY=torch.zeros(C, m, m, **f64), SS=torch.zeros(C, m, m, **f64),
            GF=torch.zeros(C, m, 2, m, 2, **f64),
            free=torch.zeros(C, n, dtype=torch.bool, device=device), theta=torch.ones(C, **f64),
            newest=torch.full((C,), -1, dtype=torch.long, device=device),
            updates=np.zeros(C, dtype=np.int64), ls=LineSearch.empty(C),
        )

    @property
    def capacity(self) -> int:
        return self.pid.shape[0]

    def rows(self, idx: np.ndarray) -> Tensor:
        return torch.as_tensor(idx, device=self.x.device)

    def has_pairs(self, idx: np.ndarray) -> np.ndarray:
        return (self.stamp[self.rows(idx)] >= 0).any(dim=1).cpu().numpy()

    def clear_memory(self, idx: np.ndarray) -> None:
        """scipy's refresh of the L-BFGS memory (col = 0, θ = 1) for slots ``idx``."""
        if idx.size:
            t = self.rows(idx)
            self.stamp[t] = -1
            self.theta[t] = 1.0
            self.newest[t] = -1

    def end(self, idx: np.ndarray, code: int | np.ndarray) -> None:
        """The problems of slots ``idx`` stop with ``code`` (written out by ``_Run.retire``)."""
        self.stop[idx] = code
        self.state[idx] = _EMPTY

    def compact(self, keep: np.ndarray) -> None:
        """Keep only the slots ``keep`` (their state is copied; the other slots are idle)."""
        t = self.rows(keep)
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                setattr(self, f.name, value.index_select(0, t))
            elif isinstance(value, np.ndarray):
                setattr(self, f.name, value[keep])
        self.ls.compact(keep)


# --- the solver --------------------------------------------------------------------------------

class BatchedLBFGSB:
    """scipy's L-BFGS-B run on a batch of slots in torch (CPU or GPU), fed from a queue of
    problems. See the module docstring for the algorithm."""

    name = "batched"
    batched = True

    def solve(self, objective: ObjectiveFn, d0: Tensor, lower: Tensor, upper: Tensor,
              config, after: Optional[np.ndarray] = None) -> SolveResult:
        # the iterates in float64, as scipy's: a float32 x cannot take the short steps of a
        # line search near a minimum (it then fails and the problem stops early); the model
        # sees its own dtype
        model_dtype = d0.dtype
        if model_dtype != torch.float64:
            inner = objective
            objective = lambda d, idx: inner(d.to(model_dtype), idx)  # noqa: E731
        run = _Run(objective, d0.double(), lower, upper, config, after)
        if run.n_problems == 0:
            return run.result()
        slots = _Slots.empty(_capacity(run, config, model_dtype), run.x0.shape[1],
                             _history(config), run.x0.dtype, d0.device, history_dtype=model_dtype)
        run.admit(slots, np.arange(slots.capacity))
        while (slots.pid >= 0).any():
            started = time.perf_counter()
            run.directions(slots)
            live, f, g = run.evaluate(slots)
            run.advance(slots, live, f, g)
            running = slots.pid >= 0
            slots.seconds[running] += (time.perf_counter() - started) / max(1, int(running.sum()))
            run.retire(slots)
            busy = slots.pid >= 0
            if not run.ready and 0 < busy.sum() <= slots.capacity // 2:
                slots.compact(np.flatnonzero(busy))
        result = run.result()
        result.d = result.d.to(model_dtype)
        return result


def _history(config) -> int:
    """The batched solver's L-BFGS memory: ``config.batch_history``, else ``config.memory``."""
    h = getattr(config, "batch_history", None)
    return int(config.memory if h is None else h)


def _capacity(run: "_Run", config, history_dtype: torch.dtype) -> int:
    """Slots in the batch: ``config.batch_chunk``, else from memory (and on a CPU from the last-
    level cache and a timed probe of the model pass, whose evaluations ``run`` keeps)."""
    P, n = run.x0.shape
    chunk = getattr(config, "batch_chunk", None)
    if chunk is not None:
        return int(min(chunk, P))
    device, m = run.x0.device, _history(config)
    act = (_cuda_activation_bytes(run.objective, run.x0.reshape((P,) + run.shape))
           if device.type == "cuda" else None)
    chunk = problems_per_chunk(n, m, history_dtype, device, activation_bytes=act, n_problems=P,
                               budget=getattr(config, "batch_memory", None))
    if device.type == "cpu":
        # the histories of a batch stay in the last-level cache: each iteration reads them
        # twice, and from memory that costs more than an MLP's pass
        history = 2 * m * n * torch.empty((), dtype=history_dtype).element_size()
        chunk = min(chunk, max(1, cpu_cache_bytes() // history))
        heads = torch.as_tensor(np.asarray(run.ready), device=device)
        chunk, known = probe_cpu_chunk(run.objective, run.x0, run.shape, chunk, problems=heads)
        if known is not None:
            run.known = {int(p): (known[0][i], known[1][i])
                         for i, p in enumerate(heads[:known[0].shape[0]].tolist())}
    return int(chunk)


class _Run:
    """One ``solve`` call: the queue of problems, their results, and the steps of a tick
    (``directions``, ``evaluate``, ``advance``, ``retire``).

    The queue holds the problems ready to start: at first those with a cold start (all of them
    without ``after``); a warm-started problem joins it when the problem it starts from ends,
    with that problem's final iterate as its x0, and takes the slot it leaves."""

    def __init__(self, objective: ObjectiveFn, d0: Tensor, lower: Tensor, upper: Tensor, config,
                 after: Optional[np.ndarray] = None):
        P = d0.shape[0]
        self.n_problems = P
        self.shape = tuple(d0.shape[1:])
        n = int(np.prod(self.shape)) if self.shape else 1
        self.objective = objective
        self.maxiter, self.maxfun = int(config.maxiter), int(config.maxfun)
        self.pgtol = float(config.pgtol)
        self.tol = float(config.factr) * _EPS
        kw = dict(device=d0.device, dtype=d0.dtype)
        self.lo = lower.detach().to(**kw).reshape(P, n)
        self.hi = upper.detach().to(**kw).reshape(P, n)
        self.x0 = torch.minimum(torch.maximum(d0.detach().reshape(P, n), self.lo), self.hi)
        after = np.full(P, COLD) if after is None else np.asarray(after)
        self.ready: deque[int] = deque(np.flatnonzero(after == COLD).tolist())
        self.successor = successors(after)
        self.known: dict[int, tuple[Tensor, Tensor]] = {}   # (f, g) at x0 from the CPU probe
        self.out = torch.empty_like(d0)
        self.res_f = np.full(P, np.nan)
        self.res_it = np.zeros(P, dtype=np.int64)
        self.res_nfev = np.zeros(P, dtype=np.int64)
        self.res_secs = np.zeros(P)
        self.res_conv = np.zeros(P, dtype=bool)
        self.res_msgs = [""] * P

    def result(self) -> SolveResult:
        return SolveResult(d=self.out, objective=self.res_f, iterations=self.res_it,
                           evaluations=self.res_nfev, seconds=self.res_secs,
                           converged=self.res_conv, messages=self.res_msgs)

    # --- filling and emptying slots
    def admit(self, s: _Slots, free: np.ndarray) -> None:
        """Give the next problems of the queue to the slots ``free``."""
        take = min(free.size, len(self.ready))
        if take <= 0:
            return
        slots = free[:take]
        probs = np.array([self.ready.popleft() for _ in range(take)], dtype=np.int64)
        ts, tp = s.rows(slots), s.rows(probs)
        s.pid[slots], s.stop[slots], s.state[slots] = probs, -1, _START
        s.lo[ts], s.hi[ts] = self.lo[tp], self.hi[tp]
        s.x[ts] = s.xt[ts] = self.x0[tp]
        s.iters[slots], s.nfev[slots], s.seconds[slots], s.updates[slots] = 0, 0, 0.0, 0
        # a refilled slot starts as an empty one: the last problem's history, its Gram matrix
        # over the free set and that set must not reach the new problem's first directions
        s.W[ts], s.SY[ts], s.SS[ts], s.GF[ts], s.free[ts] = 0.0, 0.0, 0.0, 0.0, False
        s.g[ts], s.d[ts], s.z[ts] = 0.0, 0.0, 0.0
        s.f[slots], s.gdold[slots], s.dtd[slots], s.ifun[slots] = 0.0, 0.0, 0.0, 0
        s.clear_memory(slots)
        have = np.array([p in self.known for p in probs.tolist()], dtype=bool)
        if have.any():   # the CPU probe evaluated these problems at x0
            f, g = zip(*(self.known.pop(int(p)) for p in probs[have]))
            s.nfev[slots[have]] = 1
            self._start(s, slots[have], torch.stack(f), torch.stack(g))

    def retire(self, s: _Slots) -> None:
        """Write out the slots whose problem stopped and refill them from the queue."""
        done = np.flatnonzero((s.pid >= 0) & (s.stop >= 0))
        if done.size == 0:
            return
        pids = s.pid[done]
        self.out.view(self.n_problems, -1)[s.rows(pids)] = s.x[s.rows(done)].to(self.out.dtype)
        self.res_f[pids] = s.f[done]
        self.res_it[pids] = s.iters[done]
        self.res_nfev[pids] = s.nfev[done]
        self.res_secs[pids] = s.seconds[done]
        for slot, p, code in zip(done, pids, s.stop[done]):
            self.res_msgs[p] = _MESSAGES[int(code)]
            self.res_conv[p] = int(code) in _CONVERGED
            nxt = self.successor.get(int(p))
            if nxt is not None:   # its warm start: this end point, first in the queue
                self.x0[nxt] = torch.minimum(torch.maximum(s.x[int(slot)], self.lo[nxt]), self.hi[nxt])
                self.ready.appendleft(nxt)
        s.pid[done] = -1
        self.admit(s, np.flatnonzero(s.pid < 0))

    # --- a tick: directions, one evaluation of every running slot, each slot's step
    def evaluate(self, s: _Slots) -> tuple[np.ndarray, Optional[Tensor], Optional[Tensor]]:
        live = np.flatnonzero((s.state == _START) | (s.state == _SEARCH))
        if live.size == 0:
            return live, None, None
        f, g = _evaluate(self.objective, s.xt[s.rows(live)], s.rows(s.pid[live]), self.shape)
        bad = ~torch.isfinite(f) | ~torch.isfinite(g.sum(dim=1))   # NaN and inf reach the sum
        if bool(bad.any()):   # as ScipyLBFGSB: a huge value makes the line search back off
            f = torch.where(bad, torch.full_like(f, NONFINITE_VALUE), f)
            g = torch.where(bad[:, None], torch.zeros_like(g), g)
        s.nfev[live] += 1
        return live, f, g

    def advance(self, s: _Slots, live: np.ndarray, f: Optional[Tensor], g: Optional[Tensor]) -> None:
        """Each evaluated slot's step: a start is tested; a trial step goes to the line search,
        which accepts it, asks for another, or fails."""
        if live.size == 0:
            return
        starting = s.state[live] == _START
        for sel, step in ((starting, self._start), (~starting, self._line_search)):
            if sel.any():
                k = np.flatnonzero(sel)
                tk = s.rows(k)
                step(s, live[k], f[tk], g[tk])

    def _start(self, s: _Slots, slots: np.ndarray, f: Tensor, g: Tensor) -> None:
        """A problem's first evaluation (x = x0): scipy's projected-gradient test."""
        ts = s.rows(slots)
        s.g[ts] = g
        s.f[slots] = f.double().cpu().numpy()
        pg = _projected_gradient_norm(s.x[ts], g, s.lo[ts], s.hi[ts]).cpu().numpy()
        done = pg <= self.pgtol
        s.state[slots] = _DIRECTION
        s.end(slots[done], 1)

    def _line_search(self, s: _Slots, slots: np.ndarray, f: Tensor, g: Tensor) -> None:
        ts = s.rows(slots)
        f64 = f.double().cpu().numpy()
        gd = torch.linalg.vecdot(g.double(), s.d[ts].double()).cpu().numpy()
        done = dcsrch(s.ls, slots, f64, gd)
        s.ifun[slots[~done]] += 1
        failed = ~done & (s.ifun[slots] - 1 >= _MAXLS)
        more = ~done & ~failed
        if more.any():
            sm = slots[more]
            tm = s.rows(sm)
            stp = s.ls.stp[sm]
            step = torch.as_tensor(stp, dtype=s.x.dtype, device=s.x.device)[:, None]
            s.xt[tm] = torch.clamp(s.x[tm] + step * s.d[tm], min=s.lo[tm], max=s.hi[tm])
            at_end = s.rows(sm[stp == 1.0])   # scipy takes z itself for stp = 1
            s.xt[at_end] = s.z[at_end]
        if failed.any():
            self._search_failed(s, slots[failed])
        if done.any():
            k = np.flatnonzero(done)
            tk = s.rows(k)
            self._accept(s, slots[k], f64[k], g[tk], gd[k])

    def _search_failed(self, s: _Slots, slots: np.ndarray) -> None:
        """The iterate stays; a problem with memory clears it and tries again, one without
        ends (scipy's ABNORMAL_TERMINATION_IN_LNSRCH)."""
        has = s.has_pairs(slots)
        s.end(slots[~has], 4)
        s.clear_memory(slots[has])
        s.state[slots[has]] = _DIRECTION

    def _accept(self, s: _Slots, slots: np.ndarray, f: np.ndarray, g: Tensor, gd: np.ndarray) -> None:
        """The line search ended: the new iterate, the stop tests of scipy's driver and
        ``mainlb``, and the curvature pair."""
        ts = s.rows(slots)
        stp, fold = s.ls.stp[slots], s.f[slots]
        y = g - s.g[ts]
        s.x[ts], s.g[ts], s.f[slots] = s.xt[ts], g, f
        s.iters[slots] += 1
        pg = _projected_gradient_norm(s.x[ts], g, s.lo[ts], s.hi[ts]).cpu().numpy()
        code = np.full(slots.size, -1)
        code[s.iters[slots] >= self.maxiter] = 2
        code[(code < 0) & (s.nfev[slots] > self.maxfun)] = 3
        code[(code < 0) & (pg <= self.pgtol)] = 1
        scale = np.maximum(np.maximum(np.abs(fold), np.abs(f)), 1.0)
        code[(code < 0) & (fold - f <= self.tol * scale)] = 0
        stopped = code >= 0
        s.end(slots[stopped], code[stopped])
        s.state[slots[~stopped]] = _DIRECTION
        # the curvature pair s = stp·d, y = g_new − g_old, skipped when sᵀy <= eps·(−gᵀs)
        dr = (gd - s.gdold[slots]) * stp
        take = ~stopped & (dr > _EPS * (-s.gdold[slots] * stp))
        if take.any():
            k = np.flatnonzero(take)
            self._store_pair(s, slots[k], stp[k], y[s.rows(k)], dr[k])

    def _store_pair(self, s: _Slots, slots: np.ndarray, stp: np.ndarray, y: Tensor,
                    dr: np.ndarray) -> None:
        """scipy's ``matupd``: the pair replaces the oldest one; θ = yᵀy / sᵀy."""
        ts = s.rows(slots)
        step = torch.as_tensor(stp, dtype=s.x.dtype, device=s.x.device)[:, None]
        sk = step * s.d[ts]                    # exactly d where stp = 1
        q = torch.argmin(s.stamp[ts], dim=1)
        s.W[ts, q] = torch.stack([sk, y], dim=1).to(s.W.dtype)
        s.stamp[ts, q] = torch.as_tensor(s.updates[slots], device=s.x.device)
        s.updates[slots] += 1
        dr64 = torch.as_tensor(dr, dtype=torch.float64, device=s.x.device)
        s.theta[ts] = torch.linalg.vecdot(y.double(), y.double()) / dr64
        s.SY[ts, q, q] = dr64
        s.SS[ts, q, q] = torch.as_tensor(s.dtd[slots] * stp * stp, dtype=torch.float64,
                                         device=s.x.device)
        s.newest[ts] = q

    # --- directions
    def directions(self, s: _Slots) -> None:
        """The next search direction of every slot that needs one and the start of its line
        search. A failure (T or the subspace system singular, a direction that does not
        descend) clears the memory and tries again with B = I, as scipy does."""
        for _ in range(3):
            need = np.flatnonzero(s.state == _DIRECTION)
            if need.size == 0:
                return
            self._direction(s, need)

    def _direction(self, s: _Slots, need: np.ndarray) -> None:
        C, m = s.capacity, s.W.shape[1]
        tn = s.rows(need)
        active = torch.zeros(C, dtype=torch.bool, device=s.x.device)
        active[tn] = True
        pairs = (s.stamp >= 0).any(dim=1) & active
        breakpoints = _breakpoints(s.x, s.g, s.lo, s.hi)
        moving = breakpoints[1].to(s.x.dtype)        # not on a bound that −g pushes against
        f64 = dict(dtype=torch.float64, device=s.x.device)
        M = torch.zeros(C, 2 * m, 2 * m, **f64)
        Minv = torch.eye(2 * m, **f64).expand(C, 2 * m, 2 * m).clone()
        p0 = torch.zeros(C, 2 * m, **f64)
        cross = None
        if bool(pairs.any()):
            cross = _history_pass(s, moving, torch.nonzero(pairs).flatten())
            _store_products(s, cross, pairs)
            hp = torch.nonzero(pairs).flatten()
            Mh, Minvh, ok = middle_matrix(s.SY[hp], s.SS[hp], s.stamp[hp], s.theta[hp])
            if not bool(ok.all()):   # T not positive definite: scipy clears the memory
                s.clear_memory(hp[~ok].cpu().numpy())
                pairs[hp[~ok]] = False
            valid = (s.stamp[hp] >= 0).to(torch.float64)[:, :, None].expand(-1, m, 2).reshape(-1, 2 * m)
            M[hp] = Mh
            Minv[hp] = torch.where(ok[:, None, None], Minvh, Minv[hp])
            p0[hp] = cross[hp, 3].reshape(-1, 2 * m) * valid
        cp = cauchy_point(s.x, s.g, s.lo, s.hi, s.theta, M, p0, s.W, active=active,
                          breakpoints=breakpoints)
        if cross is not None:
            _follow_free_set(s, cp, cross, pairs)
        s.free[tn] = cp.free[tn]
        # the end of the direction: the subspace minimiser, or the Cauchy point without pairs
        z = cp.xcp[tn]
        ok = torch.ones(need.size, dtype=torch.bool, device=s.x.device)
        with_pairs = torch.nonzero(pairs[tn]).flatten()
        if with_pairs.numel():
            z[with_pairs], ok[with_pairs] = subspace_step(
                s.x, s.g, s.lo, s.hi, s.theta, M, Minv, cp, s.GF, s.W, rows=tn[with_pairs])
        s.newest[tn] = -1
        ok = ok.cpu().numpy()
        s.clear_memory(need[~ok])   # singular subspace system: again with B = θI next round
        self._start_search(s, need[ok], z[s.rows(np.flatnonzero(ok))])

    def _start_search(self, s: _Slots, slots: np.ndarray, z: Tensor) -> None:
        """scipy's ``lnsrlb`` at a new direction d = z − x: the largest feasible step (1 in the
        first iteration), the first trial stp = 1 (every variable is bounded), dcsrch's START.
        A direction that does not descend (gᵀd >= 0) clears the memory, or ends a problem
        that has none."""
        if slots.size == 0:
            return
        ts = s.rows(slots)
        x, lo, hi = s.x[ts], s.lo[ts], s.hi[ts]
        d = z - x
        s.z[ts], s.d[ts] = z, d
        d64 = d.double()
        gd = torch.linalg.vecdot(s.g[ts].double(), d64).cpu().numpy()
        with torch.no_grad():   # the step to each variable's bound along d (as _breakpoints)
            ratio = torch.nan_to_num(torch.maximum((lo - x) / d, (hi - x) / d), nan=float("inf"), posinf=float("inf"))
        stpmx = torch.clamp(ratio.amin(dim=1).double(), max=_STPMX).cpu().numpy()
        # z is feasible, so stp = 1 is: a bound below 1 is rounding
        stpmx = np.where(s.iters[slots] == 0, 1.0, np.maximum(stpmx, 1.0))
        bad = ~(gd < 0)
        if bad.any():
            b = slots[bad]
            has = s.has_pairs(b)
            s.end(b[~has], 4)
            s.clear_memory(b[has])
            s.state[b[has]] = _DIRECTION
        ok = ~bad
        if not ok.any():
            return
        go = slots[ok]
        s.gdold[go] = gd[ok]
        s.dtd[go] = torch.linalg.vecdot(d64, d64).cpu().numpy()[ok]
        s.ifun[go] = 1
        s.ls.start(go, s.f[go], gd[ok], np.ones(go.size), stpmx[ok])
        s.xt[s.rows(go)] = z[s.rows(np.flatnonzero(ok))]
        s.state[go] = _SEARCH


def _history_pass(s: _Slots, moving: Tensor, rows: Tensor) -> Tensor:
    """One pass over the history of the slots ``rows``: the products of the newest pair s, s
    and y over the variables that can move at x (``moving``, 0/1), and the Cauchy direction
    d = −g on them, with every stored s and y, float64 ``[C, 4, m, (s, y)]`` (zero for the
    other slots)."""
    C, m, _, n = s.W.shape
    q = s.newest[rows].clamp(min=0)
    Wr = s.W.reshape(C, 2 * m, n)
    mv = moving[rows]
    snew, ynew = s.W[rows, q, 0], s.W[rows, q, 1]
    V = torch.stack([snew, snew * mv, ynew * mv, -s.g[rows] * mv], dim=1).to(Wr.dtype)  # [k, 4, n]
    out = torch.zeros(C, 4, 2 * m, dtype=torch.float64, device=s.x.device)
    if s.x.device.type != "cpu":
        full = torch.zeros(C, 4, n, dtype=V.dtype, device=V.device)
        full[rows] = V
        out[rows] = torch.bmm(full, Wr.transpose(1, 2))[rows].to(torch.float64)
    else:   # one product per row reads only the rows that need it (see _history_times)
        part = torch.empty(rows.numel(), 4, 2 * m, dtype=V.dtype, device=V.device)
        for i, r in enumerate(rows.tolist()):
            torch.mm(V[i], Wr[r].t(), out=part[i])
        out[rows] = part.to(torch.float64)
    return out.reshape(C, 4, m, 2)


def _store_products(s: _Slots, cross: Tensor, pairs: Tensor) -> None:
    """The new pair's row of SᵀS and of SᵀY (s_newᵀyⱼ) from the history pass; the diagonal
    keeps scipy's sᵀy = (gd − gdold)·stp and sᵀs = stp²‖d‖²."""
    rows = torch.nonzero(pairs & (s.newest >= 0)).flatten()
    if rows.numel() == 0:
        return
    q = s.newest[rows]
    ss_qq, sy_qq = s.SS[rows, q, q].clone(), s.SY[rows, q, q].clone()
    s.SS[rows, q, :] = cross[rows, 0, :, 0]
    s.SS[rows, :, q] = cross[rows, 0, :, 0]
    s.SY[rows, q, :] = cross[rows, 0, :, 1]
    s.SS[rows, q, q], s.SY[rows, q, q] = ss_qq, sy_qq


def _follow_free_set(s: _Slots, cp: Cauchy, cross: Tensor, pairs: Tensor) -> None:
    """Bring the Gram matrix over the free variables to the new Cauchy point's free set: the
    stored pairs by the variables whose status changed, the newest pair's row from the
    history pass (over the variables not fixed at x) less the breakpoints passed."""
    change = (cp.free.to(torch.int8) - s.free.to(torch.int8)) * pairs[:, None].to(torch.int8)
    _update_free_gram(s.GF, s.W, change)
    rows = torch.nonzero(pairs & (s.newest >= 0)).flatten()
    if rows.numel() == 0:
        return
    new = torch.stack([cross[:, 1], cross[:, 2]], dim=1)          # [C, (s_q, y_q), m, (s, y)]
    if cp.passed_slot is not None:
        passed = cp.passed_rows.to(torch.float64)                    # [k, m, 2] rows of W
        own = passed[torch.arange(passed.shape[0], device=passed.device),
                     s.newest[cp.passed_slot].clamp(min=0)]            # [k, 2]: (s_q, y_q) there
        new.index_add_(0, cp.passed_slot, -own[:, :, None, None] * passed[:, None])
    q = s.newest[rows]
    s.GF[rows, q] = new[rows]
    s.GF[rows, :, :, q] = new[rows].permute(0, 2, 3, 1)


def _projected_gradient_norm(x: Tensor, g: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """scipy's ``projgr``: max |proj g|, g capped by the distance to the bound it points to,
    float64 ``[k]`` (NaN where g has a NaN)."""
    pg = torch.clamp(g, min=x - hi, max=x - lo)     # x − hi <= 0 <= x − lo
    out = pg.abs().amax(dim=1).double()
    return torch.where(torch.isnan(g.sum(dim=1)), torch.full_like(out, float("nan")), out)
