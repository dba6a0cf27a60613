"""Adversarial attacks on VAEs: objectives, solvers, the paper's protocol and its metrics.

Light to import: the numpy-only protocol (``lambda_grid``, ``sample_pairs``, ``select_lambda``,
``auddc``) lives in ``attacks.metrics``; the torch parts load on first use.

    from attacks import AttackConfig, run_attacks, lambda_grid, sample_pairs
    rows, gallery = run_attacks(model, sources, targets, pair_ids, src_idx, tgt_idx,
                                lambda_grid(), "latent", "kl", AttackConfig())
"""

from attacks.metrics import auddc, auddc_from_points, ddc_points, lambda_grid, sample_pairs, select_lambda

_LAZY = {
    "AttackConfig": "attacks.config",
    "MODES": "attacks.config",
    "LATENT_SIMILARITIES": "attacks.objectives",
    "LatentSimilarity": "attacks.objectives",
    "register_similarity": "attacks.objectives",
    "LatentObjective": "attacks.objectives",
    "OutputObjective": "attacks.objectives",
    "build_objective": "attacks.objectives",
    "Solver": "attacks.solvers",
    "SolveResult": "attacks.solvers",
    "ScipyLBFGSB": "attacks.solvers",
    "SOLVERS": "attacks.solvers",
    "get_solver": "attacks.solvers",
    "run_attacks": "attacks.run",
    "attack_problems": "attacks.run",
    "attack_metrics": "attacks.run",
    "ATTACK_COLUMNS": "attacks.run",
    "GALLERY_COLUMNS": "attacks.run",
    "GALLERY_PANELS": "attacks.run",
}

__all__ = ["auddc", "auddc_from_points", "ddc_points", "lambda_grid", "sample_pairs",
           "select_lambda", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'attacks' has no attribute {name!r}")
