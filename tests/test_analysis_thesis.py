"""The robustness-against-disentanglement analysis against closed forms and scipy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import thesis


def test_spearman_interval_is_fisher_z_with_bonett_wright():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20)
    y = x + rng.normal(size=20)
    rho, lo, hi, n = thesis.spearman_interval(x, y)
    assert rho == pytest.approx(stats.spearmanr(x, y).statistic) and n == 20
    se = math.sqrt((1 + rho ** 2 / 2) / 17)
    assert (lo, hi) == pytest.approx((math.tanh(math.atanh(rho) - 1.959964 * se),
                                      math.tanh(math.atanh(rho) + 1.959964 * se)), abs=1e-6)
    assert math.isnan(thesis.spearman_interval([1, 2, 3], [3, 2, 1])[1])   # n = 3: no interval


def test_independent_scores_give_an_interval_around_zero_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    covered = sum(lo <= 0 <= hi for lo, hi in
                  (thesis.spearman_interval(rng.normal(size=15), rng.normal(size=15))[1:3] for _ in range(400)))
    assert 0.92 <= covered / 400 <= 0.99


def _trials(n_per_beta, link):
    """Trials at β 1 and 8: β raises both MIG and log Δ; within a β, ``link`` ties them."""
    rng = np.random.default_rng(2)
    rows, attacks = [], []
    for beta in (1.0, 8.0):
        for k in range(n_per_beta):
            tid = f"d-tcvae-b{beta:g}-L1-z10-s{k}"
            mig = 0.1 * beta + rng.normal(0, 0.05)
            log_delta = 0.5 * beta + link * 20 * (mig - 0.1 * beta) + rng.normal(0, 0.05 if link else 1.0)
            rows.append(dict(trial_id=tid, dataset="d", model="tcvae", beta=beta, layers=1, z_dim=10, seed=k,
                             status="ok", mig=mig, tc=1.0 / beta + rng.normal(0, 0.1)))
            for pair in range(3):
                for lam in (0.0, 1.0):
                    attacks.append(dict(trial_id=tid, dataset="d", model="tcvae", beta=beta, layers=1, z_dim=10,
                                        seed=k, mode="latent", similarity="kl", pair=pair, lam=lam,
                                        objective=math.exp(log_delta)))
    return pd.DataFrame(attacks), pd.DataFrame(rows)


def test_a_link_only_through_beta_vanishes_within_beta():
    attacks, train = _trials(12, link=0.0)
    table = thesis.rank_correlations(attacks, train, "kl").set_index(["score", "beta"])
    assert table.loc[("mig", "pooled"), "lo"] > 0.3            # pooled: β drives both
    for beta in ("1", "8"):
        row = table.loc[("mig", beta)]
        assert row["lo"] < 0 < row["hi"] and row["trials"] == 12
    text = " ".join(thesis.findings(table.reset_index()))
    assert "rises with MIG" in text and "detect no link between MIG and robustness" in text


def test_a_link_within_beta_is_found():
    attacks, train = _trials(12, link=1.0)
    table = thesis.rank_correlations(attacks, train, "kl").set_index(["score", "beta"])
    for beta in ("1", "8"):
        assert table.loc[("mig", beta), "lo"] > 0.5
