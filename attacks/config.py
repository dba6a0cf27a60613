"""``AttackConfig``: every knob of the attack protocol, with the literature's defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from attacks.metrics import lambda_grid
from results.errors import ConfigError
# MODES and OUTPUT_SIMILARITIES are importable from here as before; results.vocabulary holds them
from results.vocabulary import DEFAULT_SIMILARITY, LATENT, MODES, OUTPUT_SIMILARITIES  # noqa: F401


@dataclass
class AttackConfig:
    """How to attack one checkpoint.

    Defaults follow the paper (10 pairs, 51 λ, KL latent attack and the ELBO output attack) and,
    for the solver, Gondim-Ribeiro et al. (2018): scipy's L-BFGS-B with memory 25 and factr 10;
    pgtol, maxiter and maxfun are scipy's ``fmin_l_bfgs_b`` defaults, which they left unchanged.
    """

    n_pairs: int = 10                      # random (source, target) pairs per dataset
    n_lambdas: int = 51                    # size of the λ grid: 0 and n_lambdas-1 powers of two
    lam_exponents: tuple[float, float] = (-20.0, 20.0)  # c range of λ = 2^c
    lams: Optional[tuple[float, ...]] = None  # explicit λ values; overrides n_lambdas/lam_exponents
    modes: tuple[str, ...] = MODES
    similarities: tuple[str, ...] = (DEFAULT_SIMILARITY[LATENT],)  # the paper's kl; the latent
                                           #   attack's r, attacks.objectives.LATENT_SIMILARITIES:
                                           #   kl | l2_mean | l2_sample | w2 built in
    solver: str = "scipy"                  # a name in attacks.solvers.SOLVERS
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
        # local: keeps this module free of torch (the registries' modules import it)
        from attacks.objectives import LATENT_SIMILARITIES
        from attacks.solvers import SOLVERS

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"attack config field {name!r} = {getattr(self, name)!r}: {why}")

        def is_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        if not is_int(self.n_pairs) or self.n_pairs < 1:
            raise bad("n_pairs", "must be an integer >= 1")
        if self.lams is None:
            if not is_int(self.n_lambdas) or self.n_lambdas < 1:
                raise bad("n_lambdas", "must be an integer >= 1 (the paper uses 51)")
            le = self.lam_exponents
            if (not isinstance(le, (tuple, list)) or len(le) != 2 or not all(is_num(v) for v in le)
                    or le[0] > le[1]):
                raise bad("lam_exponents", "must be two finite numbers (low, high) with low <= high")
        else:
            if (not isinstance(self.lams, (tuple, list)) or len(self.lams) == 0
                    or not all(is_num(v) and v >= 0 for v in self.lams)):
                raise bad("lams", "must be a non-empty list of finite numbers >= 0 (or null for the grid)")
            if len(set(float(v) for v in self.lams)) != len(self.lams):
                raise bad("lams", "must not repeat a value")
        if (not isinstance(self.modes, (tuple, list)) or len(self.modes) == 0
                or any(m not in MODES for m in self.modes) or len(set(self.modes)) != len(self.modes)):
            raise bad("modes", f"must be a non-empty list of distinct values from {list(MODES)}")
        if LATENT in self.modes and (
            not isinstance(self.similarities, (tuple, list)) or len(self.similarities) == 0
            or any(s not in LATENT_SIMILARITIES for s in self.similarities)
            or len(set(self.similarities)) != len(self.similarities)
        ):
            raise bad("similarities",
                      f"must be a non-empty list of distinct values from {list(LATENT_SIMILARITIES)}")
        if self.solver not in SOLVERS:
            raise bad("solver", f"must be one of {sorted(SOLVERS)}")
        if not is_int(self.memory) or self.memory < 1:
            raise bad("memory", "must be an integer >= 1 (the literature uses 25)")
        if not is_num(self.factr) or self.factr <= 0:
            raise bad("factr", "must be a finite number > 0 (the literature uses 10)")
        if not is_num(self.pgtol) or self.pgtol < 0:
            raise bad("pgtol", "must be a finite number >= 0")
        if not is_int(self.maxiter) or self.maxiter < 1:
            raise bad("maxiter", "must be an integer >= 1")
        if not is_int(self.maxfun) or self.maxfun < 1:
            raise bad("maxfun", "must be an integer >= 1")
        if self.batch_ftol is not None and (not is_num(self.batch_ftol) or self.batch_ftol < 0):
            raise bad("batch_ftol", "must be a finite number >= 0, or null for scipy's factr * eps(float64)")
        if self.batch_memory is not None and (not is_int(self.batch_memory) or self.batch_memory < 1):
            raise bad("batch_memory", "must be an integer number of bytes >= 1, or null for the device default")
        if self.batch_chunk is not None and (not is_int(self.batch_chunk) or self.batch_chunk < 1):
            raise bad("batch_chunk", "must be an integer >= 1, or null to size batches by memory")
        if self.batch_history is not None and (not is_int(self.batch_history) or self.batch_history < 1):
            raise bad("batch_history", "must be an integer >= 1, or null to use 'memory'")
        if (not isinstance(self.warm_start, (tuple, list)) or any(m not in MODES for m in self.warm_start)
                or len(set(self.warm_start)) != len(self.warm_start)):
            raise bad("warm_start", f"must be a list of distinct values from {list(MODES)} (the "
                                    "modes whose λ paths are warm-started; [] for none)")
        if not is_int(self.warm_chain) or self.warm_chain < 1:
            raise bad("warm_chain", "must be an integer >= 1 (λ per chain; 1 = every start cold)")
        if not is_num(self.init_scale) or self.init_scale < 0:
            raise bad("init_scale", "must be a finite number >= 0")
        if not is_int(self.output_mc_samples) or self.output_mc_samples < 1:
            raise bad("output_mc_samples", "must be an integer >= 1")
        if not is_int(self.output_report_samples) or self.output_report_samples < 2:
            raise bad("output_report_samples", "must be an integer >= 2 (its standard error needs "
                                               "two draws; 32 is the default)")
        if not is_int(self.seed) or self.seed < 0:
            raise bad("seed", "must be an integer >= 0")
        return self
