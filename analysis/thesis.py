"""The paper's thesis on the data: does disentangling go with robustness?

The paper's title says disentangling improves robustness, but its experiments vary β and read
robustness off it; β also changes the reconstructions, the KL and the weights. This tests the
link itself: across the grid's healthy trials, the rank correlation (Spearman's ρ) between a
trial's latent-attack robustness, log Δ_latent (the geometric mean over its input–target pairs
of each pair's mean Δ over the positive λ), and its disentanglement, MIG, or its total
correlation TC (lower TC = more factorised). Pooled over the grid, ρ mixes the link with β's
effect on both; within one β the link is read with β fixed.

Interval: Fisher's z with the Bonett–Wright standard error for Spearman's ρ,
sqrt((1 + ρ²/2) / (n − 3)), 95%; it needs n >= 4 trials.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as _st

from analysis import aggregate as agg
from results.vocabulary import LATENT

__all__ = ["SCORES", "trial_robustness", "rank_correlations", "spearman_interval", "findings"]

SCORES = {"mig": "MIG", "tc": "total correlation"}


def trial_robustness(attacks: pd.DataFrame, similarity: str | None) -> pd.DataFrame:
    """One row per trial: ``log_delta``, the natural log of the geometric mean over its pairs
    of the pair's mean latent Δ over the positive λ."""
    rows = agg.attack_rows(attacks, "objective", LATENT, similarity)
    units = agg.pair_units(rows, "objective")
    units = units.loc[units["objective"] > 0]
    if units.empty:
        return pd.DataFrame(columns=["trial_id", "log_delta"])
    units = units.assign(log_delta=np.log(units["objective"]))
    return units.groupby("trial_id", as_index=False)["log_delta"].mean()


def spearman_interval(x, y, confidence: float = 0.95) -> tuple[float, float, float, int]:
    """(ρ, lo, hi, n) of Spearman's rank correlation of the finite pairs of ``x`` and ``y``."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan"), float("nan"), n
    rho = float(_st.spearmanr(x, y).statistic)
    if n < 4 or abs(rho) >= 1:
        return rho, float("nan"), float("nan"), n
    se = math.sqrt((1 + rho ** 2 / 2) / (n - 3))
    z, q = math.atanh(rho), float(_st.norm.ppf(0.5 + confidence / 2))
    return rho, math.tanh(z - q * se), math.tanh(z + q * se), n


def rank_correlations(attacks: pd.DataFrame, train: pd.DataFrame, similarity: str | None) -> pd.DataFrame:
    """ρ of log Δ_latent with each score, per dataset: pooled over the grid and within each β.
    ``attacks`` and ``train`` hold the healthy trials only."""
    cols = ["dataset", "score", "beta", "rho", "lo", "hi", "trials"]
    robust = trial_robustness(attacks, similarity)
    if robust.empty or train.empty:
        return pd.DataFrame(columns=cols)
    frame = agg.ok_trials(train).merge(robust, on="trial_id")
    out = []
    for dataset, data in frame.groupby("dataset", sort=True):
        for score in SCORES:
            if score not in data.columns:
                continue
            values = pd.to_numeric(data[score], errors="coerce")
            groups = [("pooled", data.index)] + [(f"{b:g}", g.index) for b, g in data.groupby("beta", sort=True)]
            for beta, index in groups:
                rho, lo, hi, n = spearman_interval(data.loc[index, "log_delta"], values.loc[index])
                out.append({"dataset": dataset, "score": score, "beta": beta, "rho": rho, "lo": lo, "hi": hi,
                            "trials": n})
    return pd.DataFrame(out, columns=cols)


def findings(table: pd.DataFrame) -> list[str]:
    """What the correlations say, one sentence per dataset and score, in words the intervals
    support: a link "goes with" more robustness only when the interval excludes 0."""
    sentences = []
    for (dataset, score), rows in table.groupby(["dataset", "score"], sort=True):
        pooled = rows.loc[rows["beta"] == "pooled"].iloc[0]
        within = rows.loc[rows["beta"] != "pooled"]
        measured = within.loc[np.isfinite(within["lo"])]
        name = SCORES[score]
        better = "higher" if score == "mig" else "lower"
        direction = {1: "rises", -1: "falls"}
        if not np.isfinite(pooled["lo"]):
            sentences.append(f"{dataset}: too few healthy trials to correlate log Δ_latent with {name}.")
            continue
        if pooled["lo"] > 0 or pooled["hi"] < 0:
            sign = 1 if pooled["lo"] > 0 else -1
            text = (f"{dataset}: pooled over the grid, log Δ_latent {direction[sign]} with {name} "
                    f"(ρ = {pooled['rho']:.2f} [{pooled['lo']:.2f}, {pooled['hi']:.2f}], {int(pooled['trials'])} trials)")
        else:
            text = (f"{dataset}: pooled over the grid, no rank correlation of log Δ_latent with {name} is "
                    f"measured (ρ = {pooled['rho']:.2f} [{pooled['lo']:.2f}, {pooled['hi']:.2f}])")
        signs = [("+" if r.lo > 0 else "−" if r.hi < 0 else "0") for r in measured.itertuples()]
        if measured.empty:
            text += "; within a β there are too few trials for an interval."
        elif all(s == "0" for s in signs):
            text += (f"; within each β ({', '.join(measured['beta'])}) the interval includes 0: with β fixed these "
                     f"trials detect no link between {name} and robustness (absence of evidence, not evidence of "
                     f"absence: see the intervals' width).")
        else:
            parts = [f"β={r.beta}: ρ = {r.rho:.2f} [{r.lo:.2f}, {r.hi:.2f}]" for r in measured.itertuples()]
            text += f"; within β: {'; '.join(parts)} ({better} {name} = more disentangled)."
        sentences.append(text)
    return sentences
