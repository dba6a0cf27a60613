"""The paper's aggregations of the sweep's results.

Sources of variation (the paper's CIs): input–target pairs, λ, |z|, seeds, and L where a figure
pools over it. The unit of a CI is one row of the results:

* train metrics (ELBO, weight norms): one trial; pooled over |z|, seeds and L (Fig. 3);
* attack metrics, **"all λ" (the paper's Δ)**: one attack, i.e. one (trial, pair, λ); the mean
  over pairs and λ (and |z|, seeds), as in Fig. 5 and 6;
* attack metrics, **"selected λ"**: the attack at the λ the attack step's rule picked for each
  pair (the ``selected`` column), i.e. one (trial, pair);
* AUDDC is per pair (the same on every λ row of a pair): one value per (trial, pair).

The λ-selection rule and AUDDC are computed by the attack step; they are read, never recomputed.
Only trials with ``status == "ok"`` enter the aggregates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.stats import Interval, bootstrap_ratio, summarize

__all__ = [
    "MODEL_ORDER",
    "MODEL_LABELS",
    "METRICS",
    "ok_trials",
    "drop_failed_trials",
    "default_similarity",
    "attack_rows",
    "elbo_by_beta",
    "attack_by_beta",
    "attack_heatmap",
    "pair_means",
    "weight_norm_table",
    "headline_ratios",
    "noise_sigma",
]

MODEL_ORDER = ["vae", "tcvae", "tcdlgm", "seatbelt"]
MODEL_LABELS = {"vae": "VAE", "tcvae": "β-TCVAE", "tcdlgm": "β-TCDLGM", "seatbelt": "Seatbelt-VAE"}


@dataclass(frozen=True)
class Metric:
    column: str
    label: str
    unit: str
    per_pair: bool = False  # one value per (trial, pair) rather than per λ


METRICS = {
    "objective": Metric("objective", "Δ (final attack objective)", "nats"),
    "adv_target_l2": Metric("adv_target_l2", "‖rec(x*) − xᵗ‖₂", "L2, pixels in [0, 1]"),
    "target_nll": Metric("target_nll", "−log p(xᵗ | z*)", "nats"),
    "auddc": Metric("auddc", "AUDDC", "unitless, higher = harder to attack", per_pair=True),
}


def objective_unit(mode: str, similarity: str | None) -> str:
    """Unit of Δ: nats for KL / ELBO objectives, latent units for L2 / W2 ones."""
    if mode == "latent" and similarity in ("l2_mean", "l2_sample", "w2"):
        return "latent-space L2 units"
    return "nats"


def model_label(model: str) -> str:
    return MODEL_LABELS.get(model, str(model))


def model_sort_key(model: str) -> tuple[int, str]:
    return (MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER), str(model))


def ok_trials(train: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``train`` whose status is ``ok``."""
    if train.empty or "status" not in train.columns:
        return train.iloc[0:0] if not train.empty else train
    return train.loc[train["status"].astype(str) == "ok"]


def drop_failed_trials(attacks: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
    """Attack rows of trials that train/ lists with a status other than ``ok`` are dropped
    (trials absent from train/ are kept: train/ may be lagging behind)."""
    if attacks.empty or train.empty or "status" not in train.columns:
        return attacks
    bad = set(train.loc[train["status"].astype(str) != "ok", "trial_id"].astype(str))
    if not bad:
        return attacks
    return attacks.loc[~attacks["trial_id"].astype(str).isin(bad)]


def default_similarity(attacks: pd.DataFrame, mode: str) -> str | None:
    """The similarity shown for a mode: the paper's ``kl`` for latent attacks and ``elbo`` for
    output attacks when present, else the most common one."""
    if attacks.empty:
        return None
    sims = attacks.loc[attacks["mode"] == mode, "similarity"]
    if sims.empty:
        return None
    preferred = "kl" if mode == "latent" else "elbo"
    if (sims == preferred).any():
        return preferred
    return str(sims.value_counts().index[0])


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


def elbo_by_beta(train: pd.DataFrame, value: str = "elbo") -> pd.DataFrame:
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
    """Fig. 5: mean of ``metric`` per (dataset, model, β) over pairs, λ (all or selected), |z|,
    seeds (and L), with its t-interval."""
    rows = attack_rows(attacks, metric, mode, similarity, selected_only)
    if models is not None and not rows.empty:
        rows = rows.loc[rows["model"].isin(list(models))]
    return summarize(rows, ["dataset", "model", "beta"], metric)


def attack_heatmap(
    attacks: pd.DataFrame,
    metric: str,
    mode: str,
    model: str,
    similarity: str | None = None,
    selected_only: bool = False,
    l1_model: str | None = None,
) -> pd.DataFrame:
    """Fig. 6: mean of ``metric`` per (dataset, L, β) for one model kind, over pairs, λ, |z|,
    seeds. ``l1_model``: also use that model's L = 1 rows as this model's L = 1 row (the paper
    fills Seatbelt-VAE's L = 1 row with β-TCVAE, which is what Seatbelt-VAE reduces to)."""
    rows = attack_rows(attacks, metric, mode, similarity, selected_only)
    if rows.empty:
        return summarize(rows, ["dataset", "layers", "beta"], metric)
    mine = rows.loc[rows["model"] == model]
    if l1_model is not None:
        extra = rows.loc[(rows["model"] == l1_model) & (rows["layers"] == 1)]
        if not mine.empty or not extra.empty:
            mine = pd.concat([mine, extra], ignore_index=True)
    return summarize(mine, ["dataset", "layers", "beta"], metric)


def pair_means(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Mean of ``metric`` per input–target pair (over λ, |z|, seeds, trials), indexed by pair."""
    if rows.empty:
        return pd.Series(dtype=float)
    vals = pd.to_numeric(rows[metric], errors="coerce").astype(float)
    frame = pd.DataFrame({"pair": rows["pair"].to_numpy(), "v": vals.to_numpy()})
    frame = frame.loc[np.isfinite(frame["v"])]
    return frame.groupby("pair", sort=True)["v"].mean()


def _ratio_of_pair_means(num: pd.Series, den: pd.Series, seed: int = 0) -> Interval:
    common = num.index.intersection(den.index)
    if len(common) >= 2 and len(common) == len(num) == len(den):
        return bootstrap_ratio(num.loc[common].to_numpy(), den.loc[common].to_numpy(), paired=True, seed=seed)
    return bootstrap_ratio(num.to_numpy(), den.to_numpy(), paired=False, seed=seed)


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


# ---------------------------------------------------------------------------------------------
# Headline ratios


@dataclass(frozen=True)
class Selector:
    """Which attack rows form one side of a ratio: a model kind at β/L = a value, 'min' or 'max'."""

    model: str
    beta: float | str = "max"
    layers: int | str | None = None  # None: any L

    def pick(self, rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
        sel = rows.loc[rows["model"] == self.model]
        text = model_label(self.model)
        if sel.empty:
            return sel, text
        if self.layers is not None:
            L = self.layers
            if isinstance(L, str):
                L = int(sel["layers"].max() if L == "max" else sel["layers"].min())
            sel = sel.loc[sel["layers"] == L]
            if self.model in ("tcdlgm", "seatbelt"):
                text += f" L={L}"
        if sel.empty:
            return sel, text
        b = self.beta
        if isinstance(b, str):
            b = float(sel["beta"].max() if b == "max" else sel["beta"].min())
        sel = sel.loc[np.isclose(sel["beta"].astype(float), float(b))]
        return sel, f"{text} β={b:g}"


@dataclass(frozen=True)
class Claim:
    claim: str
    mode: str
    numerator: Selector
    denominator: Selector | tuple[Selector, ...]  # alternatives, first with data wins
    paper: str
    expect: str  # ">1": robustness grows; "<=1": does not grow


CLAIMS = [
    Claim("latent Δ: β-TCVAE (largest β) over VAE", "latent", Selector("tcvae", "max"),
          (Selector("vae", "min"), Selector("tcvae", "min")), "≈10³ (Chairs), >10 (3D Faces)", ">1"),
    Claim("output Δ: β-TCVAE (largest β) over VAE", "output", Selector("tcvae", "max"),
          (Selector("vae", "min"), Selector("tcvae", "min")), "≈1.2", ">1"),
    Claim("latent Δ: Seatbelt-VAE (largest β, L) over β-TCVAE (largest β)", "latent",
          Selector("seatbelt", "max", "max"), Selector("tcvae", "max"), ">1 (more robust still)", ">1"),
    Claim("output Δ: Seatbelt-VAE (largest β, L) over β-TCVAE (largest β)", "output",
          Selector("seatbelt", "max", "max"), Selector("tcvae", "max"), ">1 (smaller margin)", ">1"),
    Claim("latent Δ: Seatbelt-VAE (largest β, L) over (smallest β, L=1)", "latent",
          Selector("seatbelt", "max", "max"),
          (Selector("tcvae", "min"), Selector("vae", "min"), Selector("seatbelt", "min", "min")),
          "≈10⁷ (β=1, L=1 → β=10, L=5)", ">1"),
    Claim("latent Δ: β-TCDLGM (largest β, L) over (smallest β, L)", "latent",
          Selector("tcdlgm", "max", "max"), Selector("tcdlgm", "min", "min"),
          "≈1: not more robust with β or L", "<=1"),
]


NO_GROWTH_MARGIN = 1.5


def _verdict(iv: Interval, expect: str) -> str:
    if not np.isfinite(iv.estimate):
        return "not measured"
    if expect == ">1":
        if np.isfinite(iv.lo) and iv.lo > 1:
            return "holds (CI above 1)"
        if iv.estimate > 1:
            return "holds in direction (CI includes 1)"
        return "does not hold"
    # expect "<= 1": the claim is that robustness does NOT grow ("≈1"); growth counts only when
    # the whole CI lies above NO_GROWTH_MARGIN (a few per cent more is "≈1" next to ×10³..10⁷)
    if np.isfinite(iv.lo) and iv.lo > NO_GROWTH_MARGIN:
        return f"does not hold (grows, CI above ×{NO_GROWTH_MARGIN:g})"
    return f"holds (no growth beyond ×{NO_GROWTH_MARGIN:g})"


def headline_ratios(
    attacks: pd.DataFrame,
    similarity: dict[str, str | None] | None = None,
    variants: Sequence[str] = ("all λ", "selected λ"),
    seed: int = 0,
) -> pd.DataFrame:
    """The paper's headline ratios on this sweep's data, per dataset and λ variant.

    Ratio of means of the attack objective Δ; CI: percentile bootstrap over input–target pairs
    (paired when both sides have the same pairs) of the ratio of the pair means. ``verdict`` says
    whether the claim's direction holds here."""
    cols = ["dataset", "claim", "variant", "numerator", "denominator", "ratio", "lo", "hi",
            "pairs", "paper", "verdict"]
    if attacks.empty:
        return pd.DataFrame(columns=cols)
    similarity = similarity or {}
    out = []
    for dataset in sorted(attacks["dataset"].dropna().unique()):
        ds_rows = attacks.loc[attacks["dataset"] == dataset]
        for claim in CLAIMS:
            sim = similarity.get(claim.mode, default_similarity(ds_rows, claim.mode))
            for variant in variants:
                rows = attack_rows(ds_rows, "objective", claim.mode, sim, selected_only=variant == "selected λ")
                num_rows, num_text = claim.numerator.pick(rows)
                dens = claim.denominator if isinstance(claim.denominator, tuple) else (claim.denominator,)
                den_rows, den_text = dens[0].pick(rows)
                for alt in dens[1:]:
                    if not den_rows.empty:
                        break
                    den_rows, den_text = alt.pick(rows)
                if num_rows.empty or den_rows.empty:
                    missing = num_text if num_rows.empty else den_text
                    iv = Interval(float("nan"), float("nan"), float("nan"), 0)
                    verdict = f"not measured: no {claim.mode} attacks of {missing.split(' β=')[0]}"
                elif num_rows.index.equals(den_rows.index):
                    iv = Interval(float("nan"), float("nan"), float("nan"), 0)
                    verdict = "not measured: only one setting present"
                else:
                    iv = _ratio_of_pair_means(pair_means(num_rows, "objective"),
                                              pair_means(den_rows, "objective"), seed=seed)
                    verdict = _verdict(iv, claim.expect)
                out.append({
                    "dataset": dataset, "claim": claim.claim, "variant": variant,
                    "numerator": num_text, "denominator": den_text, "ratio": iv.estimate,
                    "lo": iv.lo, "hi": iv.hi, "pairs": iv.n, "paper": claim.paper, "verdict": verdict,
                })
    return pd.DataFrame(out, columns=cols)


def noise_sigma(noise: pd.DataFrame, preferred: float = 1.0) -> float | None:
    """The noise level shown in Fig. 7: σ = 1 (the paper's) if present, else the largest."""
    if noise.empty or "sigma" not in noise.columns:
        return None
    sigmas = pd.to_numeric(noise["sigma"], errors="coerce").dropna().unique()
    if sigmas.size == 0:
        return None
    close = sigmas[np.isclose(sigmas, preferred)]
    return float(close[0]) if close.size else float(np.max(sigmas))
