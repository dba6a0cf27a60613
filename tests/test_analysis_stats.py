"""Confidence intervals against closed forms, and each aggregation on a hand-built Parquet file
with hand-computed expected values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import aggregate as agg
from analysis.load import load_attacks, load_train
from analysis.stats import bootstrap_ci, bootstrap_ratio, summarize, summarize_log, t_interval

# t quantiles t_{0.975, df}, hard-coded from a table
T975 = {1: 12.706, 3: 3.182, 9: 2.262}


def test_t_interval_matches_closed_form():
    x = [2, 4, 4, 4, 5, 5, 7, 9, 10, 11]
    # by hand: mean 61/10 = 6.1; sum of squared deviations 80.9; s = sqrt(80.9 / 9)
    mean = 6.1
    s = math.sqrt(80.9 / 9)
    half = T975[9] * s / math.sqrt(10)  # = 2.1446
    iv = t_interval(x)
    assert iv.n == 10
    assert iv.estimate == pytest.approx(mean)
    assert iv.lo == pytest.approx(mean - half, abs=1e-3)
    assert iv.hi == pytest.approx(mean + half, abs=1e-3)
    assert iv.lo == pytest.approx(3.9554, abs=1e-3) and iv.hi == pytest.approx(8.2446, abs=1e-3)


def test_t_interval_edge_cases():
    one = t_interval([3.0])
    assert one.estimate == 3.0 and one.n == 1 and math.isnan(one.lo) and math.isnan(one.hi)
    empty = t_interval([])
    assert empty.n == 0 and math.isnan(empty.estimate)
    # non-finite entries are ignored
    iv = t_interval([1.0, np.nan, 3.0, np.inf])
    assert iv.n == 2 and iv.estimate == 2.0
    assert iv.hi - iv.estimate == pytest.approx(T975[1] * math.sqrt(2) / math.sqrt(2), abs=1e-2)


def test_summarize_is_the_t_interval_per_group():
    df = pd.DataFrame({"g": ["a"] * 4 + ["b"] * 10 + ["c"], "v": [1, 3, 5, 7, *range(2, 12), 9]})
    out = summarize(df, ["g"], "v").set_index("g")
    a = out.loc["a"]
    # [1,3,5,7]: mean 4, s = sqrt(20/3), half = 3.182 * s / 2
    half = T975[3] * math.sqrt(20 / 3) / 2
    assert a["mean"] == 4 and a["n"] == 4
    assert a["lo"] == pytest.approx(4 - half, abs=1e-3) and a["hi"] == pytest.approx(4 + half, abs=1e-3)
    b = out.loc["b"]
    iv = t_interval(range(2, 12))
    assert (b["mean"], b["lo"], b["hi"]) == pytest.approx((iv.estimate, iv.lo, iv.hi))
    c = out.loc["c"]
    assert c["n"] == 1 and math.isnan(c["lo"])


def test_bootstrap_ratio_paired_and_degenerate():
    den = np.array([1.0, 2.0, 3.0, 4.0])
    iv = bootstrap_ratio(2 * den, den, paired=True)
    # every paired resample has ratio exactly 2
    assert (iv.estimate, iv.lo, iv.hi, iv.n) == pytest.approx((2.0, 2.0, 2.0, 4))
    unpaired = bootstrap_ratio(2 * den, den, paired=False)
    assert unpaired.estimate == pytest.approx(2.0)
    assert unpaired.lo < 2.0 < unpaired.hi
    with pytest.raises(ValueError):
        bootstrap_ratio([1, 2], [1, 2, 3], paired=True)
    assert math.isnan(bootstrap_ratio([1.0], [2.0]).lo)


def test_bootstrap_ci_of_mean_is_close_to_t_interval():
    rng = np.random.default_rng(1)
    x = rng.normal(10, 2, size=200)
    b, t = bootstrap_ci(x, seed=3), t_interval(x)
    assert b.estimate == pytest.approx(t.estimate)
    assert b.lo == pytest.approx(t.lo, abs=0.1) and b.hi == pytest.approx(t.hi, abs=0.1)


# ---------------------------------------------------------------------------------------------
# hand-built results folder

GRID = ["dataset", "model", "beta", "layers", "z_dim", "seed"]


LAMS = (0.0, 1.0, 4.0)


def _attack_rows():
    """Two pairs × three λ per trial; objective values chosen for hand computation. A pair's
    "all λ" value is its mean over the positive λ (1 and 4)."""
    rows = []

    def trial(model, beta, layers, objectives, selected, auddc, mode="latent", sim="kl"):
        tid = f"d-{model}-b{beta:g}-L{layers}-z10-s0"
        k = 0
        for pair in (0, 1):
            for lam in LAMS:
                rows.append(dict(
                    trial_id=tid, dataset="d", model=model, beta=float(beta), layers=layers, z_dim=10, seed=0,
                    mode=mode, similarity=sim, pair=pair, lam=lam, objective=float(objectives[k]),
                    adv_target_l2=float(objectives[k]) / 10, target_nll=2.0, selected=(pair, lam) in selected,
                    auddc=auddc[pair],
                ))
                k += 1

    # pair values (mean over λ = 1, 4):     pair 0  pair 1
    trial("vae", 1, 1, [0.5, 1, 1, 0.5, 2, 2], {(0, 1.0), (1, 0.0)}, [0.1, 0.3])           # 1, 2
    trial("tcvae", 1, 1, [1, 2, 2, 1, 8, 8], {(0, 1.0), (1, 0.0)}, [0.2, 0.4])             # 2, 8
    trial("tcvae", 4, 1, [10, 10, 30, 40, 100, 100], {(0, 0.0), (1, 4.0)}, [0.5, 0.7])     # 20, 100
    trial("seatbelt", 4, 2, [100, 1000, 1000, 100, 1e4, 1e4], {(0, 4.0), (1, 4.0)}, [0.8, 0.9])  # 1e3, 1e4
    trial("tcvae", 4, 1, [7] * 6, set(), [0.0, 0.0], mode="output", sim="elbo")
    return rows


@pytest.fixture()
def hand_folder(tmp_path):
    out = tmp_path / "res"
    (out / "attacks" / "all").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(_attack_rows()), out / "attacks" / "all" / "task.parquet")
    train = [
        dict(trial_id="t1", dataset="d", model="tcvae", beta=1.0, layers=1, z_dim=10, seed=0, status="ok",
             elbo=-100.0, encoder_l2=10.0, decoder_l2=20.0),
        dict(trial_id="t2", dataset="d", model="tcvae", beta=1.0, layers=1, z_dim=10, seed=1, status="ok",
             elbo=-102.0, encoder_l2=12.0, decoder_l2=22.0),
        dict(trial_id="t3", dataset="d", model="tcvae", beta=10.0, layers=1, z_dim=10, seed=0, status="ok",
             elbo=-150.0, encoder_l2=13.2, decoder_l2=16.8),
        dict(trial_id="t4", dataset="d", model="tcvae", beta=10.0, layers=1, z_dim=10, seed=1, status="ok",
             elbo=-160.0, encoder_l2=13.2, decoder_l2=16.8),
        dict(trial_id="t5", dataset="d", model="tcvae", beta=10.0, layers=1, z_dim=10, seed=2, status="failed",
             elbo=-999.0, encoder_l2=99.0, decoder_l2=99.0),
    ]
    (out / "train").mkdir()
    for r in train:
        pq.write_table(pa.Table.from_pylist([r]), out / "train" / f"{r['trial_id']}.parquet")
    return out


def test_elbo_by_beta_on_hand_built_parquet(hand_folder):
    table = agg.elbo_by_beta(load_train(hand_folder)).set_index("beta")
    # β=1: mean(-100, -102) = -101, s = sqrt(2), half = 12.706 * sqrt(2)/sqrt(2)
    assert table.loc[1.0, "mean"] == pytest.approx(-101.0)
    assert table.loc[1.0, "hi"] == pytest.approx(-101.0 + T975[1], abs=1e-2)
    # β=10: the failed trial (-999) is left out
    assert table.loc[10.0, "mean"] == pytest.approx(-155.0) and table.loc[10.0, "n"] == 2


def test_attack_by_beta_all_and_selected_lambda(hand_folder):
    """Δ is summarised by the geometric mean over (trial, pair) units and the exponentiated
    t-interval of the mean log; other metrics by the mean and t-interval of the same units."""
    attacks = load_attacks(hand_folder)
    table = agg.attack_by_beta(attacks, "objective", "latent", "kl").set_index(["model", "beta"])
    r = table.loc[("tcvae", 1.0)]
    # units 2 and 8: geometric mean 4; logs ln 2, ln 8: s = ln 4 / sqrt(2), half = 12.706 s / sqrt(2)
    half = T975[1] * math.log(4) / 2
    assert (r["mean"], r["n"]) == (pytest.approx(4.0), 2)
    assert r["lo"] == pytest.approx(4 * math.exp(-half), rel=1e-3)
    assert r["hi"] == pytest.approx(4 * math.exp(half), rel=1e-3)
    assert r["lo"] > 0   # a ratio interval around the geometric mean never crosses 0
    assert table.loc[("tcvae", 4.0), "mean"] == pytest.approx(math.sqrt(20 * 100))
    assert table.loc[("vae", 1.0), "mean"] == pytest.approx(math.sqrt(2))

    sel = agg.attack_by_beta(attacks, "objective", "latent", "kl", selected_only=True).set_index(["model", "beta"])
    # tcvae β=1 selected: pair 0 at λ=1 (2) and pair 1 at λ=0 (1): geometric mean sqrt(2), n = 2
    r = sel.loc[("tcvae", 1.0)]
    assert (r["mean"], r["n"]) == (pytest.approx(math.sqrt(2)), 2)
    # β=4 selected: pair 0 λ=0 (10), pair 1 λ=4 (100)
    assert sel.loc[("tcvae", 4.0), "mean"] == pytest.approx(math.sqrt(1000))

    # a linear-scale metric: mean of the pair units; adv_target_l2 = objective / 10 here
    lin = agg.attack_by_beta(attacks, "adv_target_l2", "latent", "kl").set_index(["model", "beta"])
    assert lin.loc[("tcvae", 1.0), "mean"] == pytest.approx((0.2 + 0.8) / 2)
    assert lin.loc[("tcvae", 1.0), "hi"] == pytest.approx(0.5 + T975[1] * 0.6 / math.sqrt(2) / math.sqrt(2), abs=1e-3)


def test_summarize_log_refuses_nonpositive_values():
    df = pd.DataFrame({"g": ["a", "a", "b", "b"], "v": [1.0, 100.0, -1.0, 3.0]})
    out = summarize_log(df, ["g"], "v").set_index("g")
    assert out.loc["a", "mean"] == pytest.approx(10.0) and out.loc["a", "nonpositive"] == 0
    assert math.isnan(out.loc["b", "mean"]) and out.loc["b", "nonpositive"] == 1 and out.loc["b", "n"] == 2


def test_auddc_is_one_value_per_pair(hand_folder):
    table = agg.attack_by_beta(load_attacks(hand_folder), "auddc", "latent", "kl").set_index(["model", "beta"])
    assert table.loc[("tcvae", 1.0), "mean"] == pytest.approx(0.3)
    assert table.loc[("tcvae", 1.0), "n"] == 2  # two pairs, not six λ rows


def test_heatmap_l1_row_is_tcvae(hand_folder):
    table = agg.attack_heatmap(load_attacks(hand_folder), "objective", "latent", "seatbelt", "kl",
                               l1_model="tcvae").set_index(["layers", "beta"])
    assert table.loc[(2, 4.0), "mean"] == pytest.approx(math.sqrt(1e3 * 1e4))
    assert table.loc[(1, 1.0), "mean"] == pytest.approx(4.0)  # β-TCVAE's β=1 row
    assert table.loc[(1, 4.0), "mean"] == pytest.approx(math.sqrt(2000))
    assert set(table.index) == {(1, 1.0), (1, 4.0), (2, 4.0)}


def test_weight_norm_table_by_hand(hand_folder):
    table = agg.weight_norm_table(load_train(hand_folder)).set_index("part")
    enc, dec = table.loc["encoder"], table.loc["decoder"]
    # encoder: mean 11 at β=1, 13.2 at β=10 -> +20%; decoder: 21 -> 16.8 -> -20% (failed trial ignored)
    assert enc["change"] == pytest.approx(0.2) and dec["change"] == pytest.approx(-0.2)
    assert (enc["beta_min"], enc["beta_max"], enc["n_min"], enc["n_max"]) == (1.0, 10.0, 2, 2)
    assert enc["change_lo"] <= 0.2 <= enc["change_hi"]
