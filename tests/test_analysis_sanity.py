"""The attack-path sanity check on a hand-made table whose answer is worked out by hand, on old
results without the newer columns, and the synthetic writer's newer columns against their
definitions (CONTRACTS.md, attacks/ and gallery/)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis import sanity
from analysis.load import load_attacks, load_gallery
from analysis.synthetic import write_synthetic_results


def _pair(trial, mode, pair, lams, objectives, clean, **columns):
    rows = []
    for k, (lam, obj) in enumerate(zip(lams, objectives)):
        row = dict(trial_id=trial, mode=mode, similarity="kl" if mode == "latent" else "elbo", pair=pair,
                   lam=lam, objective=obj, delta_clean=clean)
        row.update({name: values[k] for name, values in columns.items()})
        rows.append(row)
    return rows


def hand_table() -> pd.DataFrame:
    """Worked by hand (slack 5%: a point passes when Δ ≤ 1.05 × clean and Δ ≥ 0.95 × the largest
    Δ of its pair at a smaller λ):

    latent A  Δ 1, 2, 3, 3        clean 3       all 4 pass
    latent B  Δ 1, 3.5, 3, 3      clean 3       λ=1: 3.5 > 3.15; λ=2, 4: 3 < 0.95·3.5 = 3.325 -> 1 of 4
    latent C  Δ 1, 2, 2.5, 2.4    clean null    clean := Δ at the largest λ, 2.4: 2.5 ≤ 2.52 and
                                                2.4 ≥ 0.95·2.5 = 2.375 -> all 4 pass, 4 fallbacks
    latent D  Δ 1, NaN, 2, 3      clean 3       the failed attack fails; λ=2 compares with 1 -> 3 of 4
    output E  Δ 50, 52, 55        clean 54      55 ≤ 56.7 -> all 3 pass

    latent: 16 λ-points, 12 pass (75%, below the 98% bar); output: 3 of 3. Rows are shuffled, so
    the check must sort each pair by λ itself."""
    lams = [0.0, 1.0, 2.0, 4.0]
    flags = dict(worse_than_clean=[False, True, False, False])
    rows = (_pair("t1", "latent", 0, lams, [1, 2, 3, 3], 3.0, worse_than_clean=[False] * 4)
            + _pair("t1", "latent", 1, lams, [1, 3.5, 3, 3], 3.0, **flags)
            + _pair("t2", "latent", 0, lams, [1, 2, 2.5, 2.4], None, worse_than_clean=[None] * 4)
            + _pair("t2", "latent", 1, lams, [1, np.nan, 2, 3], 3.0, worse_than_clean=[False] * 4)
            + _pair("t1", "output", 0, lams[:3], [50, 52, 55], 54.0, worse_than_clean=[False, False, True],
                    delta_minimised=[40.0, 52.0, 50.0]))
    return pd.DataFrame(rows).sample(frac=1.0, random_state=3).reset_index(drop=True)


def test_path_checks_by_hand():
    points = sanity.path_checks(hand_table()).set_index(["trial_id", "mode", "pair", "lam"])
    b = points.loc[("t1", "latent", 1)]
    assert list(b["below_clean"]) == [True, False, True, True]
    assert list(b["not_falling"]) == [True, True, False, False]
    assert list(b["passes"]) == [True, False, False, False]
    c = points.loc[("t2", "latent", 0)]
    assert c["clean_fallback"].all() and (c["clean"] == 2.4).all() and c["passes"].all()
    d = points.loc[("t2", "latent", 1)]
    assert list(d["passes"]) == [True, False, True, True]
    assert list(d["prior_max"])[2] == 1.0   # the NaN at λ = 1 raises no bar
    assert points.loc[("t1", "output", 0), "passes"].all()


def test_attack_sanity_per_mode_by_hand():
    table = sanity.attack_sanity(hand_table()).set_index("mode")
    assert list(table.index) == ["latent", "output"]
    latent, output = table.loc["latent"], table.loc["output"]
    assert (latent["pairs"], latent["lam_points"], latent["passing"]) == (4, 16, 12)
    assert latent["passing_share"] == pytest.approx(0.75) and latent["below_bar"]
    assert latent["clean_fallback"] == 4 and latent["worse_than_clean"] == 1
    assert math.isnan(latent["objective_over_minimised"])   # output attacks only
    assert (output["lam_points"], output["passing"], output["below_bar"]) == (3, 3, False)
    assert output["worse_than_clean"] == 1
    assert output["objective_over_minimised"] == pytest.approx(1.1)   # median of 1.25, 1.0, 1.1
    words = sanity.findings(table.reset_index())
    assert any("latent attack is below the 98% bar: only 75.0% of its 16 λ-points pass" in w for w in words)
    assert "The output attack passes the path check at 100.0% of its 3 λ-points." in words
    assert any(w.startswith("4 latent λ-points have no delta_clean") for w in words)


def test_the_share_of_attacks_stopped_at_maxiter():
    """Counted by hand: 2 of the 4 rows reached the limit of 100 (one went past it, as scipy's
    maxfun can); without the limit or the column the share is unknown, not 0."""
    rows = pd.DataFrame(_pair("t", "latent", 0, [0.0, 1.0, 2.0, 4.0], [1.0, 1.0, 1.0, 1.0], 1.0))
    rows["iterations"] = [100, 7, 101, 99]
    assert sanity.attack_sanity(rows, maxiter=100).loc[0, "at_maxiter"] == 0.5
    assert math.isnan(sanity.attack_sanity(rows).loc[0, "at_maxiter"])
    assert math.isnan(sanity.attack_sanity(rows.drop(columns=["iterations"]), maxiter=100).loc[0, "at_maxiter"])


def test_the_bar_is_98_percent():
    """49 of 50 λ-points pass: 98%, not below the bar; 48 of 50: below."""
    lams = list(range(50))
    ok = _pair("t", "latent", 0, lams, [1.0] * 49 + [2.0], 1.0)          # the last exceeds 1.05
    assert not sanity.attack_sanity(pd.DataFrame(ok)).loc[0, "below_bar"]
    bad = _pair("t", "latent", 0, lams, [1.0] * 48 + [2.0, 2.0], 1.0)
    row = sanity.attack_sanity(pd.DataFrame(bad)).loc[0]
    assert row["passing"] == 48 and row["below_bar"]


def test_old_results_without_the_new_columns():
    old = hand_table().drop(columns=["delta_clean", "worse_than_clean", "delta_minimised"])
    table = sanity.attack_sanity(old).set_index("mode")
    # every upper bound is now the pair's Δ at its largest λ: B's 3.5 > 1.05 · 3 still fails,
    # E's 55 is its own bound
    assert table.loc["latent", "clean_fallback"] == 16 and table.loc["latent", "passing"] == 12
    assert table.loc["output", "passing"] == 3
    assert math.isnan(table.loc["latent", "worse_than_clean"])
    assert math.isnan(table.loc["output", "objective_over_minimised"])
    assert sanity.attack_sanity(pd.DataFrame()).empty


# ---------------------------------------------------------------------------------------------
# the synthetic writer's newer columns, against their definitions


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    grid = [("vae", 1.0, 1), ("tcvae", 1.0, 1), ("tcvae", 10.0, 1), ("seatbelt", 10.0, 3)]
    write_synthetic_results(out, grid=grid, seeds=(0, 1, 2), pairs=3, n_lam=21, noise=False)
    return load_attacks(out), load_gallery(out, columns=["trial_id", "mode", "similarity", "pair", "lam",
                                                         "paper_lam", "paper_lam_unmoved"])


def _budget(rows: pd.DataFrame, left: float) -> float:
    """The definition, written out: the smallest ‖d‖ among the pair's attacks whose distance is at
    most ``left`` × delta_clean, at most ‖x − xᵗ‖."""
    clean, cap = rows["delta_clean"].iloc[0], rows["source_target_l2"].iloc[0]
    best = cap
    for _, r in rows.iterrows():
        if r["distance"] <= left * clean and r["distortion_l2"] < best:
            best = r["distortion_l2"]
    return best


def test_synthetic_attack_columns_follow_their_definitions(synthetic):
    attacks, _ = synthetic
    for (tid, mode, pair), rows in attacks.groupby(["trial_id", "mode", "pair"]):
        rows = rows.sort_values("lam")
        obj, clean = rows["objective"].to_numpy(), rows["delta_clean"].to_numpy()
        assert np.ptp(clean) == 0                              # one no-attack value per pair
        assert np.all(obj <= clean + 3 * rows["objective_se"].to_numpy() + 5e-3 * clean)
        top = rows.iloc[-1]
        if top["distortion_l2"] == 0:                          # d = 0 at the largest λ: Δ is the clean value
            assert top["objective"] == pytest.approx(top["delta_clean"])
        flag = rows["objective"] > rows["delta_clean"] + 3 * rows["objective_se"]
        assert (rows["worse_than_clean"].astype(bool) == flag).all()
        if mode == "latent":
            assert np.all(np.diff(obj) >= -1e-9 * np.abs(obj[1:]))   # Δ*(λ) never falls with λ
            assert (rows["objective_se"] == 0).all() and (rows["delta_minimised"] == rows["objective"]).all()
            assert rows["budget_50"].nunique() == 1 and rows["budget_90"].nunique() == 1
            assert rows["budget_50"].iloc[0] == pytest.approx(_budget(rows, 0.5))
            assert rows["budget_90"].iloc[0] == pytest.approx(_budget(rows, 0.1))
            assert rows["budget_50"].iloc[0] <= rows["budget_90"].iloc[0] <= 9.0
        else:
            assert rows["budget_50"].isna().all() and rows["budget_90"].isna().all()
            assert (rows["objective_se"] > 0).all()
    output = attacks.loc[attacks["mode"] == "output"]
    assert 0 < output["worse_than_clean"].sum() < 0.05 * len(output)   # a few flagged attacks
    assert not attacks.loc[attacks["mode"] == "latent", "worse_than_clean"].any()
    assert (sanity.attack_sanity(attacks)["passing_share"] == 1.0).all()   # exact minima by construction


def test_synthetic_gallery_names_the_papers_lambda(synthetic):
    attacks, gallery = synthetic
    picked = attacks.loc[attacks["selected"].astype(bool)]
    merged = gallery.merge(picked, on=["trial_id", "mode", "similarity", "pair"], suffixes=("", "_a"))
    assert len(merged) == len(gallery)
    assert (merged["paper_lam"] == merged["lam_a"]).all()     # the row marked selected
    unmoved = merged["distortion_l2"] <= 0.01 * merged["source_target_l2"]
    assert (merged["paper_lam_unmoved"].astype(bool) == unmoved).all()
    assert (merged.loc[~unmoved, "lam"] == merged.loc[~unmoved, "paper_lam"]).all()
    shown = gallery.merge(attacks, on=["trial_id", "mode", "similarity", "pair", "lam"])
    moved = shown.loc[shown["paper_lam_unmoved"].astype(bool)]
    # the picture shows an attack that moved the input
    assert len(moved) and (moved["distortion_l2"] > 0.01 * moved["source_target_l2"]).all()
