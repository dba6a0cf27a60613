"""Confidence intervals.

Four methods, all at 95% by default:

* **t-interval** for a mean (figures and aggregate tables of quantities on a linear scale):
  ``mean ± t_{(1+c)/2, n−1} · s / √n`` with ``s`` the sample standard deviation (ddof = 1).
  With one value the interval is undefined (NaN bounds; figures then show the point only).
* **geometric mean with the t-interval of the log** (the attack objective Δ, which spans orders
  of magnitude and is positive): ``exp(mean log v)`` and ``exp(mean log v ± t · s_log / √n)``.
  The interval is a ratio interval around the geometric mean, so it never crosses 0.
* **percentile bootstrap** for a ratio of means (Table 1) or of geometric means: resample the
  units (input–target pairs, or trials) with replacement, recompute the ratio, take the 2.5% and
  97.5% quantiles. When numerator and denominator were measured on the same units the
  resampling is paired (the same resampled units on both sides).
* **a linear mixed model's interval for a contrast** (the claims table): trials (seeds) and
  shared units (input–target pairs, or images) are both random; the variance of the contrast is
  the sum of its seed and unit components (moment estimators of a two-way layout), the interval
  a t-interval with Welch–Satterthwaite degrees of freedom (:func:`contrast_interval`). With few
  seeds it keeps its 95% coverage where a hierarchical bootstrap (seeds, then pairs) does not
  (``benchmarks/interval_coverage.py``; the README has its figures).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as _st

__all__ = [
    "Interval",
    "T_METHOD",
    "LOG_METHOD",
    "BOOTSTRAP_METHOD",
    "t_interval",
    "bootstrap_ci",
    "bootstrap_ratio",
    "summarize",
    "summarize_log",
    "ContrastGroup",
    "ContrastInterval",
    "contrast_interval",
]

T_METHOD = "mean ± 95% t-interval (t_{0.975,n−1}·s/√n)"
LOG_METHOD = "geometric mean, 95% t-interval of the mean log (exp(mean log ± t_{0.975,n−1}·s_log/√n))"
BOOTSTRAP_METHOD = "95% percentile bootstrap over pairs"


@dataclass(frozen=True)
class Interval:
    """A point estimate with its confidence bounds and the number of units it rests on."""

    estimate: float
    lo: float
    hi: float
    n: int

    def excludes(self, value: float) -> bool:
        """True when the whole interval lies on one side of ``value`` (finite bounds only)."""
        return bool(np.isfinite(self.lo) and np.isfinite(self.hi) and (self.lo > value or self.hi < value))


def _clean(values: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    return arr[np.isfinite(arr)]


def t_interval(values: Sequence[float] | np.ndarray | pd.Series, confidence: float = 0.95) -> Interval:
    """Mean and t-based confidence interval of the finite entries of ``values``."""
    arr = _clean(values)
    n = arr.size
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    mean = float(arr.mean())
    if n == 1:
        return Interval(mean, float("nan"), float("nan"), 1)
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * float(arr.std(ddof=1)) / np.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray | pd.Series,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    n_boot: int = 4000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap of ``statistic`` (default: the mean; it must reduce along axis 1)."""
    arr = _clean(values)
    stat = statistic or (lambda a: a.mean(axis=-1))
    if arr.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    est = float(stat(arr[None, :])[0])
    if arr.size == 1:
        return Interval(est, float("nan"), float("nan"), 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_boot, arr.size))
    boots = stat(arr[idx])
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return Interval(est, float(lo), float(hi), int(arr.size))


def bootstrap_ratio(
    numerator: Sequence[float] | np.ndarray | pd.Series,
    denominator: Sequence[float] | np.ndarray | pd.Series,
    paired: bool = False,
    n_boot: int = 4000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Ratio of means ``mean(numerator) / mean(denominator)`` with a percentile-bootstrap CI.

    Each array holds one value per unit (e.g. per input–target pair: the mean over λ, |z|, seeds).
    ``paired=True`` requires equal lengths, unit ``i`` of both arrays being the same pair, and
    resamples the same units on both sides. ``n`` is the number of units (the smaller side when
    unpaired).
    """
    if paired:
        a = np.asarray(numerator, dtype=float).ravel()
        b = np.asarray(denominator, dtype=float).ravel()
        if a.size != b.size:
            raise ValueError("paired bootstrap needs one numerator and one denominator value per unit")
        keep = np.isfinite(a) & np.isfinite(b)
        a, b = a[keep], b[keep]
    else:
        a, b = _clean(numerator), _clean(denominator)
    n = int(min(a.size, b.size))
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        est = float(a.mean() / b.mean())
        if min(a.size, b.size) < 2:
            return Interval(est, float("nan"), float("nan"), n)
        rng = np.random.default_rng(seed)
        ia = rng.integers(0, a.size, size=(n_boot, a.size))
        ib = ia if paired else rng.integers(0, b.size, size=(n_boot, b.size))
        ratios = a[ia].mean(axis=1) / b[ib].mean(axis=1)
    ratios = ratios[np.isfinite(ratios)]
    if ratios.size == 0:
        return Interval(est, float("nan"), float("nan"), n)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(ratios, [alpha, 1 - alpha])
    return Interval(est, float(lo), float(hi), n)


def summarize_log(
    df: pd.DataFrame, by: Sequence[str], value: str, confidence: float = 0.95
) -> pd.DataFrame:
    """As :func:`summarize`, on a log scale: per group the geometric mean of the finite values of
    ``value`` and the exponentiated t-interval of their mean log (``mean, lo, hi``), ``n``, and
    ``log_std`` (the sample std of the natural logs). A group with a value <= 0 has no log: its
    row has NaN ``mean``/``lo``/``hi`` and counts them in ``nonpositive``."""
    by = list(by)
    cols = [*by, "mean", "log_std", "n", "lo", "hi", "nonpositive"]
    if df.empty or value not in df.columns:
        return pd.DataFrame(columns=cols)
    vals = pd.to_numeric(df[value], errors="coerce").astype(float)
    frame = df[by].copy()
    frame["_v"] = vals.where(np.isfinite(vals))
    frame = frame.dropna(subset=["_v"])
    if frame.empty:
        return pd.DataFrame(columns=cols)
    frame["_bad"] = (frame["_v"] <= 0).astype(int)
    with np.errstate(divide="ignore", invalid="ignore"):
        frame["_log"] = np.log(frame["_v"].where(frame["_v"] > 0))
    g = frame.groupby(by, sort=True, observed=True, dropna=False)
    out = g["_log"].agg(["mean", "std", "count"]).reset_index()
    out["nonpositive"] = g["_bad"].sum().to_numpy().astype(int)
    n = out["count"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        tq = np.where(n > 1, _st.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)), np.nan)
        half = tq * out["std"].to_numpy() / np.sqrt(n)
    bad = out["nonpositive"].to_numpy() > 0
    centre = np.where(bad, np.nan, out["mean"].to_numpy())
    out["lo"] = np.exp(centre - half)
    out["hi"] = np.exp(centre + half)
    out["log_std"] = out["std"]
    out["mean"] = np.exp(centre)
    out["n"] = (n + out["nonpositive"].to_numpy()).astype(int)
    return out[cols]


def summarize(
    df: pd.DataFrame, by: Sequence[str], value: str, confidence: float = 0.95
) -> pd.DataFrame:
    """Group ``df`` by ``by`` and give, for the finite values of ``value`` in each group:
    ``mean, std, n, lo, hi`` (t-interval, NaN bounds when n < 2). Vectorised: fast on millions
    of rows. Groups with no finite value are dropped."""
    by = list(by)
    cols = [*by, "mean", "std", "n", "lo", "hi"]
    if df.empty or value not in df.columns:
        return pd.DataFrame(columns=cols)
    vals = pd.to_numeric(df[value], errors="coerce").astype(float)
    vals = vals.where(np.isfinite(vals))
    frame = df[by].copy()
    frame["_v"] = vals
    frame = frame.dropna(subset=["_v"])
    if frame.empty:
        return pd.DataFrame(columns=cols)
    g = frame.groupby(by, sort=True, observed=True, dropna=False)["_v"]
    out = g.agg(["mean", "std", "count"]).reset_index().rename(columns={"count": "n"})
    n = out["n"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        tq = np.where(n > 1, _st.t.ppf(0.5 + confidence / 2, np.maximum(n - 1, 1)), np.nan)
        half = tq * out["std"].to_numpy() / np.sqrt(n)
    out["lo"] = out["mean"] - half
    out["hi"] = out["mean"] + half
    out["n"] = out["n"].astype(int)
    return out[cols]


@dataclass(frozen=True)
class ContrastGroup:
    """One term of a contrast Σ_g coef_g · mean(values_g): ``values`` is [trials, units], the
    units (input–target pairs, images) the same columns in every group. Groups of one
    ``setting`` (e.g. the latent and output attacks of one model) hold the same trials in the same
    row order; different settings have independent trials."""

    setting: str
    coef: float
    values: np.ndarray


@dataclass(frozen=True)
class ContrastInterval:
    estimate: float
    lo: float
    hi: float
    df: float
    trials: dict[str, int]   # trials per setting
    units: int
    seeds_measured: bool     # every setting had >= 2 trials, so seed variation is in the interval


def contrast_interval(groups: Sequence[ContrastGroup], confidence: float = 0.95) -> ContrastInterval:
    """Estimate and t-interval of Σ_g coef_g · mean(values_g) under a linear mixed model with
    random trial (seed) effects per setting, random unit effects and a residual.

    Variance of the estimate = Σ_settings var_s(z_k,s)/n_k + var_p(D_p)/P − Σ_k MS_k/(n_k P):
    z_k,s is trial s's Σ_{g∈k} coef_g · (mean over units), D_p unit p's Σ_g coef_g · (mean over
    trials), MS_k the residual mean square of the two-way layout of setting k (counted in both
    other terms, so once removed). Degrees of freedom: Welch–Satterthwaite. A setting with one
    trial contributes no seed term (``seeds_measured`` is then False); with one unit there is
    no unit term, and the interval is Welch's two-sample t-interval on the trials."""
    if not groups:
        raise ValueError("a contrast needs at least one group")
    units = {g.values.shape[1] for g in groups}
    if len(units) != 1:
        raise ValueError(f"every group needs the same units (columns), got {sorted(units)}")
    P = units.pop()
    settings: dict[str, list[ContrastGroup]] = {}
    for g in groups:
        settings.setdefault(g.setting, []).append(g)
    estimate = float(sum(g.coef * np.mean(g.values) for g in groups))
    components: list[tuple[float, float]] = []   # (variance term, its degrees of freedom)
    residual = 0.0
    trials = {}
    for name, members in settings.items():
        rows = {m.values.shape[0] for m in members}
        if len(rows) != 1:
            raise ValueError(f"groups of setting {name!r} must hold the same trials")
        n = rows.pop()
        trials[name] = n
        w = sum(m.coef * np.asarray(m.values, dtype=float) for m in members)   # [n, P]
        if n >= 2:
            components.append((float(np.var(w.mean(axis=1), ddof=1)) / n, n - 1))
            if P >= 2:
                resid = w - w.mean(axis=1, keepdims=True) - w.mean(axis=0, keepdims=True) + w.mean()
                residual += float((resid ** 2).sum() / ((n - 1) * (P - 1))) / (n * P)
    if P >= 2:
        d = sum(g.coef * np.asarray(g.values, dtype=float).mean(axis=0) for g in groups)
        components.append((max(float(np.var(d, ddof=1)) / P - residual, 0.0), P - 1))
    variance = sum(v for v, _ in components)
    seeds_measured = all(n >= 2 for n in trials.values())
    if not components or variance <= 0:
        return ContrastInterval(estimate, float("nan"), float("nan"), float("nan"), trials, P, seeds_measured)
    df = variance ** 2 / sum(v ** 2 / k for v, k in components if v > 0)
    half = float(_st.t.ppf(0.5 + confidence / 2, df)) * float(np.sqrt(variance))
    return ContrastInterval(estimate, estimate - half, estimate + half, float(df), trials, P, seeds_measured)
