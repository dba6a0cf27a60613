"""The line search of the batched L-BFGS-B solver: Moré–Thuente's ``dcsrch`` / ``dcstep`` as
scipy's ``lnsrlb`` runs it, vectorised over slots in float64 numpy."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

_FTOL, _GTOL, _XTOL = 1e-3, 0.9, 0.1   # lnsrlb's dcsrch constants


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
        gam = s * np.sqrt(rad)
        stpf1 = _step_higher_value(stx, fx, dx, stp, fp, dp, theta, gam)
        stpf2 = _step_opposite_slopes(stx, dx, stp, dp, theta, gam)
        stpf3 = _step_slope_decreases(stx, dx, sty, stp, dp, theta, s, rad, brackt, stpmin, stpmax)
        stpf4 = _step_slope_persists(stx, sty, fy, dy, stp, fp, dp, brackt, stpmin, stpmax)

        stpf = np.where(case1, stpf1, np.where(case2, stpf2, np.where(case3, stpf3, stpf4)))
    brackt = brackt | case1 | case2
    return (*_step_interval(case1, case2, stx, fx, dx, sty, fy, dy, stp, fp, dp), stpf, brackt)


# dcstep's four cases, each evaluated on every slot (the caller picks one per slot and holds the
# floating-point error state off for the others)

def _step_higher_value(stx, fx, dx, stp, fp, dp, theta, gam):
    """Case 1: a higher function value, the minimum is bracketed."""
    gam1 = np.where(stp < stx, -gam, gam)
    p1 = (gam1 - dx) + theta
    q1 = ((gam1 - dx) + gam1) + dp
    stpc1 = stx + p1 / q1 * (stp - stx)
    stpq1 = stx + ((dx / ((fx - fp) / (stp - stx) + dx)) / 2.0) * (stp - stx)
    return np.where(np.abs(stpc1 - stx) < np.abs(stpq1 - stx), stpc1,
                    stpc1 + (stpq1 - stpc1) / 2.0)


def _step_opposite_slopes(stx, dx, stp, dp, theta, gam):
    """Case 2: derivatives of opposite sign, bracketed."""
    gam2 = np.where(stp > stx, -gam, gam)
    p2 = (gam2 - dp) + theta
    q2 = ((gam2 - dp) + gam2) + dx
    stpc2 = stp + p2 / q2 * (stx - stp)
    stpq2 = stp + (dp / (dp - dx)) * (stx - stp)
    return np.where(np.abs(stpc2 - stp) > np.abs(stpq2 - stp), stpc2, stpq2)


def _step_slope_decreases(stx, dx, sty, stp, dp, theta, s, rad, brackt, stpmin, stpmax):
    """Case 3: same sign, the derivative magnitude decreases."""
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
    return np.where(brackt, near, far)


def _step_slope_persists(stx, sty, fy, dy, stp, fp, dp, brackt, stpmin, stpmax):
    """Case 4: same sign, the derivative magnitude does not decrease."""
    theta4 = 3.0 * (fp - fy) / (sty - stp) + dy + dp
    s4 = np.maximum(np.abs(theta4), np.maximum(np.abs(dy), np.abs(dp)))
    gam4 = s4 * np.sqrt((theta4 / s4) ** 2 - (dy / s4) * (dp / s4))
    gam4 = np.where(stp > sty, -gam4, gam4)
    p4 = (gam4 - dp) + theta4
    q4 = ((gam4 - dp) + gam4) + dy
    stpc4 = stp + p4 / q4 * (sty - stp)
    return np.where(brackt, stpc4, np.where(stp > stx, stpmax, stpmin))


def _step_interval(case1, case2, stx, fx, dx, sty, fy, dy, stp, fp, dp):
    """The interval that contains the step: (stx, fx, dx, sty, fy, dy) after dcstep."""
    to_y = case1
    swap = case2
    nsty = np.where(to_y, stp, np.where(swap, stx, sty))
    nfy = np.where(to_y, fp, np.where(swap, fx, fy))
    ndy = np.where(to_y, dp, np.where(swap, dx, dy))
    nstx = np.where(to_y, stx, stp)
    nfx = np.where(to_y, fx, fp)
    ndx = np.where(to_y, dx, dp)
    return nstx, nfx, ndx, nsty, nfy, ndy
