"""``AttackConfig``: every knob of the attack protocol, with the literature's defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from attacks.metrics import lambda_grid
from results import validation as check
# MODES and OUTPUT_SIMILARITIES are importable from here as before; results.vocabulary holds them
from results.vocabulary import DEFAULT_SIMILARITY, LATENT, MODES, OUTPUT_SIMILARITIES  # noqa: F401


@dataclass
class AttackConfig:
    """How to attack one checkpoint.

    Defaults follow the paper (10 pairs, 51 λ, KL latent attack and the ELBO output attack) and,
    for the solver, Gondim-Ribeiro et al. (2018): scipy's L-BFGS-B with memory 25 and factr 10;
    pgtol, maxiter and maxfun are scipy's ``fmin_l_bfgs_b`` defaults, which they left unchanged.
    ``solver = "batched"`` with ``warm_start = ["latent", "output"]`` is the fast choice (the
    ``smoke`` and ``repro`` presets'): 3-6x scipy's speed per attack on one core on MLPs, but
    not 3x on a conv VAE's latent attack, and in the latent attack at λ near 0 it ends up to a
    few thousandths of a nat above scipy, also with ``polish`` (issue 34: ``benchmarks/attack.py``,
    docs/PERFORMANCE.md), so it is not the default.
    """

    n_pairs: int = 10                      # random (source, target) pairs per dataset
    n_lambdas: int = 51                    # size of the λ grid: 0 and n_lambdas-1 powers of two
    lam_exponents: tuple[float, float] = (-20.0, 20.0)  # c range of λ = 2^c
    lams: Optional[tuple[float, ...]] = None  # explicit λ values; overrides n_lambdas/lam_exponents
    modes: tuple[str, ...] = MODES
    similarities: tuple[str, ...] = (DEFAULT_SIMILARITY[LATENT],)  # the paper's kl; the latent
                                           #   attack's r, attacks.objectives.LATENT_SIMILARITIES:
                                           #   kl | l2_mean | l2_sample | w2 built in
    solver: str = "scipy"                  # a name in attacks.solvers.SOLVERS ("batched": the fast one)
    memory: int = 25                       # L-BFGS-B memory m (scipy maxcor)
    factr: float = 10.0                    # scipy ftol = factr * machine eps (float64)
    pgtol: float = 1e-5                    # projected-gradient tolerance (scipy gtol)
    maxiter: int = 15000                   # L-BFGS-B iterations per attack
    maxfun: int = 15000                    # objective evaluations per attack
    batch_ftol: Optional[float] = None     # unused: the batched solver stops on scipy's own
                                           #   factr test (kept so older configs still load)
    batch_memory: Optional[int] = None     # batched solver: bytes a batch may use; None = 1 GiB
                                           #   on CPU, half the free memory on CUDA
    batch_chunk: Optional[int] = None      # batched solver: problems per batch; None = from memory
    batch_history: Optional[int] = None    # batched solver: L-BFGS memory (pairs kept); None =
                                           #   ``memory`` (a smaller one halves the history passes)
    init_scale: float = 1e-3               # d0 ~ U(-init_scale, init_scale), clipped to the box
    warm_start: tuple[str, ...] = ()       # modes whose λ paths are warm-started: each λ from
                                           #   its pair's solution at the λ above it
                                           #   (attacks.warm); the paper starts every λ at d0
    warm_chain: int = 9                    # λ per warm-start chain (1: every start is cold)
    polish: tuple[str, ...] = ()           # modes whose every end is solved once more, from
                                           #   itself with a fresh history, the lower kept
                                           #   (attacks.polish); none in the paper's protocol
    output_mc_samples: int = 4             # K: noise draws the output attack minimises the mean
                                           #   over (EOT; README "Attacks" for the measurement)
    output_report_samples: int = 32        # fresh draws its reported Δ (and standard error) uses
    seed: int = 0                          # pairs, d0 and every fixed noise derive from it

    def resolved_lams(self) -> list[float]:
        """The λ values to attack with, ascending as given."""
        if self.lams is not None:
            return [float(v) for v in self.lams]
        return lambda_grid(self.n_lambdas, *self.lam_exponents)

    def tasks(self) -> list[tuple[str, str]]:
        """The (mode, similarity) combinations to run: latent × similarities, output × elbo."""
        out: list[tuple[str, str]] = []
        for mode in self.modes:
            sims = self.similarities if mode == LATENT else OUTPUT_SIMILARITIES
            out.extend((mode, s) for s in sims)
        return out

    def validate(self) -> "AttackConfig":
        """Raise ``ConfigError`` naming the first bad field; return self when all are fine."""
        self._validate_grid_and_tasks()
        self._validate_solver()
        check.values_from("attack.warm_start", self.warm_start, MODES, distinct=True, empty_ok=True,
                          also="(the modes whose λ paths are warm-started; [] for none)")
        check.integer("attack.warm_chain", self.warm_chain, 1, also="(λ per chain; 1 = every start cold)")
        check.values_from("attack.polish", self.polish, MODES, distinct=True, empty_ok=True,
                          also="(the modes whose ends are solved once more; [] for none)")
        check.number("attack.init_scale", self.init_scale, 0.0)
        check.integer("attack.output_mc_samples", self.output_mc_samples, 1)
        check.integer("attack.output_report_samples", self.output_report_samples, 2,
                      also="(its standard error needs two draws; 32 is the default)")
        check.integer("attack.seed", self.seed, 0)
        return self

    def _validate_grid_and_tasks(self) -> None:
        """The pairs, the λ grid, the modes and the similarities."""
        from attacks.objectives import LATENT_SIMILARITIES  # local: it imports torch

        check.integer("attack.n_pairs", self.n_pairs, 1)
        if self.lams is None:
            check.integer("attack.n_lambdas", self.n_lambdas, 1, also="(the paper uses 51)")
            low_high = self.lam_exponents
            if (not isinstance(low_high, (tuple, list)) or len(low_high) != 2
                    or not all(check.is_number(v) for v in low_high) or low_high[0] > low_high[1]):
                raise check.problem("attack.lam_exponents", low_high,
                                    "must be two finite numbers (low, high) with low <= high")
        else:
            check.numbers("attack.lams", self.lams, 0.0, also="(or null for the grid)")
            if len(set(float(v) for v in self.lams)) != len(self.lams):
                raise check.problem("attack.lams", self.lams, "must not repeat a value")
        check.values_from("attack.modes", self.modes, MODES, distinct=True)
        if LATENT in self.modes:
            check.values_from("attack.similarities", self.similarities, LATENT_SIMILARITIES, distinct=True)

    def _validate_solver(self) -> None:
        """The solver and its tolerances and budgets."""
        from attacks.solvers import SOLVERS  # local: it imports torch

        check.one_of("attack.solver", self.solver, sorted(SOLVERS))
        check.integer("attack.memory", self.memory, 1, also="(the literature uses 25)")
        check.number("attack.factr", self.factr, 0.0, strict=True, also="(the literature uses 10)")
        check.number("attack.pgtol", self.pgtol, 0.0)
        check.integer("attack.maxiter", self.maxiter, 1)
        check.integer("attack.maxfun", self.maxfun, 1)
        if self.batch_ftol is not None:
            check.number("attack.batch_ftol", self.batch_ftol, 0.0,
                         also="or null for scipy's factr * eps(float64)")
        if self.batch_memory is not None:
            check.integer("attack.batch_memory", self.batch_memory, 1,
                          also="(bytes) or null for the device default")
        if self.batch_chunk is not None:
            check.integer("attack.batch_chunk", self.batch_chunk, 1, also="or null to size batches by memory")
        if self.batch_history is not None:
            check.integer("attack.batch_history", self.batch_history, 1, also="or null to use 'memory'")
