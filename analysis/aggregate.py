"""The paper's aggregations of the sweep's results.

Only **healthy** trials enter an aggregate (``status == "ok"`` and ``health == "healthy"``, see
``sweep.train.health``): a model that never left the mean-image plateau, or whose encoder collapsed,
looks robust for reasons that have nothing to do with robustness. ``left_out`` names the others
and why; the claims (``analysis.claims``) say "not measured" where a side has no healthy trial.

Sources of variation (the paper's CIs): input–target pairs, |z|, seeds, and L where a figure
pools over it. The unit of a CI is:

* train metrics (ELBO, weight norms): one trial; pooled over |z|, seeds and L (Fig. 3);
* attack metrics: one (trial, pair). **"all λ" (the paper's Δ)**: the pair's mean over the
  positive λ, the paper's 1/50 Σ Δ(λ(c_i)); **"selected λ"**: the attack at the λ the attack
  step's rule picked for the pair (the ``selected`` column); AUDDC and the latent budgets
  (``budget_50``, ``budget_90``: the smallest ‖d‖ on the pair's λ path that removes half / 90%
  of the clean distance) are one value per pair; ``clean_left`` (``with_clean_left``: distance /
  delta_clean, the fraction of the no-attack distance an attack leaves) is per λ, like Δ.

Δ measures how far apart the attack leaves the two codes, which starts from how far apart the
clean source and target already are; the budgets and ``clean_left`` measure the model's
resistance apart from that starting distance.

The attack objective Δ spans orders of magnitude across models (the paper plots it on log
axes), so it is aggregated on a log scale: geometric means, intervals of the mean log, ratios
of geometric means. The other metrics are aggregated on a linear scale.

The λ-selection rule and AUDDC are computed by the attack step; they are read, never recomputed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.load import TRAIN_ELBO
from analysis.stats import bootstrap_ratio, summarize, summarize_log
from results import kinds
from results.schema import TRIAL_FIELDS
from results.vocabulary import DEFAULT_SIMILARITY, unit_of

__all__ = [
    "METRICS",
    "HEALTHY",
    "ok_trials",
    "trial_health",
    "healthy_trial_ids",
    "keep_healthy",
    "left_out",
    "default_similarity",
    "attack_rows",
    "with_clean_left",
    "pair_units",
    "summarize_metric",
    "elbo_by_beta",
    "attack_by_beta",
    "attack_heatmap",
    "weight_norm_table",
    "noise_sigma",
]

@dataclass(frozen=True)
class Metric:
    column: str
    label: str
    unit: str
    per_pair: bool = False  # one value per (trial, pair) rather than per λ
    log_scale: bool = False  # aggregated as geometric means (positive, spans orders of magnitude)
    axis: str = ""  # a figure axis's label, where "label (unit)" is too long for one


METRICS = {
    "objective": Metric("objective", "Δ (final attack objective)", "the similarity's (objective_unit)",
                        log_scale=True),
    "adv_target_l2": Metric("adv_target_l2", "‖rec(x*) − xᵗ‖₂", "L2, pixels in [0, 1]"),
    "target_nll": Metric("target_nll", "−log p(xᵗ | z*)", "nats"),
    "auddc": Metric("auddc", "AUDDC", "unitless, higher = harder to attack", per_pair=True),
    # latent robustness apart from the clean distance (attack files of issue 23 on; null before)
    "budget_50": Metric("budget_50", "budget_50: ‖d‖ removing half the clean distance",
                        "L2 of d, pixels in [0, 1]", per_pair=True, log_scale=True, axis="budget_50: ‖d‖ (L2)"),
    "budget_90": Metric("budget_90", "budget_90: ‖d‖ removing 90% of the clean distance",
                        "L2 of d, pixels in [0, 1]", per_pair=True, log_scale=True, axis="budget_90: ‖d‖ (L2)"),
    "clean_left": Metric("clean_left", "fraction of the clean distance left", "distance / delta_clean",
                         axis="distance / delta_clean"),
}
HEALTHY = "healthy"
UNKNOWN_HEALTH = ("unknown", "no health recorded in train/ (results of an older version of the sweep: "
                             "re-train to measure it)")
# the columns that name one (trial, pair) unit of the attack aggregates
UNIT_COLUMNS = [*TRIAL_FIELDS, "mode", "similarity", "pair"]


def objective_unit(mode: str, similarity: str | None) -> str:
    """Unit of Δ under ``similarity`` (the mode's default when None), as its registration in
    ``results.vocabulary`` gives it; a plugin similarity this process did not import (its
    module registers the unit) is named as such rather than failing the report."""
    sim = similarity or DEFAULT_SIMILARITY.get(mode)
    try:
        return unit_of(sim)
    except KeyError:
        return f"unit of {sim} not registered here"


model_label = kinds.label         # a kind's display label (its name if this process does not know it)
model_sort_key = kinds.sort_key   # registry order, unknown kinds last


def ok_trials(train: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``train`` whose status is ``ok``."""
    if train.empty or "status" not in train.columns:
        return train.iloc[0:0] if not train.empty else train
    return train.loc[train["status"].astype(str) == "ok"]


def trial_health(train: pd.DataFrame) -> pd.DataFrame:
    """One row per trial of ``train``: its identity, ``health`` and ``health_reason``. A trial
    that did not finish (status failed or diverged) has its status as health and its reason; a
    finished trial without a recorded health is "unknown"."""
    cols = [*TRIAL_FIELDS, "health", "health_reason"]
    if train.empty or "trial_id" not in train.columns:
        return pd.DataFrame(columns=cols)
    out = train.copy()
    for col in cols:
        if col not in out.columns:
            out[col] = None
    status = out["status"].astype(str) if "status" in out.columns else pd.Series("ok", index=out.index)
    ok = status == "ok"
    recorded = out["health"].notna() & (out["health"].astype(str) != "")
    reason = out["reason"] if "reason" in out.columns else pd.Series("", index=out.index)
    out["health"] = np.where(~ok, status, np.where(recorded, out["health"].astype(str), UNKNOWN_HEALTH[0]))
    out["health_reason"] = np.where(~ok, reason.fillna("").astype(str),
                                    np.where(recorded, out["health_reason"].fillna("").astype(str),
                                             UNKNOWN_HEALTH[1]))
    return out[cols].drop_duplicates(subset=["trial_id"], keep="last").reset_index(drop=True)


def healthy_trial_ids(train: pd.DataFrame) -> set[str]:
    health = trial_health(train)
    return set(health.loc[health["health"] == HEALTHY, "trial_id"].astype(str))


def keep_healthy(frame: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``frame`` (train, attacks, noise or gallery rows) of healthy trials; a trial
    that ``train`` does not list is left out too, its health being unknown."""
    if frame.empty or "trial_id" not in frame.columns:
        return frame
    return frame.loc[frame["trial_id"].astype(str).isin(healthy_trial_ids(train))]


def left_out(train: pd.DataFrame, *others: pd.DataFrame) -> pd.DataFrame:
    """The trials that the aggregates leave out and why: every trial of ``train`` that is not
    healthy, and every trial that has rows in ``others`` (attacks, noise, ...) but none in
    ``train``. Columns as ``trial_health``."""
    health = trial_health(train)
    out = health.loc[health["health"] != HEALTHY]
    known = set(health["trial_id"].astype(str))
    extra = []
    for frame in others:
        if frame.empty or "trial_id" not in frame.columns:
            continue
        for _, row in frame.drop_duplicates(subset=["trial_id"]).iterrows():
            tid = str(row["trial_id"])
            if tid not in known:
                known.add(tid)
                extra.append({**{c: row.get(c) for c in health.columns},
                              "health": UNKNOWN_HEALTH[0], "health_reason": "the trial has no row in train/"})
    if extra:
        out = pd.concat([out, pd.DataFrame(extra, columns=health.columns)], ignore_index=True)
    return out.sort_values("trial_id").reset_index(drop=True)


def default_similarity(attacks: pd.DataFrame, mode: str) -> str | None:
    """The similarity shown for a mode: the paper's ``kl`` for latent attacks and ``elbo`` for
    output attacks when present, else the most common one."""
    if attacks.empty:
        return None
    sims = attacks.loc[attacks["mode"] == mode, "similarity"]
    if sims.empty:
        return None
    preferred = DEFAULT_SIMILARITY.get(mode)
    if (sims == preferred).any():
        return preferred
    return str(sims.value_counts().index[0])


def with_clean_left(attacks: pd.DataFrame) -> pd.DataFrame:
    """``attacks`` with a ``clean_left`` column: ``distance / delta_clean`` per row, NaN where
    either is missing (attack files written before ``delta_clean`` existed) or delta_clean ≤ 0."""
    out = attacks.copy()
    if attacks.empty or not {"distance", "delta_clean"} <= set(attacks.columns):
        out["clean_left"] = np.nan
        return out
    distance = pd.to_numeric(attacks["distance"], errors="coerce").astype(float)
    clean = pd.to_numeric(attacks["delta_clean"], errors="coerce").astype(float)
    out["clean_left"] = (distance / clean.where(clean > 0)).astype(float)
    return out


def attack_rows(
    attacks: pd.DataFrame,
    metric: str,
    mode: str,
    similarity: str | None = None,
    selected_only: bool = False,
) -> pd.DataFrame:
    """The rows that carry ``metric`` for one attack mode/similarity: all λ, only the selected λ,
    or (AUDDC) one row per (trial, pair)."""
    if attacks.empty:
        return attacks
    rows = attacks.loc[attacks["mode"] == mode]
    if similarity is not None:
        rows = rows.loc[rows["similarity"] == similarity]
    spec = METRICS.get(metric)
    if spec is not None and spec.per_pair:
        rows = rows.drop_duplicates(subset=["trial_id", "mode", "similarity", "pair"])
    elif selected_only:
        if "selected" not in rows.columns:
            return rows.iloc[0:0]
        rows = rows.loc[rows["selected"].fillna(False).astype(bool)]
    return rows


def pair_units(rows: pd.DataFrame, metric: str, selected_only: bool = False) -> pd.DataFrame:
    """One value of ``metric`` per (trial, pair) of ``rows`` (rows of one mode and similarity,
    as ``attack_rows`` gives them): the selected λ's value (``selected_only``), the pair's value
    (per-pair metrics such as AUDDC), or the mean over the pair's positive λ (the paper's Δ,
    1/50 Σ Δ(λ(c_i)); over all λ when a pair has no positive one). Columns: ``UNIT_COLUMNS``
    present in ``rows``, and ``metric``."""
    keys = [c for c in UNIT_COLUMNS if c in rows.columns]
    if rows.empty:
        return pd.DataFrame(columns=[*keys, metric])
    frame = rows[keys].copy()
    frame[metric] = pd.to_numeric(rows[metric], errors="coerce").astype(float)
    spec = METRICS.get(metric)
    if selected_only or (spec is not None and spec.per_pair):
        return frame.drop_duplicates(subset=keys).reset_index(drop=True)
    lam = pd.to_numeric(rows["lam"], errors="coerce").astype(float)
    positive = lam > 0
    has_positive = positive.groupby([rows[k] for k in keys], dropna=False).transform("any")
    frame = frame.loc[positive | ~has_positive]
    frame = frame.loc[np.isfinite(frame[metric])]
    return frame.groupby(keys, sort=True, dropna=False, observed=True)[metric].mean().reset_index()


def summarize_metric(units: pd.DataFrame, by: Sequence[str], metric: str) -> pd.DataFrame:
    """``summarize`` or, for a log-scale metric (Δ), ``summarize_log`` of ``units``."""
    spec = METRICS.get(metric)
    if spec is not None and spec.log_scale:
        return summarize_log(units, by, metric)
    return summarize(units, by, metric)


def elbo_by_beta(train: pd.DataFrame, value: str = TRAIN_ELBO) -> pd.DataFrame:
    """Fig. 3: mean ELBO per (dataset, model, β) over |z|, L and seeds, with its t-interval."""
    return summarize(ok_trials(train), ["dataset", "model", "beta"], value)


def attack_by_beta(
    attacks: pd.DataFrame,
    metric: str,
    mode: str,
    similarity: str | None = None,
    selected_only: bool = False,
    models: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Fig. 5: ``metric`` per (dataset, model, β) over (trial, pair) units (pairs, |z|, seeds
    and L): geometric mean for Δ, mean otherwise, with the interval ``summarize_metric`` gives."""
    rows = attack_rows(attacks, metric, mode, similarity, selected_only)
    if models is not None and not rows.empty:
        rows = rows.loc[rows["model"].isin(list(models))]
    return summarize_metric(pair_units(rows, metric, selected_only), ["dataset", "model", "beta"], metric)


def attack_heatmap(
    attacks: pd.DataFrame,
    metric: str,
    mode: str,
    model: str,
    similarity: str | None = None,
    selected_only: bool = False,
    l1_model: str | None = None,
) -> pd.DataFrame:
    """Fig. 6: ``metric`` per (dataset, L, β) for one model kind over (trial, pair) units (pairs,
    |z|, seeds). ``l1_model``: also use that model's L = 1 rows as this model's L = 1 row (the
    paper fills Seatbelt-VAE's L = 1 row with β-TCVAE, which is what Seatbelt-VAE reduces to)."""
    rows = attack_rows(attacks, metric, mode, similarity, selected_only)
    by = ["dataset", "layers", "beta"]
    if rows.empty:
        return summarize_metric(pair_units(rows, metric, selected_only), by, metric)
    mine = rows.loc[rows["model"] == model]
    if l1_model is not None:
        extra = rows.loc[(rows["model"] == l1_model) & (rows["layers"] == 1)]
        if not mine.empty or not extra.empty:
            mine = pd.concat([mine, extra], ignore_index=True)
    return summarize_metric(pair_units(mine, metric, selected_only), by, metric)


# ---------------------------------------------------------------------------------------------
# Table 1: weight norms


def weight_norm_table(train: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Table 1: relative change of the encoder and decoder L2 weight norms from the smallest to
    the largest β, per (dataset, model, L), pooled over |z| and seeds. CI: percentile bootstrap
    over trials of mean(norm at β_max) / mean(norm at β_min) − 1."""
    cols = ["dataset", "model", "layers", "beta_min", "beta_max", "part", "norm_min", "norm_max",
            "change", "change_lo", "change_hi", "n_min", "n_max"]
    ok = ok_trials(train)
    if ok.empty or not {"encoder_l2", "decoder_l2"} & set(ok.columns):
        return pd.DataFrame(columns=cols)
    out = []
    for (dataset, model, layers), grp in ok.groupby(["dataset", "model", "layers"], sort=True):
        betas = grp["beta"].dropna()
        if betas.nunique() < 2:
            continue
        bmin, bmax = float(betas.min()), float(betas.max())
        for part in ("encoder_l2", "decoder_l2"):
            if part not in grp.columns:
                continue
            lo_vals = pd.to_numeric(grp.loc[grp["beta"] == bmin, part], errors="coerce").dropna()
            hi_vals = pd.to_numeric(grp.loc[grp["beta"] == bmax, part], errors="coerce").dropna()
            if lo_vals.empty or hi_vals.empty:
                continue
            iv = bootstrap_ratio(hi_vals.to_numpy(), lo_vals.to_numpy(), paired=False, seed=seed)
            out.append({
                "dataset": dataset, "model": model, "layers": int(layers), "beta_min": bmin,
                "beta_max": bmax, "part": "encoder" if part == "encoder_l2" else "decoder",
                "norm_min": float(lo_vals.mean()), "norm_max": float(hi_vals.mean()),
                "change": iv.estimate - 1, "change_lo": iv.lo - 1, "change_hi": iv.hi - 1,
                "n_min": int(lo_vals.size), "n_max": int(hi_vals.size),
            })
    if not out:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(out, columns=cols)
    df["_m"] = df["model"].map(lambda m: model_sort_key(m)[0])
    return df.sort_values(["part", "dataset", "_m", "layers"], ascending=[False, True, True, True]) \
        .drop(columns="_m").reset_index(drop=True)


def noise_sigma(noise: pd.DataFrame, preferred: float = 1.0) -> float | None:
    """The noise level shown in Fig. 7: σ = 1 (the paper's) if present, else the largest."""
    if noise.empty or "sigma" not in noise.columns:
        return None
    sigmas = pd.to_numeric(noise["sigma"], errors="coerce").dropna().unique()
    if sigmas.size == 0:
        return None
    close = sigmas[np.isclose(sigmas, preferred)]
    return float(close[0]) if close.size else float(np.max(sigmas))
