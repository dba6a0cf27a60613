"""Subspace minimisation of the batched L-BFGS-B solver (scipy's ``cmprlb`` + ``subsm``): the
Newton step of the model on the variables free at the Cauchy point by the Sherman–Morrison–
Woodbury identity, its projection onto the box, and the Gram matrix of the history over the free
variables that it needs."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from attacks.lbfgsb.cauchy import Cauchy


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
