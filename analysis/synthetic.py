"""Write a small, realistic synthetic results folder (the ``--out`` layout of CONTRACTS.md),
through the contract the sweep writes with (``results``: its store, schemas, layout and the
shape of ``sweep.json``), so a reader cannot tell it from a sweep's folder but by its numbers.

For tests, benchmarks and trying the report without running a sweep. The numbers follow the
paper's headline results in direction (β-TCVAE and Seatbelt-VAE grow harder to attack with β
and L, β-TCDLGM does not; ELBO of β-TCVAE falls faster with β than Seatbelt's; encoder norm
grows and decoder norm shrinks with β), with noise. The λ-selection rule of the attack step is
applied here only to fill the ``selected`` column (and the gallery's ``paper_lam``) realistically.
Each pair's attack path is an exact minimum of f(d) + λ‖d‖ for a distance f that falls with
‖d‖ (``_attack_path``), so the path-dependent columns (``delta_clean``, the budgets,
``worse_than_clean``, the gallery's unmoved flag) agree with their definitions.

    python -c "from analysis.synthetic import write_synthetic_results as w; w('sweeps/demo')"
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from analysis.load import TRAIN_ELBO
from results import kinds, layout, records, schema
from results.layout import trial_id
from results.store import Store
from results.vocabulary import DEFAULT_SIMILARITY, LATENT, OUTPUT

__all__ = ["DEFAULT_GRID", "trial_id", "write_synthetic_results", "log_synthetic_runs"]

# (model, beta, layers)
DEFAULT_GRID: list[tuple[str, float, int]] = (
    [("vae", 1.0, 1)]
    + [("tcvae", b, 1) for b in (1.0, 4.0, 10.0)]
    + [("tcdlgm", b, L) for b in (1.0, 4.0, 10.0) for L in (2, 3)]
    + [("seatbelt", b, L) for b in (1.0, 4.0, 10.0) for L in (2, 3)]
)


def _lams(n: int) -> np.ndarray:
    if n <= 1:
        return np.zeros(1)
    return np.concatenate([[0.0], 2.0 ** np.linspace(-20, 20, n - 1)])


def _latent_scale(model: str, beta: float, layers: int) -> float:
    if model == "vae":
        return 1.0
    if model == "tcvae":
        return 2.0 * beta**1.5
    if model == "seatbelt":
        return 3.0 * beta**1.5 * layers**2
    return 1.2  # tcdlgm: an attacker only needs z^1


def _output_scale(model: str, beta: float, layers: int) -> float:
    if model == "tcvae":
        return 100.0 * (1 + 0.02 * beta)
    if model == "seatbelt":
        return 100.0 * (1 + 0.03 * beta + 0.02 * layers)
    return 100.0


def _select(lam: np.ndarray, obj: np.ndarray) -> int:
    """The attack step's λ rule (``attacks.metrics.select_lambda``, which ``analysis`` may not
    import): the largest λ whose Δ is the smallest value above the mean Δ of the positive λ."""
    above = obj > obj[lam > 0].mean() if (lam > 0).any() else obj > obj.mean()
    if not above.any():
        return int(np.argmax(lam))
    m = obj[above].min()
    cand = np.where(above & np.isclose(obj, m))[0]
    return int(cand[np.argmax(lam[cand])])


def write_synthetic_results(
    out_dir: str | Path,
    *,
    datasets: Sequence[str] = ("dsprites",),
    grid: Iterable[tuple[str, float, int]] | None = None,
    z_dims: Sequence[int] = (10,),
    seeds: Sequence[int] = (0,),
    pairs: int = 3,
    n_lam: int = 6,
    similarities: Sequence[str] = (DEFAULT_SIMILARITY[LATENT],),
    failed: Sequence[str] = (),
    unhealthy: dict[str, str] | None = None,
    attacks: bool = True,
    noise: bool = True,
    gallery: bool = True,
    noise_samples: int = 40,
    image_size: int = 12,
    channels: int = 1,
    sweep_name: str = "synthetic",
    seed: int = 0,
    row_group_size: int | None = None,
) -> list[str]:
    """Write ``sweep.json``, ``train/``, ``noise/``, ``attacks/`` and ``gallery/`` into
    ``out_dir`` and return the trial ids. ``failed``: trial ids written with status ``failed``
    (and nothing else). ``unhealthy``: trial id -> health ("plateau" or "collapsed") of trials
    that finished but did not learn: their ELBO sits at the mean image's, and their attacks look
    extremely robust (as a collapsed encoder's do). ``attacks/noise/gallery=False`` leave those
    folders out."""
    out = Store(out_dir)
    grid = list(DEFAULT_GRID if grid is None else grid)
    rng = np.random.default_rng(seed)
    lam = _lams(n_lam)
    axes = records.GridConfig(datasets=list(datasets), models=sorted({g[0] for g in grid}, key=kinds.sort_key),
                              betas=sorted({float(g[1]) for g in grid}), layers=sorted({int(g[2]) for g in grid}),
                              z_dims=list(z_dims), seeds=list(seeds))
    records.write_sweep(out, {"name": sweep_name, "grid": asdict(axes)}, fingerprint="synthetic")
    ids = []
    failed = set(failed)
    unhealthy = dict(unhealthy or {})
    for dataset in datasets:
        for model, beta, layers in grid:
            for z in z_dims:
                for s in seeds:
                    tid = trial_id(dataset, model, beta, layers, z, s)
                    ids.append(tid)
                    base = dict(dataset=dataset, model=model, beta=float(beta), layers=int(layers),
                                z_dim=int(z), seed=int(s))
                    ok = tid not in failed
                    _write_train(out, tid, base, ok, sweep_name, rng, unhealthy.get(tid, "healthy"))
                    if not ok:
                        continue
                    if noise:
                        _write_noise(out, tid, base, noise_samples, rng)
                    if attacks:
                        _write_attacks(out, tid, base, pairs, lam, similarities, sweep_name, rng,
                                       gallery, image_size, channels, row_group_size,
                                       robust=1e4 if tid in unhealthy else 1.0)
    return ids


MEAN_IMAGE_LOGLIK = -512.0  # the synthetic mean-image model's held-out log-likelihood


def _write_train(out: Store, tid: str, g: dict, ok: bool, sweep: str, rng: np.random.Generator,
                 health: str = "healthy") -> None:
    model, beta, L = g["model"], g["beta"], g["layers"]
    elbo = {"vae": -100.0, "tcvae": -100.0 - 5.0 * beta, "tcdlgm": -95.0 - 1.0 * beta,
            "seatbelt": -90.0 - 1.0 * beta - L}.get(model, -100.0) + rng.normal(0, 1.0)
    units = [6] * L
    if health != "healthy":
        elbo = MEAN_IMAGE_LOGLIK - abs(rng.normal(0, 5.0))
        units = [0] * L if health == "collapsed" else units
    kl = [float(v) for v in rng.uniform(1, 5, size=L)]
    row = {
        "sweep": sweep, "trial_id": tid, **g,
        "status": "ok" if ok else "failed", "reason": "" if ok else "CUDA out of memory (synthetic)",
        "steps": 1000 if ok else 12, "seconds": 60.0, "images_per_s": 500.0,
        "health": health if ok else None,
        "health_reason": (f"synthetic {health} trial" if health != "healthy" else "synthetic healthy trial") if ok else None,
        "eval_images": 512 if ok else None, "elbo_mean_image": MEAN_IMAGE_LOGLIK if ok else None,
        "active_units": units if ok else None, "logvar_at_bound": [0.0] * L if ok else None,
        TRAIN_ELBO: elbo if ok else None, "recon_loglik": elbo + sum(kl) if ok else None,
        "kl_layers": kl if ok else None, "index_code_mi": 2.0, "tc": 1.0 / beta, "dim_kl": 3.0,
        "mig": None, "encoder_l2": 50.0 * (1 + 0.02 * beta) + rng.normal(0, 0.1),
        "decoder_l2": 60.0 * (1 - 0.02 * beta) + rng.normal(0, 0.1),
        "noise_loglik_mean": -200.0, "noise_loglik_median": -190.0, "clean_loglik_mean": -90.0,
    }
    out.write_table(layout.train_file(tid), schema.table([row], schema.TRAIN))


def _write_noise(out: Store, tid: str, g: dict, n: int, rng: np.random.Generator) -> None:
    model, beta = g["model"], g["beta"]
    shift = {"tcvae": 8.0 * beta, "seatbelt": 10.0 * beta, "tcdlgm": -6.0 * beta}.get(model, 0.0)
    sigmas = np.repeat([0.5, 1.0], n)
    loglik = -300.0 + shift + 60.0 * (1.0 - sigmas) + rng.normal(0, 15.0, size=sigmas.size)
    k = sigmas.size
    table = schema.conform({
        "trial_id": [tid] * k, "dataset": [g["dataset"]] * k, "model": [model] * k,
        "beta": np.full(k, beta), "layers": np.full(k, g["layers"]), "z_dim": np.full(k, g["z_dim"]),
        "seed": np.full(k, g["seed"]), "sigma": sigmas, "sample": np.tile(np.arange(n), 2), "loglik": loglik,
    }, schema.NOISE)
    out.write_table(layout.noise_file(tid), table)


SOURCE_TARGET_L2 = 9.0   # ‖x − xᵗ‖ of every synthetic pair: the largest distortion an attack needs
UNMOVED = 0.01           # ‖d‖ ≤ 1% of ‖x − xᵗ‖: the attack left the input where it was (d = 0)


def _budgets(dist_l2: np.ndarray, distance: np.ndarray, clean: float, cap: float) -> tuple[float, float]:
    """(budget_50, budget_90) of one pair's λ path: the smallest ‖d‖ among its attacks whose
    distance is at most 0.5 (0.1) × the clean distance; ``cap`` (‖x − xᵗ‖) when none is."""
    out = []
    for left in (0.5, 0.1):
        hit = distance <= left * clean
        out.append(float(min(dist_l2[hit].min(), cap)) if hit.any() else cap)
    return out[0], out[1]


def _attack_path(mode: str, scale: float, hardness: float, lam: np.ndarray, pairs: int,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every column of one task's attacks that follows from the attack itself. Each pair's
    distance falls with the distortion t = ‖d‖ as f(t) = C·(φ + (1 − φ)·exp(−t/s)) (φ = 0 in
    latent space; the output attack's −ELBO keeps a floor φC), so its Δ at λ is the exact min
    over 0 ≤ t ≤ ‖x − xᵗ‖ of f(t) + λt: never above f(0) = C (``delta_clean``) and never falling
    as λ grows, with t = 0 (the input unmoved) once λ ≥ (1 − φ)C/s. A harder model has a larger
    C and needs a larger distortion s per e-fold (on a grid of 20 λ or more, budget_50 comes out
    near s·ln 2; a coarser grid gives coarser budgets). The output attack's Δ carries
    Monte-Carlo noise (its standard error ``objective_se``), the solver's own draws
    (``delta_minimised``) come out a little lower, and one pair in about two output tasks ends
    above the clean value."""
    nl, cap, floor = lam.size, SOURCE_TARGET_L2, (0.0 if mode == LATENT else 0.6)
    clean = scale * (1 + 0.1 * np.arange(pairs)) * rng.lognormal(0, 0.1, size=pairs)
    s = (0.6 + 2.4 * hardness if mode == LATENT else 2.0) * rng.lognormal(0, 0.15, size=pairs)
    C, S, lams = np.repeat(clean, nl), np.repeat(s, nl), np.tile(lam, pairs)
    with np.errstate(divide="ignore"):
        t = np.clip(S * np.log((1 - floor) * C / (lams * S)), 0.0, cap)   # λ = 0: log(inf) -> the cap
    distance = C * (floor + (1 - floor) * np.exp(-t / S))
    objective = distance + lams * t
    se = np.zeros(C.size)
    delta_clean, minimised = C.copy(), objective.copy()
    if mode == OUTPUT:
        se = 0.004 * C
        delta_clean = np.repeat(clean + rng.normal(0, 0.004 * clean), nl)
        objective = np.where(t > 0, objective + rng.normal(0, se), delta_clean)
        minimised = np.where(t > 0, minimised * (1 - 0.03 * rng.random(C.size)), C)
        moved = np.flatnonzero((t > 0) & (lams > 0))
        if moved.size and rng.random() < 0.5:   # a fresh draw that the solver's d made worse
            k = moved[np.argmax(lams[moved])]
            objective[k] = delta_clean[k] + 4 * se[k]
        distance = objective - lams * t
    budgets = np.full((C.size, 2), np.nan)
    if mode == LATENT:
        for p in range(pairs):
            sl = slice(p * nl, (p + 1) * nl)
            budgets[sl] = _budgets(t[sl], distance[sl], clean[p], cap)
    return {"lam": lams, "objective": objective, "objective_se": se, "distance": distance,
            "delta_minimised": minimised, "delta_clean": delta_clean,
            "worse_than_clean": objective > delta_clean + 3 * se + 1e-9 * np.abs(delta_clean),
            "distortion_l2": t, "budget_50": budgets[:, 0], "budget_90": budgets[:, 1]}


def _pick_lams(lam: np.ndarray, objective: np.ndarray, dist_l2: np.ndarray) -> tuple[int, int]:
    """(the paper's pick, the λ shown in Fig. 1) of one pair: the rule's pick, or where that
    attack left the input unmoved, the rule's pick among the λ that moved it."""
    paper = _select(lam, objective)
    moved = np.flatnonzero(dist_l2 > UNMOVED * SOURCE_TARGET_L2)
    if dist_l2[paper] > UNMOVED * SOURCE_TARGET_L2 or moved.size == 0:
        return paper, paper
    return paper, int(moved[_select(lam[moved], objective[moved])])


def _write_attacks(out, tid, g, pairs, lam, sims, sweep, rng, gallery, size, channels, rgs,
                   robust: float = 1.0) -> None:
    model, beta, L = g["model"], g["beta"], g["layers"]
    tasks = [(LATENT, s) for s in sims] + [(OUTPUT, DEFAULT_SIMILARITY[OUTPUT])]
    nl = lam.size
    for mode, sim in tasks:
        scale = robust * (_latent_scale(model, beta, L) if mode == LATENT else _output_scale(model, beta, L))
        hardness = np.log1p(scale) / (1 + np.log1p(scale))
        path = _attack_path(mode, scale, hardness, lam, pairs, rng)
        pair = np.repeat(np.arange(pairs), nl)
        frac = path["lam"] / (1.0 + path["lam"])
        selected = np.zeros(pair.size, dtype=bool)
        auddc = np.empty(pair.size)
        picks = []
        for p in range(pairs):
            sl = slice(p * nl, (p + 1) * nl)
            paper, shown = _pick_lams(lam, path["objective"][sl], path["distortion_l2"][sl])
            selected[p * nl + paper] = True
            picks.append((lam[paper], path["distortion_l2"][sl][paper] <= UNMOVED * SOURCE_TARGET_L2, lam[shown]))
            auddc[sl] = float(np.clip(hardness + rng.normal(0, 0.03), 0, 1))
        n = pair.size
        table = schema.conform({
            "sweep": [sweep] * n, "trial_id": [tid] * n, "dataset": [g["dataset"]] * n, "model": [model] * n,
            "beta": np.full(n, beta), "layers": np.full(n, L), "z_dim": np.full(n, g["z_dim"]),
            "seed": np.full(n, g["seed"]), "mode": [mode] * n, "similarity": [sim] * n,
            "pair": pair, "source_index": pair * 2, "target_index": pair * 2 + 1, **path,
            "adv_target_l2": 3.0 + 4.0 * frac * hardness + rng.normal(0, 0.05, n),
            "target_nll": 50.0 + 100.0 * frac * hardness + rng.normal(0, 1.0, n),
            "source_target_l2": np.full(n, SOURCE_TARGET_L2), "rec_source_target_l2": np.full(n, 8.5),
            "rec_target_target_l2": np.full(n, 2.0), "selected": selected, "auddc": auddc,
            "auddc_reason": [""] * n,
            "solver": ["scipy"] * n, "iterations": np.full(n, 100), "seconds": np.full(n, 0.5),
        }, schema.ATTACKS)
        relpath = layout.attack_file(tid, mode, sim, 0, pairs - 1)
        out.write_table(relpath, table, row_group_size=rgs)
        if gallery:
            _write_gallery(out, layout.gallery_file(relpath), tid, g, mode, sim, picks, size, channels, rng)


def _write_gallery(out, relpath, tid, g, mode, sim, picks, size, channels, rng) -> None:
    """One row per pair; ``picks``: (paper_lam, paper_lam_unmoved, the λ shown) of each pair."""
    rows = []
    yy, xx = np.mgrid[0:size, 0:size]
    for p, (paper_lam, unmoved, shown) in enumerate(picks):
        src = ((xx + p) % 4 < 2).astype(np.uint8) * 255
        tgt = ((yy + p) % 4 < 2).astype(np.uint8) * 255
        dist = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
        imgs = {
            "input": src, "reconstruction": (src * 0.9).astype(np.uint8),
            "adversarial": np.clip(src.astype(int) + (dist // 8) - 16, 0, 255).astype(np.uint8),
            "distortion": dist, "adversarial_reconstruction": ((src // 2) + (tgt // 2)).astype(np.uint8),
            "target": tgt,
        }
        row = {"trial_id": tid, **g, "mode": mode, "similarity": sim, "pair": p, "lam": float(shown),
               "paper_lam": float(paper_lam), "paper_lam_unmoved": bool(unmoved),
               "channels": channels, "height": size, "width": size}
        for k, v in imgs.items():
            row[k] = np.repeat(v[:, :, None], channels, axis=2).tobytes()
        rows.append(row)
    out.write_table(relpath, schema.table(rows, schema.GALLERY))


def log_synthetic_runs(
    out_dir: str | Path,
    tracking_uri: str,
    experiment_name: str = "synthetic",
    artifact_location: str | None = None,
) -> str:
    """Create an MLflow experiment with a parent run and one child run per trial in
    ``out_dir/train`` (params dataset, model, beta, layers, z_dim, seed, trial_id; tag trial_id;
    the train metrics), the way the sweep logs them, and write ``out_dir/tracking.json``.
    Returns the parent run id. β is logged as ``f"{beta:g}"`` ("4", "10"), so numeric filters on
    params must not compare strings."""
    import mlflow  # noqa: PLC0415  (optional at import time)
    import time  # noqa: PLC0415

    import pandas as pd  # noqa: PLC0415
    from mlflow.entities import Metric, Param  # noqa: PLC0415

    now = int(time.time() * 1000)

    out = Store(out_dir)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment_name)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment_name, artifact_location=artifact_location)
    parent = client.create_run(exp_id, run_name="sweep", tags={"sweep": "synthetic"})
    pid = parent.info.run_id
    files = out.list_files(layout.TRAIN, ".parquet")
    train = pd.concat([out.read_table(f).to_pandas() for f in files], ignore_index=True) if files else pd.DataFrame()
    metrics = [TRAIN_ELBO, "tc", "mig", "encoder_l2", "decoder_l2", "recon_loglik", "noise_loglik_mean"]
    for r in train.itertuples():
        run = client.create_run(exp_id, run_name=r.trial_id,
                                tags={"mlflow.parentRunId": pid, "trial_id": r.trial_id, "status": r.status})
        rid = run.info.run_id
        params = {"dataset": r.dataset, "model": r.model, "beta": f"{r.beta:g}", "layers": str(r.layers),
                  "z_dim": str(r.z_dim), "seed": str(r.seed), "trial_id": r.trial_id}
        values = {m: getattr(r, m, None) for m in metrics}
        client.log_batch(
            rid,
            metrics=[Metric(m, float(v), now, 0) for m, v in values.items() if v is not None and np.isfinite(v)],
            params=[Param(k, v) for k, v in params.items()],
        )
        client.set_terminated(rid, status="FINISHED" if r.status == "ok" else "FAILED")
    records.write_tracking(out, {"tracking_uri": tracking_uri, "experiment_name": experiment_name,
                                 "experiment_id": exp_id, "parent_run_id": pid})
    return pid
