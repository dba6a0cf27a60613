"""The batch of slots of the batched L-BFGS-B solver: every slot's problem and its L-BFGS-B
state (iterate, history ring, products, line search), and the passes over the history that
keep its products and its Gram matrix over the free variables up to date."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from attacks.lbfgsb.cauchy import Cauchy
from attacks.lbfgsb.line_search import LineSearch
from attacks.lbfgsb.subspace import _update_free_gram

# slot states
_EMPTY, _START, _SEARCH, _DIRECTION = 0, 1, 2, 3


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
