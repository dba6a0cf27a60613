"""The paper's claims, tested on a sweep's healthy trials with the right unit of replication.

Each claim is a contrast between settings (a model kind at a β and L): the attack objective Δ
of Figs. 5 and 6, the weight norms of Table 1, or the noise robustness of Fig. 7. The values are

* Δ: the log of each (trial, input–target pair) value, the pair's mean Δ over the positive λ
  ("all λ", the paper's Δ) or its Δ at the selected λ; a ratio of geometric means;
* budget_50 (latent claims, a second measure beside the paper's Δ): the log of each (trial,
  pair) value of the smallest distortion that removes half the clean latent distance; a ratio
  of geometric means. Δ also grows with how far apart the clean codes of source and target
  start; budget_50 does not, so the two can disagree (``compare_measures``);
* weight norms: the log of each trial's norm; a ratio of geometric means;
* noise: each (trial, image) log p(x|z), z ~ q(z | x + ε) at σ = 1; a difference of means.

Trials are the replication unit of a model-level statement (seeds, and |z| where a setting pools
it), pairs and images the units within a model, shared by every model of a dataset. The interval
is ``stats.contrast_interval``'s: both random, 95%, Welch–Satterthwaite t. With one trial per
setting the seed-to-seed variation cannot be measured and the verdict says so. Unhealthy trials
never enter a contrast; a side left with none is "not measured", naming them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import aggregate as agg
from analysis.stats import ContrastGroup, contrast_interval
from results import kinds
from results.vocabulary import LATENT, OUTPUT

__all__ = ["CLAIMS", "Claim", "Term", "Selector", "NO_GROWTH_MARGIN", "MEASURES", "claims_table", "verdict",
           "compare_measures", "measure_findings"]

NO_GROWTH_MARGIN = 1.5   # "≈1": a few per cent more is no growth next to ×10³..10⁷
NOISE_SIGMA = 1.0
# the attack columns a Δ claim is tested on, and their name in the table's measure column; the
# second is tested on the latent claims only (it is NaN for the output attack)
MEASURES = {"objective": "Δ", "budget_50": "budget_50"}


@dataclass(frozen=True)
class Selector:
    """Which trials form one setting: a model kind at β/L = a value, 'min' or 'max' (L first)."""

    model: str
    beta: float | str = "max"
    layers: int | str | None = None  # None: any L

    def pick(self, rows: pd.DataFrame) -> tuple[pd.DataFrame, str]:
        sel = rows.loc[rows["model"] == self.model] if not rows.empty else rows
        text = agg.model_label(self.model)
        if sel.empty:
            return sel, text
        if self.layers is not None:
            L = self.layers
            if isinstance(L, str):
                L = int(sel["layers"].max() if L == "max" else sel["layers"].min())
            sel = sel.loc[sel["layers"] == L]
            if kinds.varies_in_layers(self.model):
                text += f" L={L}"
        if sel.empty:
            return sel, text
        b = self.beta
        if isinstance(b, str):
            b = float(sel["beta"].max() if b == "max" else sel["beta"].min())
        sel = sel.loc[np.isclose(sel["beta"].astype(float), float(b))]
        return sel, f"{text} β={b:g}"


@dataclass(frozen=True)
class Term:
    """coef × the mean of a setting's values; ``selectors``: alternatives, the first with data wins."""

    selectors: tuple[Selector, ...]
    coef: float
    mode: str = LATENT     # Δ claims: the attack mode of this term


@dataclass(frozen=True)
class Claim:
    claim: str
    quantity: str          # "delta" | "encoder_l2" | "decoder_l2" | "noise"
    terms: tuple[Term, ...]
    expect: str            # ">1" | "<1" | "<=margin" (ratios), ">0" | "<0" (differences)
    paper: str

    @property
    def ratio(self) -> bool:
        return self.quantity != "noise"

    @property
    def latent_only(self) -> bool:
        return self.quantity == "delta" and all(term.mode == LATENT for term in self.terms)


def _t(model, beta="max", layers=None, coef=1.0, mode=LATENT, *alternatives) -> Term:
    return Term((Selector(model, beta, layers), *alternatives), coef, mode)


_VAE_OR_SMALLEST_TCVAE = (Selector("vae", "min"), Selector("tcvae", "min"))
CLAIMS = [
    Claim("latent Δ: β-TCVAE (largest β) over VAE", "delta",
          (_t("tcvae"), Term(_VAE_OR_SMALLEST_TCVAE, -1.0)), ">1", "≈10³ (Chairs), >10 (3D Faces)"),
    Claim("latent Δ: β-TCVAE grows with β (largest over smallest β)", "delta",
          (_t("tcvae"), _t("tcvae", "min", coef=-1.0)), ">1", "grows with β (Fig. 5)"),
    Claim("output Δ: β-TCVAE (largest β) over VAE", "delta",
          (_t("tcvae", mode=OUTPUT), Term(_VAE_OR_SMALLEST_TCVAE, -1.0, OUTPUT)), ">1", "≈1.2"),
    Claim("output Δ grows by a smaller factor than latent Δ (β-TCVAE largest β over VAE; output ratio / "
          "latent ratio)", "delta",
          (_t("tcvae", mode=OUTPUT), Term(_VAE_OR_SMALLEST_TCVAE, -1.0, OUTPUT),
           _t("tcvae", coef=-1.0), Term(_VAE_OR_SMALLEST_TCVAE, 1.0)), "<1", "≈1.2 against ≈10³"),
    Claim("latent Δ: Seatbelt-VAE (largest β, L) over β-TCVAE (largest β)", "delta",
          (_t("seatbelt", "max", "max"), _t("tcvae", coef=-1.0)), ">1", ">1 (more robust still)"),
    Claim("output Δ: Seatbelt-VAE (largest β, L) over β-TCVAE (largest β)", "delta",
          (_t("seatbelt", "max", "max", mode=OUTPUT), _t("tcvae", coef=-1.0, mode=OUTPUT)), ">1",
          ">1 (smaller margin)"),
    Claim("latent Δ: Seatbelt-VAE grows with β (largest L)", "delta",
          (_t("seatbelt", "max", "max"), _t("seatbelt", "min", "max", coef=-1.0)), ">1", "grows with β (Fig. 6)"),
    Claim("latent Δ: Seatbelt-VAE grows with L (largest β)", "delta",
          (_t("seatbelt", "max", "max"), _t("seatbelt", "max", "min", coef=-1.0)), ">1", "grows with L (Fig. 6)"),
    Claim("latent Δ: Seatbelt-VAE (largest β, L) over (smallest β, L=1)", "delta",
          (_t("seatbelt", "max", "max"),
           Term((Selector("tcvae", "min"), Selector("vae", "min"), Selector("seatbelt", "min", "min")), -1.0)),
          ">1", "≈10⁷ (β=1, L=1 → β=10, L=5)"),
    Claim("latent Δ: β-TCDLGM not more robust with β (largest L)", "delta",
          (_t("tcdlgm", "max", "max"), _t("tcdlgm", "min", "max", coef=-1.0)), "<=margin",
          "≈1: not more robust with β"),
    Claim("latent Δ: β-TCDLGM not more robust with L (largest β)", "delta",
          (_t("tcdlgm", "max", "max"), _t("tcdlgm", "max", "min", coef=-1.0)), "<=margin",
          "≈1: not more robust with L"),
    Claim("encoder L2 grows with β: β-TCVAE", "encoder_l2",
          (_t("tcvae"), _t("tcvae", "min", coef=-1.0)), ">1", "+5% to +74% (β 1 → 10)"),
    Claim("decoder L2 shrinks with β: β-TCVAE", "decoder_l2",
          (_t("tcvae"), _t("tcvae", "min", coef=-1.0)), "<1", "−7% to −19%"),
    Claim("encoder L2 grows with β: Seatbelt-VAE (largest L)", "encoder_l2",
          (_t("seatbelt", "max", "max"), _t("seatbelt", "min", "max", coef=-1.0)), ">1", "+1% to +40%"),
    Claim("decoder L2 shrinks with β: Seatbelt-VAE (largest L)", "decoder_l2",
          (_t("seatbelt", "max", "max"), _t("seatbelt", "min", "max", coef=-1.0)), "<1", "−6% to −11%"),
    Claim("noise: β-TCVAE more robust with β (log p(x|z) under ε, largest − smallest β)", "noise",
          (_t("tcvae"), _t("tcvae", "min", coef=-1.0)), ">0", "more robust with β (Fig. 7)"),
    Claim("noise: Seatbelt-VAE (largest L) more robust with β", "noise",
          (_t("seatbelt", "max", "max"), _t("seatbelt", "min", "max", coef=-1.0)), ">0", "more robust with β"),
    Claim("noise: β-TCDLGM (largest L) less robust with β", "noise",
          (_t("tcdlgm", "max", "max"), _t("tcdlgm", "min", "max", coef=-1.0)), "<0", "gets worse with β"),
]


def verdict(lo: float, hi: float, expect: str) -> str:
    """Words that say no more than the interval [lo, hi]: "holds" / "does not hold" only when
    it lies wholly on one side of the claim's boundary, "inconclusive" when it straddles it."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "inconclusive (no interval)"
    if expect == "<=margin":
        if hi <= NO_GROWTH_MARGIN:
            return f"holds (CI below ×{NO_GROWTH_MARGIN:g})"
        if lo > NO_GROWTH_MARGIN:
            return f"does not hold (grows: CI above ×{NO_GROWTH_MARGIN:g})"
        return f"inconclusive (CI includes ×{NO_GROWTH_MARGIN:g})"
    bound = 1.0 if expect in (">1", "<1") else 0.0
    above = expect.startswith(">")
    if lo > bound:
        return f"{'holds' if above else 'does not hold'} (CI above {bound:g})"
    if hi < bound:
        return f"{'does not hold' if above else 'holds'} (CI below {bound:g})"
    return f"inconclusive (CI includes {bound:g})"


# --------------------------------------------------------------------------------------------


def claims_table(
    attacks: pd.DataFrame,
    train: pd.DataFrame,
    noise: pd.DataFrame | None = None,
    similarity: dict[str, str | None] | None = None,
    variants: Sequence[str] = ("all λ", "selected λ"),
    claims: Sequence[Claim] = CLAIMS,
    measures: Sequence[str] = tuple(MEASURES),
) -> pd.DataFrame:
    """Every claim on every dataset (Δ claims in each λ variant; latent Δ claims also on
    budget_50, one "per pair" row after the Δ rows). ``attacks``, ``train`` and ``noise`` hold
    every trial's rows; only healthy trials are measured (``train``'s health).

    Columns: dataset, claim, variant, measure ("Δ", "budget_50"; "—" for the other claims),
    numerator, denominator, estimate (a ratio, or a difference for noise), lo, hi (95%), trials
    (per side), units (pairs or images), paper, verdict, left_out (unhealthy trials a side would
    have included)."""
    cols = ["dataset", "claim", "variant", "measure", "numerator", "denominator", "estimate", "lo", "hi",
            "trials", "units", "paper", "verdict", "left_out"]
    similarity = similarity or {}
    noise = noise if noise is not None else pd.DataFrame()
    datasets = sorted({*_datasets(attacks), *_datasets(train)})
    healthy = agg.healthy_trial_ids(train)
    health = agg.trial_health(train)
    out = []
    for dataset in datasets:
        sources = {
            "delta": _of(attacks, dataset),
            "encoder_l2": agg.ok_trials(_of(train, dataset)),
            "decoder_l2": agg.ok_trials(_of(train, dataset)),
            "noise": _of(noise, dataset),
        }
        if not sources["noise"].empty:
            sources["noise"] = sources["noise"].loc[np.isclose(sources["noise"]["sigma"].astype(float), NOISE_SIGMA)]
        for claim in claims:
            rows = sources[claim.quantity]
            for variant, column in _rows_of(claim, variants, measures):
                out.append({"dataset": dataset, "claim": claim.claim, "variant": variant, "paper": claim.paper,
                            "measure": MEASURES.get(column, "—"),
                            **_measure(claim, rows, variant, similarity, healthy, health, column)})
    return pd.DataFrame(out, columns=cols)


def _rows_of(claim: Claim, variants: Sequence[str], measures: Sequence[str]) -> list[tuple[str, str]]:
    """(variant, value column) of each row a claim gets in the table."""
    if claim.quantity != "delta":
        return [("—", _VALUE_COLUMN.get(claim.quantity, claim.quantity))]
    rows = [(variant, "objective") for variant in variants] if "objective" in measures else []
    if claim.latent_only:
        rows += [("per pair", m) for m in measures if m != "objective"]
    return rows


_CLASSES = ("holds", "does not hold", "inconclusive")


def compare_measures(table: pd.DataFrame, variant: str = "all λ") -> pd.DataFrame:
    """Per (dataset, latent claim) tested on both measures: the paper's Δ (``variant``) and
    budget_50, each verdict's class (holds, does not hold, inconclusive) and whether they
    agree. A claim that either measure could not test ("not measured") is left out."""
    cols = ["dataset", "claim", "delta", "budget_50", "delta_verdict", "budget_50_verdict", "agree"]
    if table.empty or "measure" not in table.columns:
        return pd.DataFrame(columns=cols)
    delta = table.loc[(table["measure"] == "Δ") & (table["variant"] == variant)]
    budget = table.loc[table["measure"] == "budget_50"]
    both = delta.merge(budget, on=["dataset", "claim"], suffixes=("", "_b"))
    out = []
    for r in both.itertuples():
        a, b = _verdict_class(r.verdict), _verdict_class(r.verdict_b)
        if a is None or b is None:
            continue
        out.append({"dataset": r.dataset, "claim": r.claim, "delta": a, "budget_50": b, "delta_verdict": r.verdict,
                    "budget_50_verdict": r.verdict_b, "agree": a == b})
    return pd.DataFrame(out, columns=cols)


def measure_findings(claims: pd.DataFrame) -> list[str]:
    """Sentences that say, per latent claim, where the paper's Δ ("all λ") and budget_50 reach
    different verdicts (one holds, the other does not or is inconclusive)."""
    budget = claims.loc[claims["measure"] == "budget_50"] if "measure" in claims.columns else claims.iloc[0:0]
    if budget.empty:
        return []
    if budget["verdict"].astype(str).str.contains("before the column existed").all():
        return ["The latent claims are tested on the paper's Δ only: these attack files have no budget_50 (they "
                "were written before the column existed; re-run the attack step to add it)."]
    table = compare_measures(claims)
    if table.empty:
        return ["No latent claim could be tested on both the paper's Δ and budget_50."]
    differ = table.loc[~table["agree"]]
    if differ.empty:
        which = "the one latent claim" if len(table) == 1 else f"all {len(table)} latent claims"
        return [f"The paper's Δ and budget_50 reach the same verdict on {which} tested on both."]
    head = (f"The paper's Δ and budget_50 disagree on {len(differ)} of the {len(table)} latent claims tested on "
            "both (Δ also grows with how far apart the clean source and target codes start; budget_50 does not):")
    return [head] + [f"{r.claim} ({r.dataset}): the paper's Δ says {r.delta_verdict}; budget_50 says "
                     f"{r.budget_50_verdict}." for r in differ.itertuples()]


def _verdict_class(words) -> str | None:
    words = str(words)
    return next((c for c in _CLASSES if words.startswith(c)), None)


def _datasets(frame: pd.DataFrame) -> set[str]:
    if frame is None or frame.empty or "dataset" not in frame.columns:
        return set()
    return {str(d) for d in frame["dataset"].dropna().unique()}


def _of(frame: pd.DataFrame, dataset: str) -> pd.DataFrame:
    if frame is None or frame.empty or "dataset" not in frame.columns:
        return pd.DataFrame()
    return frame.loc[frame["dataset"].astype(str) == dataset]


_VALUE_COLUMN = {"delta": "objective", "noise": "loglik"}


def _measure(claim: Claim, rows: pd.DataFrame, variant: str, similarity: dict, healthy: set[str],
             health: pd.DataFrame, column: str) -> dict:
    selected = variant == "selected λ"
    if rows.empty or column not in rows.columns or not rows[column].notna().any():
        why = " (attack files written before the column existed)" if column in MEASURES and column != "objective" \
            else ""
        return dict(numerator="", denominator="", estimate=np.nan, lo=np.nan, hi=np.nan, trials="", units=0,
                    left_out="", verdict=f"not measured: no {_what(claim)} with {column} in the results{why}")
    sides, bad = [], []
    for term in claim.terms:
        term_rows = _term_rows(claim, term, rows, similarity, selected, column)
        picked, text = term.selectors[0].pick(term_rows)
        for alt in term.selectors[1:]:
            if not picked.empty:
                break
            picked, text = alt.pick(term_rows)
        ids = set(picked["trial_id"].astype(str)) if not picked.empty else set()
        bad.extend(sorted(ids - healthy))
        sides.append((term, picked.loc[picked["trial_id"].astype(str).isin(healthy)] if ids else picked, text, ids))
    numerator = " · ".join(dict.fromkeys(t for (term, _, t, _) in sides if term.coef > 0))
    denominator = " · ".join(dict.fromkeys(t for (term, _, t, _) in sides if term.coef < 0))
    result = dict(numerator=numerator, denominator=denominator, estimate=np.nan, lo=np.nan, hi=np.nan,
                  trials="", units=0, left_out=_unhealthy_text(sorted(set(bad)), health))
    empty = [t for (_, _, t, ids) in sides if not ids]
    if empty:
        return {**result, "verdict": f"not measured: no {_what(claim)} of {empty[0].split(' β=')[0]}"}
    unhealthy = [(t, ids) for (_, picked, t, ids) in sides if picked.empty]
    if unhealthy:
        text, ids = unhealthy[0]
        return {**result, "verdict": f"not measured: no healthy trial of {text} "
                                     f"({_unhealthy_text(sorted(ids), health)})"}
    if len({frozenset(ids) for (_, _, _, ids) in sides}) == 1:
        return {**result, "verdict": "not measured: only one setting present"}
    groups = _groups(claim, sides, selected, column)
    if groups is None:
        return {**result, "verdict": "not measured: the sides share no pair or image"}
    iv = contrast_interval(groups)
    scale = np.exp if claim.ratio else (lambda v: v)
    words = verdict(scale(iv.lo), scale(iv.hi), claim.expect)
    if not iv.seeds_measured and not words.startswith("inconclusive"):
        words += "; one trial per setting: seed-to-seed variation not in the interval"
    trials = " / ".join(f"{n}" for n in iv.trials.values())
    return {**result, "estimate": float(scale(iv.estimate)), "lo": float(scale(iv.lo)), "hi": float(scale(iv.hi)),
            "trials": trials, "units": iv.units, "verdict": words}


def _what(claim: Claim) -> str:
    return {"delta": "attacks", "noise": "noise samples"}.get(claim.quantity, "finished trials")


def _term_rows(claim: Claim, term: Term, rows: pd.DataFrame, similarity: dict, selected: bool,
               column: str = "objective") -> pd.DataFrame:
    if claim.quantity != "delta" or rows.empty:
        return rows
    sim = similarity.get(term.mode, agg.default_similarity(rows, term.mode))
    return agg.attack_rows(rows, column, term.mode, sim, selected_only=selected)


def _groups(claim: Claim, sides, selected: bool, column: str = "objective") -> list[ContrastGroup] | None:
    """The contrast's groups: each side's [trials × units] matrix, trials aligned within a
    setting, units (pairs or images) restricted to those every side has."""
    matrices = []
    for term, picked, text, _ in sides:
        if claim.quantity == "delta":
            units = agg.pair_units(picked, column, selected)
            units = units.loc[units[column] > 0]
            m = units.pivot_table(index="trial_id", columns="pair", values=column, aggfunc="mean")
            m = np.log(m)
        elif claim.quantity == "noise":
            m = picked.pivot_table(index="trial_id", columns="sample", values="loglik", aggfunc="mean")
        else:
            values = pd.to_numeric(picked[claim.quantity], errors="coerce").astype(float)
            m = pd.DataFrame({0: np.log(values.where(values > 0)).to_numpy()}, index=picked["trial_id"].to_numpy())
        matrices.append((term, text, m))
    common_units = None
    for _, _, m in matrices:
        cols = set(m.dropna(axis=1, how="any").columns)
        common_units = cols if common_units is None else common_units & cols
    if not common_units:
        return None
    units = sorted(common_units)
    trials: dict[str, set] = {}
    for _, text, m in matrices:
        ids = set(m[units].dropna(axis=0, how="any").index)
        trials[text] = ids if text not in trials else trials[text] & ids
    if any(not ids for ids in trials.values()):
        return None
    return [ContrastGroup(text, term.coef, m.loc[sorted(trials[text]), units].to_numpy(dtype=float))
            for term, text, m in matrices]


def _unhealthy_text(trial_ids: Sequence[str], health: pd.DataFrame) -> str:
    known = health.set_index("trial_id") if not health.empty else pd.DataFrame()
    parts = []
    for tid in trial_ids:
        if tid in known.index:
            row = known.loc[tid]
            parts.append(f"{tid} ({row['health']}: {row['health_reason']})")
        else:
            parts.append(f"{tid} (unknown: the trial has no row in train/)")
    return "; ".join(parts)
