"""The attack driver: every (pair, λ) attack of one checkpoint for one (mode, similarity).

``run_attacks`` is what the sweep's Ray tasks call. It returns plain rows (dicts of Python
scalars) for the ``attacks/`` table and, per pair, the six pictures of the paper's Fig. 1 for
the λ the paper's rule selects, or, where that attack left the input unmoved, the rule's pick
among the λ that moved it (``gallery/`` table). No files, no Ray: a notebook can call it.

Randomness: every random draw of an attack (the start d0, the fixed noise of its objective, the
sample z* behind ``target_nll``) comes from a generator seeded by (seed, source_index,
target_index, stream), so a result does not depend on how the problems were batched into tasks,
and the attacks of one pair share their noise across λ (common random numbers). The output
attack minimises the mean over ``output_mc_samples`` fixed draws (Expectation over
Transformation) and its Δ is reported, with its standard error, on ``output_report_samples``
fresh draws; a row also keeps the Δ the solver minimised and the no-attack value Δ(d = 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from attacks.config import OUTPUT_SIMILARITIES, AttackConfig
from attacks.envelope import best_on_path
from attacks.metrics import auddc_with_reason, distortion_budget, select_shown_lambda
from attacks.objectives import LATENT_SIMILARITIES, build_objective, sample_encoder_noise
from attacks.polish import restarted_from_ends
from attacks.solvers import SolveResult, get_solver
from attacks.warm import warm_start_predecessors
from results import schema
from results.vocabulary import LATENT, OUTPUT

__all__ = ["run_attacks", "attack_problems", "problem_generators", "attack_metrics", "to_uint8_image",
           "distortion_image", "ATTACK_COLUMNS", "GALLERY_COLUMNS", "GALLERY_PANELS", "AttackOutcome"]

# the columns of a row from run_attacks: the attacks table's less the identity the sweep adds
ATTACK_COLUMNS = tuple(name for name in schema.ATTACKS.names if name not in schema.IDENTITY_FIELDS)
# the keys of a gallery dict: the gallery table's less the trial identity, the pictures included
GALLERY_COLUMNS = tuple(name for name in schema.GALLERY.names if name not in schema.TRIAL_FIELDS)
GALLERY_PANELS = schema.GALLERY_PANELS

_STREAM_D0, _STREAM_OBJECTIVE, _STREAM_METRICS, _STREAM_REPORT = 0, 1, 2, 3
_CHUNK = 64  # problems per no-grad evaluation batch
# float32 rounding allowance of the worse-than-clean flag, relative to Δ(d = 0)
WORSE_THAN_CLEAN_RTOL = 1e-4


def problem_generators(seed: int, source_indices: Sequence[int], target_indices: Sequence[int],
                       stream: int) -> list[torch.Generator]:
    """One torch generator per problem, seeded by (seed, source, target, stream)."""
    gens = []
    for s, t in zip(source_indices, target_indices):
        ss = np.random.SeedSequence([int(seed), int(s), int(t), int(stream)])
        gens.append(torch.Generator().manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)))
    return gens


def to_uint8_image(img: Tensor) -> np.ndarray:
    """``[C, H, W]`` in [0, 1] → uint8 ``H×W×C``."""
    return (img.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def distortion_image(d: Tensor) -> np.ndarray:
    """d ``[C, H, W]`` min–max normalised to [0, 255] as uint8 ``H×W×C`` (all 0 if d is constant)."""
    d = d.detach().double()
    lo, hi = d.min(), d.max()
    scaled = (d - lo) / (hi - lo) if hi > lo else torch.zeros_like(d)
    return to_uint8_image(scaled)


@torch.no_grad()
def attack_metrics(model, x: Tensor, x_target: Tensor, d: Tensor,
                   generators: Sequence[torch.Generator]) -> dict[str, Tensor]:
    """The reporting metrics of attacks already solved, one value per problem.

    distortion_l2 = ‖d‖, adv_target_l2 = ‖rec(x*) − x^t‖, target_nll = −log p(x^t | z*) with one
    z* ~ q(z | x*) drawn from ``generators``, source_target_l2 = ‖x − x^t‖,
    rec_source_target_l2 = ‖rec(x) − x^t‖, rec_target_target_l2 = ‖rec(x^t) − x^t‖,
    plus the reconstructions themselves (``rec_adv``, ``rec_source``) for the pictures.
    """
    def norm(t: Tensor) -> Tensor:
        return torch.linalg.vector_norm(t.flatten(1), dim=1)

    x_adv = (x + d).clamp(0.0, 1.0)
    eps = [n[0] for n in sample_encoder_noise(model, x, generators, 1)]
    out: dict[str, list[Tensor]] = {k: [] for k in (*schema.ATTACK_METRICS, "rec_adv", "rec_source")}
    for a in range(0, x.shape[0], _CHUNK):
        sl = slice(a, a + _CHUNK)
        xa, xt, xs = x_adv[sl], x_target[sl], x[sl]
        rec_adv, rec_src, rec_tgt = model.reconstruct(xa), model.reconstruct(xs), model.reconstruct(xt)
        enc = model.encode(xa, eps=[e[sl] for e in eps])
        out["distortion_l2"].append(norm(d[sl]))
        out["adv_target_l2"].append(norm(rec_adv - xt))
        out["target_nll"].append(-model.log_likelihood(xt, enc.z))
        out["source_target_l2"].append(norm(xs - xt))
        out["rec_source_target_l2"].append(norm(rec_src - xt))
        out["rec_target_target_l2"].append(norm(rec_tgt - xt))
        out["rec_adv"].append(rec_adv)
        out["rec_source"].append(rec_src)
    return {k: torch.cat(v) for k, v in out.items()}


@dataclass
class AttackOutcome:
    """What ``attack_problems`` returns: the solver's result, the attack's distortion and, per
    problem, Δ as reported (the mean over the reporting draws and its Monte-Carlo standard
    error), its distance part, the objective the solver minimised at that distortion, and the
    no-attack value Δ(d = 0) on the reporting draws, which ``Δ*(λ) = min_d f(d) + λ‖d‖`` can
    never exceed."""

    result: SolveResult
    d: Tensor                # [P, C, H, W] the attack's distortion (attacks.envelope)
    from_path: Tensor        # [P] bool: d is another λ's solution or 0, not the solver's own
    objective: Tensor        # [P] reported Δ
    objective_se: Tensor     # [P] its Monte-Carlo standard error (0: deterministic)
    distance: Tensor         # [P] reported Δ without λ‖d‖
    delta_minimised: Tensor  # [P] the objective the solver minimised (its own draws), at d
    delta_clean: Tensor      # [P] reported objective at d = 0

    def worse_than_clean(self) -> Tensor:
        """[P] bool: the reported Δ is above the no-attack value by more than three standard
        errors (and float32 rounding, which is all a deterministic objective has)."""
        rounding = WORSE_THAN_CLEAN_RTOL * self.delta_clean.abs()
        return self.objective > self.delta_clean + 3.0 * self.objective_se + rounding


@torch.no_grad()
def _evaluate_chunked(objective, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(Δ, its Monte-Carlo standard error, distance) of every problem at ``d``, in chunks."""
    values = [objective.evaluate_with_error(d[a:a + _CHUNK], list(range(a, min(a + _CHUNK, d.shape[0]))))
              for a in range(0, d.shape[0], _CHUNK)]
    return (torch.cat([v.total for v in values]), torch.cat([v.se for v in values]),
            torch.cat([v.distance for v in values]))


def attack_problems(model, x: Tensor, x_target: Tensor, lams: Tensor, mode: str, similarity: str,
                    config: AttackConfig, source_indices: Sequence[int], target_indices: Sequence[int],
                    seed: int) -> AttackOutcome:
    """Solve P independent problems (row p: source x[p], target x_target[p], λ lams[p]).

    In the modes of ``config.warm_start`` a problem starts from the solution of its pair's next
    larger λ (``attacks.warm``), else every problem from its random d0; in the modes of
    ``config.polish`` every end is then solved once more from itself (``attacks.polish``).
    Each λ then takes the best of its pair's solutions and d = 0 (``attacks.envelope``). The
    output attack
    minimises the mean over ``output_mc_samples`` fixed draws and is reported on
    ``output_report_samples`` fresh ones; the latent attack is deterministic and reported on the
    objective it minimised.
    """
    gen_d0 = problem_generators(seed, source_indices, target_indices, _STREAM_D0)
    gen_obj = problem_generators(seed, source_indices, target_indices, _STREAM_OBJECTIVE)
    objective = build_objective(model, mode, similarity, x, x_target, lams, gen_obj,
                                mc_samples=config.output_mc_samples)
    lower = -x.detach().double()
    upper = 1.0 - x.detach().double()
    d0 = torch.stack([
        (torch.rand(x.shape[1:], generator=g, dtype=torch.float64) * 2 - 1) * config.init_scale
        for g in gen_d0]).to(x.device)
    d0 = torch.minimum(torch.maximum(d0, lower), upper).to(x.dtype)
    after = (warm_start_predecessors(source_indices, target_indices, lams.tolist(), config.warm_chain)
             if mode in config.warm_start else None)
    solver = get_solver(config.solver)
    result = solver.solve(objective, d0, lower, upper, config, after=after)
    if mode in config.polish:
        result = restarted_from_ends(solver, objective, result, lower, upper, config)
    d, from_path = best_on_path(objective, result.d, source_indices, target_indices)
    report = objective
    if mode == OUTPUT:
        gen_report = problem_generators(seed, source_indices, target_indices, _STREAM_REPORT)
        report = build_objective(model, mode, similarity, x, x_target, lams, gen_report,
                                 mc_samples=config.output_report_samples)
    minimised = _evaluate_chunked(objective, d)
    total, se, dist = minimised if report is objective else _evaluate_chunked(report, d)
    clean, _, _ = _evaluate_chunked(report, torch.zeros_like(d))
    return AttackOutcome(result, d, from_path, total, se, dist, minimised[0], clean)


def run_attacks(
    model,
    sources: Tensor,
    targets: Tensor,
    pair_ids: Sequence[int],
    source_indices: Sequence[int],
    target_indices: Sequence[int],
    lams: Sequence[float],
    mode: str,
    similarity: str,
    config: Optional[AttackConfig] = None,
    seed: Optional[int] = None,
) -> tuple[list[dict], list[dict]]:
    """Attack every pair at every λ with one (mode, similarity); the paper's protocol.

    sources, targets: ``[n_pairs, C, H, W]`` in [0, 1], row i being pair ``pair_ids[i]`` (dataset
    indices ``source_indices[i]`` → ``target_indices[i]``). ``lams``: the λ values, each pair is
    attacked at all of them (n_pairs · len(lams) attacks). ``mode``: ``LATENT`` (``similarity``
    a name in ``LATENT_SIMILARITIES``) or ``OUTPUT`` (``similarity`` ``ELBO``), the words of
    ``results.vocabulary``. ``seed`` defaults to ``config.seed``.

    Returns ``(rows, gallery)``: one row per attack with the columns ``ATTACK_COLUMNS`` (Python
    scalars; ``selected`` marks the λ chosen by ``select_lambda`` on the pair's ``objective``
    values, ``auddc`` is the pair's AUDDC over these λ), and one gallery dict per pair for its
    selected λ with the keys ``GALLERY_COLUMNS``: mode, similarity, pair, lam, channels, height,
    width and the six uint8 ``H×W×C`` arrays ``GALLERY_PANELS``.
    """
    config = (config or AttackConfig()).validate()
    seed = config.seed if seed is None else int(seed)
    _check_task(mode, similarity)
    n = sources.shape[0]
    pair_ids, source_indices, target_indices = (
        [int(v) for v in seq] for seq in (pair_ids, source_indices, target_indices))
    if not (targets.shape == sources.shape and len(pair_ids) == len(source_indices)
            == len(target_indices) == n):
        raise ValueError("sources, targets, pair_ids, source_indices and target_indices must "
                         "describe the same number of pairs")
    lam_list = [float(v) for v in lams]
    m = len(lam_list)
    if n == 0 or m == 0:
        return [], []

    solved = _solve(model, sources, targets, source_indices, target_indices, lam_list, mode,
                    similarity, config, seed)
    rows: list[dict] = []
    gallery: list[dict] = []
    for i in range(n):
        ps = slice(i * m, (i + 1) * m)
        attack = {k: v[ps] for k, v in solved.per_problem.items()}
        scal = {k: v[ps] for k, v in solved.scal.items()}
        pair = _pair_measures(mode, lam_list, attack, scal)
        task = {"mode": mode, "similarity": similarity, "pair": pair_ids[i]}
        for j, lam in enumerate(lam_list):
            row = {**task, "source_index": source_indices[i], "target_index": target_indices[i],
                   "lam": lam, **_problem_values(solved, i * m + j), "selected": j == pair["paper"],
                   "solver": config.solver,
                   **{k: pair[k] for k in ("auddc", "auddc_reason", "budget_50", "budget_90")}}
            rows.append({name: row[name] for name in ATTACK_COLUMNS})
        gallery.append(_gallery_entry(solved, task, i * m, lam_list, pair))
    return rows, gallery


def _check_task(mode: str, similarity: str) -> None:
    allowed = {LATENT: tuple(LATENT_SIMILARITIES), OUTPUT: OUTPUT_SIMILARITIES}
    if similarity not in allowed.get(mode, ()):
        raise ValueError(f"unknown (mode, similarity) = ({mode!r}, {similarity!r}); allowed: {allowed}")


@dataclass
class _Solved:
    """What ``run_attacks`` solved: problem p = (pair i, λ j), p = i * m + j, its inputs, the
    outcome and the reporting metrics, and those as float64 / bool numpy arrays."""

    x: Tensor                         # [n·m, C, H, W] sources, each repeated over the λ
    xt: Tensor                        # [n·m, C, H, W] targets
    outcome: AttackOutcome
    metrics: dict[str, Tensor]        # attack_metrics, the reconstructions included
    per_problem: dict[str, np.ndarray]  # the outcome's reported values, as the table has them
    scal: dict[str, np.ndarray]       # schema.ATTACK_METRICS


def _solve(model, sources: Tensor, targets: Tensor, source_indices: list[int],
           target_indices: list[int], lam_list: list[float], mode: str, similarity: str,
           config: AttackConfig, seed: int) -> _Solved:
    """Attack every (pair, λ) at once in eval mode, then measure the results."""
    n, m = sources.shape[0], len(lam_list)
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    x = sources.to(device=device, dtype=dtype).repeat_interleave(m, dim=0)
    xt = targets.to(device=device, dtype=dtype).repeat_interleave(m, dim=0)
    lam_t = torch.tensor(lam_list * n, dtype=dtype, device=device)
    src_p = [s for s in source_indices for _ in range(m)]
    tgt_p = [t for t in target_indices for _ in range(m)]

    was_training = model.training
    model.eval()
    try:
        outcome = attack_problems(model, x, xt, lam_t, mode, similarity, config, src_p, tgt_p, seed)
        metrics = attack_metrics(model, x, xt, outcome.d,
                                 problem_generators(seed, src_p, tgt_p, _STREAM_METRICS))
    finally:
        model.train(was_training)

    scal = {k: metrics[k].detach().double().cpu().numpy() for k in schema.ATTACK_METRICS}
    per_problem = {k: getattr(outcome, k).detach().double().cpu().numpy() for k in (
        "objective", "objective_se", "distance", "delta_minimised", "delta_clean")}
    per_problem["worse_than_clean"] = outcome.worse_than_clean().cpu().numpy()
    per_problem["from_path"] = outcome.from_path.cpu().numpy()
    return _Solved(x, xt, outcome, metrics, per_problem, scal)


def _problem_values(solved: _Solved, p: int) -> dict:
    """Problem ``p``'s own columns of its row, as Python scalars."""
    result = solved.outcome.result
    return {**{k: (bool(v[p]) if v.dtype == bool else float(v[p])) for k, v in solved.per_problem.items()},
            **{k: float(v[p]) for k, v in solved.scal.items()},
            "iterations": int(result.iterations[p]),
            "evaluations": int(result.evaluations[p]),
            "seconds": float(result.seconds[p])}


def _gallery_entry(solved: _Solved, task: dict, first: int, lams: list[float], pair: dict) -> dict:
    """The pair's Fig. 1 at the λ shown (its problems start at ``first``): ``GALLERY_COLUMNS``."""
    p = first + pair["shown"]
    x, d = solved.x[p], solved.outcome.d[p]
    C, H, W = x.shape
    # input, reconstruction, adversarial, distortion, adversarial_reconstruction, target
    pictures = (
        to_uint8_image(x),
        to_uint8_image(solved.metrics["rec_source"][p]),
        to_uint8_image((x + d).clamp(0, 1)),
        distortion_image(d),
        to_uint8_image(solved.metrics["rec_adv"][p]),
        to_uint8_image(solved.xt[p]),
    )
    entry = {**task, "lam": lams[pair["shown"]], "paper_lam": lams[pair["paper"]],
             "paper_lam_unmoved": pair["unmoved"], "channels": int(C), "height": int(H),
             "width": int(W), **dict(zip(GALLERY_PANELS, pictures, strict=True))}
    return {name: entry[name] for name in GALLERY_COLUMNS}


def _pair_measures(mode: str, lams: list[float], attack: dict[str, np.ndarray],
                   scal: dict[str, np.ndarray]) -> dict:
    """One pair's per-pair numbers from its λ path: the paper's λ and the one Fig. 1 shows,
    AUDDC, and (latent attack) the distortion budgets that remove 50% / 90% of the clean
    distance. ``attack`` and ``scal`` hold the pair's values, one per λ."""
    shown, paper, unmoved = select_shown_lambda(lams, attack["objective"], scal["distortion_l2"],
                                                scal["source_target_l2"][0])
    area, area_reason = auddc_with_reason(
        scal["distortion_l2"], scal["adv_target_l2"], scal["source_target_l2"][0],
        scal["rec_source_target_l2"][0], scal["rec_target_target_l2"][0])
    budgets = {f"budget_{q}": float("nan") for q in (50, 90)}
    if mode == LATENT:
        for q in (50, 90):
            budgets[f"budget_{q}"] = distortion_budget(
                scal["distortion_l2"], attack["distance"], float(attack["delta_clean"][0]),
                float(scal["source_target_l2"][0]), removed=q / 100)
    return {"shown": shown, "paper": paper, "unmoved": unmoved, "auddc": float(area),
            "auddc_reason": area_reason, **budgets}
