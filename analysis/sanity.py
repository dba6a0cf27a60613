"""Is each pair's attack path what a minimiser can produce? A check of the attack step's output.

For one (trial, mode, similarity, pair), the attack at λ reports Δ*(λ) = min_d f(d) + λ‖d‖.
Whatever f is, two things follow from the definition:

* Δ*(λ) ≤ f(0), the no-attack value (d = 0 is always a candidate): the ``delta_clean`` column;
* Δ*(λ) never falls as λ grows (every candidate's value grows with λ).

A λ-point **passes** when, with 5% slack for Monte-Carlo noise and solver tolerance,

    objective ≤ clean + 0.05·|clean|   and   objective ≥ m − 0.05·|m|,

with ``clean`` the row's ``delta_clean`` (where it is null, in attack files written before the
column existed: the pair's Δ at its largest λ with a finite Δ, the closest to d = 0 on its
path) and ``m`` the largest Δ of the pair at a smaller λ (no condition at the smallest λ). For
positive Δ this is objective ≤ 1.05 × clean and objective ≥ 0.95 × m. A non-finite Δ (a failed
attack) fails. A mode below ``PASS_BAR`` has attacks that stopped short of their minimum (or a bug): its Δ is
then an upper bound on the attack's strength, not a measurement of it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from results.vocabulary import MODES, OUTPUT

__all__ = ["PAIR_COLUMNS", "SLACK", "PASS_BAR", "path_checks", "attack_sanity", "findings"]

PAIR_COLUMNS = ["trial_id", "mode", "similarity", "pair"]
SLACK = 0.05      # relative slack of both bounds
PASS_BAR = 0.98   # a mode below this share of passing λ-points is called out in the report

_SANITY_COLUMNS = ["mode", "pairs", "lam_points", "passing", "passing_share", "below_bar", "clean_fallback",
                   "worse_than_clean", "objective_over_minimised", "at_maxiter"]


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series(np.nan, index=frame.index, dtype=float)
    return pd.to_numeric(frame[column], errors="coerce").astype(float)


def path_checks(attacks: pd.DataFrame) -> pd.DataFrame:
    """One row per λ-point of ``attacks``: ``PAIR_COLUMNS``, ``lam``, ``objective``, ``clean``
    (the upper bound's reference), ``clean_fallback`` (True where ``delta_clean`` was null and
    the pair's Δ at its largest λ stood in), ``prior_max`` (the pair's largest Δ at a smaller λ;
    −inf at its smallest), ``below_clean``, ``not_falling`` and ``passes``."""
    keys = [c for c in PAIR_COLUMNS if c in attacks.columns]
    cols = [*keys, "lam", "objective", "clean", "clean_fallback", "prior_max", "below_clean", "not_falling",
            "passes"]
    if attacks.empty or "objective" not in attacks.columns or "lam" not in attacks.columns:
        return pd.DataFrame(columns=cols)
    df = attacks[keys].copy()
    df["lam"] = _numeric(attacks, "lam")
    df["objective"] = _numeric(attacks, "objective")
    df["_clean"] = _numeric(attacks, "delta_clean")
    df = df.sort_values([*keys, "lam"], kind="stable")
    groups = df.groupby(keys, sort=False, dropna=False)
    at_largest = groups["objective"].transform("last")
    df["clean_fallback"] = ~np.isfinite(df["_clean"])
    df["clean"] = df["_clean"].where(~df["clean_fallback"], at_largest)
    # a failed (NaN) attack neither raises nor lowers the bar for the λ above it
    running = df["objective"].where(np.isfinite(df["objective"]), -np.inf).groupby(
        [df[k] for k in keys], sort=False, dropna=False).cummax()
    df["prior_max"] = running.groupby([df[k] for k in keys], sort=False, dropna=False).shift(1).fillna(-np.inf)
    with np.errstate(invalid="ignore"):
        df["below_clean"] = df["objective"] <= df["clean"] + SLACK * df["clean"].abs()
        df["not_falling"] = df["objective"] >= df["prior_max"] - SLACK * df["prior_max"].abs()
    df["passes"] = df["below_clean"] & df["not_falling"] & np.isfinite(df["objective"])
    return df[cols].reset_index(drop=True)


def _worse_than_clean(rows: pd.DataFrame) -> float:
    """How many rows the attack step flagged ``worse_than_clean``; NaN when no row says."""
    if "worse_than_clean" not in rows.columns or not rows["worse_than_clean"].notna().any():
        return float("nan")
    return float(rows["worse_than_clean"].dropna().astype(bool).sum())


def _objective_over_minimised(rows: pd.DataFrame) -> float:
    """Median of the reported Δ over the Δ the solver ended on (output attacks: fresh noise
    draws against the solver's own); NaN without ``delta_minimised``."""
    ratio = _numeric(rows, "objective") / _numeric(rows, "delta_minimised").replace(0.0, np.nan)
    ratio = ratio[np.isfinite(ratio)]
    return float(ratio.median()) if ratio.size else float("nan")


def _at_maxiter(rows: pd.DataFrame, maxiter: int | None) -> float:
    """The share of attacks that stopped on the iteration limit rather than a tolerance (their Δ
    is an upper bound on the minimum); NaN without the limit or the ``iterations`` column."""
    iterations = _numeric(rows, "iterations")
    if maxiter is None or not iterations.notna().any():
        return float("nan")
    return float((iterations.dropna() >= maxiter).mean())


def attack_sanity(attacks: pd.DataFrame, maxiter: int | None = None) -> pd.DataFrame:
    """Per attack mode (latent first): ``pairs``, ``lam_points``, ``passing`` (λ-points that pass
    ``path_checks``), ``passing_share``, ``below_bar`` (share < ``PASS_BAR``), ``clean_fallback``
    (λ-points checked against the pair's Δ at its largest λ, ``delta_clean`` being null),
    ``worse_than_clean`` (rows the attack step flagged; NaN when the column is null) and
    ``objective_over_minimised`` (output attacks only: the median reported Δ / solver's Δ) and
    ``at_maxiter`` (the share of attacks stopped by ``maxiter``, the sweep's iteration limit)."""
    points = path_checks(attacks)
    if points.empty or "mode" not in points.columns:
        return pd.DataFrame(columns=_SANITY_COLUMNS)
    order = {m: i for i, m in enumerate(MODES)}
    modes = sorted(points["mode"].dropna().astype(str).unique(), key=lambda m: (order.get(m, len(MODES)), m))
    out = []
    for mode in modes:
        mine = points.loc[points["mode"].astype(str) == mode]
        rows = attacks.loc[attacks["mode"].astype(str) == mode]
        keys = [c for c in PAIR_COLUMNS if c in mine.columns]
        share = float(mine["passes"].mean())
        out.append({
            "mode": mode, "pairs": int(len(mine.drop_duplicates(subset=keys))), "lam_points": int(len(mine)),
            "passing": int(mine["passes"].sum()), "passing_share": share, "below_bar": share < PASS_BAR,
            "clean_fallback": int(mine["clean_fallback"].sum()), "worse_than_clean": _worse_than_clean(rows),
            "objective_over_minimised": _objective_over_minimised(rows) if mode == OUTPUT else float("nan"),
            "at_maxiter": _at_maxiter(rows, maxiter),
        })
    return pd.DataFrame(out, columns=_SANITY_COLUMNS)


def findings(table: pd.DataFrame) -> list[str]:
    """One sentence per attack mode of ``sanity.attack_sanity``'s table, saying plainly when it
    is below the bar, and what is missing in older attack files."""
    out = []
    for r in table.itertuples():
        share = f"{100 * r.passing_share:.1f}% of its {r.lam_points} λ-points"
        if r.below_bar:
            out.append(f"The {r.mode} attack is below the {100 * PASS_BAR:g}% bar: only {share} pass the "
                       "path check; its Δ there is not the minimum the attack defines, so read its figures and "
                       "claims as upper bounds on the attack's strength.")
        else:
            out.append(f"The {r.mode} attack passes the path check at {share}.")
        if r.clean_fallback:
            out.append(f"{r.clean_fallback} {r.mode} λ-points have no delta_clean (attack files written before the "
                       "column existed): their upper bound is the pair's Δ at its largest λ.")
    return out
