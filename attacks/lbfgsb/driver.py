"""The batched L-BFGS-B solver itself: ``BatchedLBFGSB`` and one ``solve`` call's run (``_Run``:
the queue of problems, their results, and the steps of a tick), scipy's driver and ``mainlb``
around the Cauchy point, the subspace step and the line search."""

from __future__ import annotations

import time
from collections import deque
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from attacks.lbfgsb.cauchy import _EPS, _breakpoints, cauchy_point
from attacks.lbfgsb.compact import middle_matrix
from attacks.lbfgsb.line_search import dcsrch
from attacks.lbfgsb.sizing import (_cuda_activation_bytes, _evaluate, cpu_cache_bytes,
                                   probe_cpu_chunk, problems_per_chunk)
from attacks.lbfgsb.slots import (_DIRECTION, _SEARCH, _START, _Slots, _follow_free_set,
                                  _history_pass, _projected_gradient_norm, _store_products)
from attacks.lbfgsb.subspace import subspace_step
from attacks.result import NONFINITE_VALUE, ObjectiveFn, SolveResult
from attacks.warm import COLD, start_from, successors

# scipy's messages (task and task_msg of setulb, as scipy.optimize.minimize reports them)
MSG_FTOL = "CONVERGENCE: RELATIVE REDUCTION OF F <= FACTR*EPSMCH"
MSG_PGTOL = "CONVERGENCE: NORM OF PROJECTED GRADIENT <= PGTOL"
MSG_MAXITER = "STOP: TOTAL NO. OF ITERATIONS REACHED LIMIT"
MSG_MAXFUN = "STOP: TOTAL NO. OF F,G EVALUATIONS EXCEEDS LIMIT"
MSG_ABNORMAL = "ABNORMAL: "
_MESSAGES = {0: MSG_FTOL, 1: MSG_PGTOL, 2: MSG_MAXITER, 3: MSG_MAXFUN, 4: MSG_ABNORMAL}
_CONVERGED = (0, 1)

_MAXLS = 20                            # scipy's maxls: evaluations per line search
_STPMX = 1e10                          # lnsrlb's bound on a step before the box bounds it


class BatchedLBFGSB:
    """scipy's L-BFGS-B run on a batch of slots in torch (CPU or GPU), fed from a queue of
    problems. See the package docstring (``attacks.lbfgsb``) for the algorithm."""

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
                end = torch.minimum(torch.maximum(s.x[int(slot)], self.lo[nxt]), self.hi[nxt])
                self.x0[nxt] = start_from(end, self.x0[nxt])
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
