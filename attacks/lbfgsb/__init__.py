"""L-BFGS-B in torch for a whole batch of attack problems: scipy's algorithm, one model pass.

``BatchedLBFGSB`` (config name ``"batched"``) has the interface of ``ScipyLBFGSB`` and runs the
same algorithm, L-BFGS-B 3.0 as scipy ships it (Byrd, Lu, Nocedal & Zhu 1995; Morales & Nocedal
2011), step for step, on every problem, but it evaluates every running problem in one forward
and one backward pass of the model. The problems are independent, so the gradient of
``values.sum()`` is every problem's own gradient, and everything else is row-wise:

* **Slots fed from a queue** (``slots._Slots``, run by ``driver._Run``). The batch is a fixed number of slots, each running
  one problem through scipy's reverse-communication loop: it asks for an evaluation (its start,
  or a trial step of its line search), and when the line search ends it runs its own stop
  tests and history update and computes its next direction. Each *tick* evaluates every
  running slot once, so a problem in a long line search never holds the others back, and when
  a problem stops the next one from the queue takes its slot: the model pass stays full until
  the queue is empty, and the longest problems no longer finish alone. With warm starts
  (``after``, ``attacks.warm``) a problem joins the queue when the one it starts from ends.
  Once the queue is empty and half of the slots are idle, the state is compacted to the
  running ones.
* **Generalised Cauchy point** (``cauchy.cauchy_point``): the first local minimiser of the quadratic
  model along the projected steepest-descent path, with B the L-BFGS matrix in compact form
  (B = θI − W̃MW̃ᵀ, W̃ = [Y, θS]; ``compact.middle_matrix``). The segment before the first breakpoint is tested for every
  slot at once; slots whose minimiser lies beyond it sort their breakpoints and test the
  segments in blocks, with the quantities scipy's ``cauchy`` updates breakpoint by breakpoint
  (f', f'', Wᵀd, Wᵀ(x − xᶜ)) written as prefix sums.
* **Subspace minimisation** (``subspace.subspace_step``): the Newton step of the model on the variables
  free at the Cauchy point, −(ZᵀBZ)⁻¹ r, by the Sherman–Morrison–Woodbury identity (the same
  2m×2m system scipy's ``formk`` factorises), then scipy's projection onto the box and its
  backtracking when the projected point is not a descent direction.
* **Line search**: Moré–Thuente ``dcsrch`` as scipy's ``lnsrlb`` runs it (ftol 1e-3, gtol 0.9,
  xtol 0.1, steps up to the largest feasible one, at most ``driver._MAXLS`` evaluations), vectorised
  over slots in float64 numpy (``line_search.dcsrch``, ``_dcstep``). A failed search restores the iterate
  and clears the memory, and ends the problem when the memory was already empty.
* **Stopping** as scipy's: projected-gradient ∞-norm <= pgtol; (f_k − f_{k+1}) <=
  factr·eps·max(|f_k|, |f_{k+1}|, 1); maxiter iterations; more than maxfun evaluations.
* **History**: per slot a ring of m (s, y) pairs ``W [C, m, 2, n]`` with insertion stamps (time
  order for the compact form's L), their products SᵀY and SᵀS and their Gram matrix over the
  variables free at the last Cauchy point (``GF``), which follows the free set by adding and
  removing only the variables that changed (``subspace._update_free_gram``). One pass over the history
  per iteration gives the new pair's products and the Cauchy direction's Wᵀd; one more gives
  the subspace step. Everything is float64 as in scipy, the iterates included (a float32 x
  cannot take the short steps of a line search near a minimum, which then fails and ends the
  problem early), except what the model sees and the history itself, kept in the model's
  dtype: its pairs come from the model's gradients, and its passes are most of the solver's
  own memory traffic (their products go on in float64).
* **Capacity** (``sizing``): ``problems_per_chunk`` bounds the slots by memory (history 2·m·n values, working
  vectors, the model's activations); on CUDA that is the batch. On a CPU the histories must
  also fit the last-level cache (``cpu_cache_bytes``), and ``probe_cpu_chunk`` times the model
  pass at growing batch sizes within that bound and keeps the cheapest per problem.
  ``config.batch_chunk`` sets it.

Each problem's trajectory depends only on its own data (the slot it runs in and its
neighbours do not enter any sum), up to the float rounding of the model's batched kernels; a
test checks this bitwise with a row-wise evaluation.

The modules, each importing only those before it: ``sizing`` (chunk sizing), ``line_search``,
``compact`` (the compact L-BFGS matrix), ``cauchy``, ``subspace``, ``slots`` (the batch of slots
and the passes over their history) and ``driver`` (``BatchedLBFGSB`` and ``_Run``).
"""

from __future__ import annotations

from attacks.lbfgsb.cauchy import Cauchy, cauchy_point
from attacks.lbfgsb.compact import middle_matrix
from attacks.lbfgsb.driver import (MSG_ABNORMAL, MSG_FTOL, MSG_MAXFUN, MSG_MAXITER, MSG_PGTOL,
                                   BatchedLBFGSB)
from attacks.lbfgsb.line_search import LineSearch, dcsrch
from attacks.lbfgsb.sizing import (bytes_per_problem, cpu_cache_bytes, device_memory_budget,
                                   probe_cpu_chunk, problems_per_chunk)
from attacks.lbfgsb.subspace import subspace_step

__all__ = ["BatchedLBFGSB", "cauchy_point", "Cauchy", "subspace_step", "middle_matrix", "dcsrch",
           "LineSearch", "problems_per_chunk", "probe_cpu_chunk", "bytes_per_problem",
           "device_memory_budget", "cpu_cache_bytes", "MSG_FTOL", "MSG_PGTOL", "MSG_MAXITER",
           "MSG_MAXFUN", "MSG_ABNORMAL"]
