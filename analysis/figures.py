"""The paper's figures as PNG files.

Drawn with matplotlib's Agg canvas directly (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``):
no pyplot, no GUI, and a user's own backend choice is left alone. Every figure has labelled
axes with units, a log scale where the values span orders of magnitude, and its 95% CI as a
shaded band, error bars, or (heatmaps) the interval printed in each cell. Each function returns
a :class:`FigureResult` or raises :class:`SkipFigure` saying what data is missing.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from analysis import aggregate as agg
from analysis.load import GALLERY_IMAGE_COLUMNS, iter_gallery_images
from analysis.stats import LOG_METHOD, T_METHOD, summarize, t_interval
from results import kinds
from results.vocabulary import LATENT, MODES

__all__ = [
    "FigureResult",
    "SkipFigure",
    "fig_elbo",
    "fig_attack_vs_beta",
    "fig_attack_heatmaps",
    "fig_latent_robustness_vs_beta",
    "fig_latent_robustness_heatmaps",
    "fig_noise",
    "fig_weight_norms",
    "fig_gallery",
    "fig_reconstructions",
    "fig_thesis",
]

DPI = 100


@dataclass(frozen=True)
class FigureResult:
    file: str  # file name inside the report folder
    title: str
    caption: str


class SkipFigure(Exception):
    """A figure could not be drawn from the data present; the message says what is missing."""


_color = kinds.colour  # a kind's colour, the same in every figure


def _layers_text(model: str, layers, sep: str = " ") -> str:
    """" L=3" for a kind whose trials differ in L, "" for one with a single L."""
    return f"{sep}L={int(layers)}" if kinds.varies_in_layers(model) else ""


def _new_figure(nrows: int, ncols: int, w: float = 4.6, h: float = 3.4, squeeze: bool = False):
    fig = Figure(figsize=(max(1, ncols) * w, max(1, nrows) * h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=squeeze)
    return fig, axes


def _suptitle(fig: Figure, text: str, fontsize: float = 10) -> None:
    """A figure title wrapped to the figure's width (so narrow figures do not cut it off)."""
    width_in = fig.get_figwidth()
    chars = max(40, int(width_in * 72 / (0.55 * fontsize)))
    fig.suptitle("\n".join(textwrap.wrap(text, chars)), fontsize=fontsize)


def _save(fig: Figure, path: Path) -> None:
    fig.savefig(path, format="png", dpi=DPI)


def _spans_orders(values: Sequence[float] | np.ndarray, factor: float = 30.0) -> bool:
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return bool(arr.size >= 2 and np.all(arr > 0) and arr.max() / arr.min() >= factor)


def _maybe_log_y(ax, values) -> bool:
    if _spans_orders(values):
        ax.set_yscale("log")
        return True
    return False


def _line_band(ax, x, mean, lo, hi, *, label, color, linestyle="-", marker="o") -> None:
    x = np.asarray(x, dtype=float)
    mean, lo, hi = (np.asarray(v, dtype=float) for v in (mean, lo, hi))
    if x.size == 1:
        yerr = None
        if np.isfinite(lo[0]) and np.isfinite(hi[0]):
            yerr = [[mean[0] - lo[0]], [hi[0] - mean[0]]]
        ax.errorbar(x, mean, yerr=yerr, fmt=marker, color=color, label=label, capsize=4,
                    linestyle="none", markersize=7)
        return
    ax.plot(x, mean, linestyle=linestyle, marker=marker, color=color, label=label, markersize=4)
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.any():
        ax.fill_between(x, np.where(ok, lo, mean), np.where(ok, hi, mean), color=color, alpha=0.18,
                        linewidth=0)


def _beta_axis(ax, betas) -> None:
    ax.set_xlabel("β (TC penalty weight, dimensionless)")
    if _spans_orders(betas, factor=20):
        ax.set_xscale("log")
    ax.grid(True, alpha=0.3)


def _datasets(*frames: pd.DataFrame) -> list[str]:
    names: set[str] = set()
    for f in frames:
        if not f.empty and "dataset" in f.columns:
            names.update(str(d) for d in f["dataset"].dropna().unique())
    return sorted(names)


# ---------------------------------------------------------------------------------------------


def fig_elbo(train: pd.DataFrame, out: Path, file: str = "fig3_elbo_vs_beta.png") -> FigureResult:
    """Fig. 3: ELBO against β per model (β-TCVAE, Seatbelt-VAE, and VAE/β-TCDLGM where present)."""
    table = agg.elbo_by_beta(train)
    if table.empty:
        raise SkipFigure("no finished trial (status ok) with an ELBO in train/")
    datasets = _datasets(table)
    fig, axes = _new_figure(1, len(datasets))
    for ax, dataset in zip(axes[0], datasets):
        sub = table.loc[table["dataset"] == dataset]
        for model in sorted(sub["model"].unique(), key=agg.model_sort_key):
            m = sub.loc[sub["model"] == model].sort_values("beta")
            _line_band(ax, m["beta"], m["mean"], m["lo"], m["hi"], label=agg.model_label(model),
                       color=_color(model))
        _beta_axis(ax, sub["beta"])
        ax.set_ylabel("ELBO (nats per image)")
        ax.set_title(f"{dataset}")
        ax.legend(fontsize=8)
    _suptitle(fig, f"ELBO against β (Fig. 3); band: {T_METHOD} over |z|, L and seeds", fontsize=10)
    _save(fig, out / file)
    return FigureResult(
        file, "ELBO against β (Fig. 3)",
        "Mean test ELBO of the finished trials against β. Shaded band (error bar for a single β): "
        f"{T_METHOD}, over the trials at that β (variation due to |z|, L and seeds).",
    )


NEW_COLUMNS_HINT = ("its attack files were written before the column existed: re-run the attack step "
                    "(python -m sweep.attack) to add it")


def _finite(rows: pd.DataFrame, column: str) -> bool:
    """Whether ``rows`` has a finite value of ``column`` (old result folders load it as nulls)."""
    if rows.empty or column not in rows.columns:
        return False
    return bool(np.isfinite(pd.to_numeric(rows[column], errors="coerce").astype(float)).any())


def _modes_with(attacks: pd.DataFrame, metric: str) -> list[str]:
    """The attack modes, latent first, whose rows carry a finite ``metric``."""
    if attacks.empty or "mode" not in attacks.columns:
        return []
    return [m for m in MODES if _finite(attacks.loc[attacks["mode"] == m], metric)]


def _metric_axis_label(metric: str, mode: str, sim: str | None) -> str:
    spec = agg.METRICS[metric]
    if metric == "objective":
        return f"Δ_{mode} ({agg.objective_unit(mode, sim)})" + (", log scale" if spec.log_scale else "")
    return (spec.axis or f"{spec.label} ({spec.unit})") + (", log scale" if spec.log_scale else "")


def _beta_panel(ax, rows: pd.DataFrame, metric: str, mode: str, sim: str | None,
                variants: Sequence[tuple[str, bool, str]]) -> bool:
    """One Fig. 5 panel: ``metric`` against β for β-TCVAE (a band per λ variant) with the VAE
    (β = 1) as a reference point; False when there is nothing to draw."""
    spec = agg.METRICS[metric]
    vals = []
    for vname, sel, ls in variants:
        table = agg.attack_by_beta(rows, metric, mode, sim, selected_only=sel)
        for model in ("tcvae", "vae"):
            m = table.loc[table["model"] == model].sort_values("beta")
            if m.empty:
                continue
            label = f"{agg.model_label(model)}{'' if spec.per_pair else ', ' + vname}"
            if model == "vae":
                # the reference point, drawn as a point with error bars at its β (= 1)
                lo, hi, mean = m["lo"].to_numpy(), m["hi"].to_numpy(), m["mean"].to_numpy()
                yerr = [mean - lo, hi - mean] if np.all(np.isfinite(lo)) else None
                ax.errorbar(m["beta"], mean, yerr=yerr, fmt="s" if not sel else "D", color=_color("vae"),
                            capsize=4, label=label, markersize=7, markerfacecolor="none" if sel else _color("vae"))
            else:
                _line_band(ax, m["beta"], m["mean"], m["lo"], m["hi"], label=label, color=_color(model),
                           linestyle=ls)
            vals.extend(m["mean"].tolist())
            vals.extend(v for v in m["lo"].tolist() if np.isfinite(v))
    ax.set_ylabel(_metric_axis_label(metric, mode, sim))
    _beta_axis(ax, rows["beta"])
    if not vals:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
        return False
    if spec.log_scale:
        ax.set_yscale("log")
    else:
        _maybe_log_y(ax, vals)
    ax.legend(fontsize=7)
    return True


def _tcvae_rows(attacks: pd.DataFrame) -> pd.DataFrame:
    rows = attacks.loc[attacks["model"].isin(["tcvae", "vae"])]
    if not (rows["model"] == "tcvae").any():
        raise SkipFigure("no attack results of β-TCVAE (model 'tcvae') in attacks/")
    return rows


def fig_attack_vs_beta(
    attacks: pd.DataFrame,
    metric: str,
    out: Path,
    similarity: dict[str, str | None],
    file: str | None = None,
) -> FigureResult:
    """Fig. 5: an attack metric against β for β-TCVAE (all-λ mean and selected-λ), with the VAE
    (β = 1) as the reference point; one row per attack mode, one column per dataset."""
    spec = agg.METRICS[metric]
    file = file or f"fig5_{metric}_vs_beta_tcvae.png"
    if attacks.empty or "mode" not in attacks.columns:
        raise SkipFigure("no attack results in attacks/")
    modes = _modes_with(attacks, metric)
    if not modes:
        raise SkipFigure(f"no {metric} in attacks/ ({NEW_COLUMNS_HINT})")
    rows = _tcvae_rows(attacks)
    variants = [("all λ", False, "-")] if spec.per_pair else [("all λ", False, "-"), ("selected λ", True, "--")]
    datasets = _datasets(rows)
    fig, axes = _new_figure(len(modes), len(datasets))
    for i, mode in enumerate(modes):
        sim = similarity.get(mode)
        for j, dataset in enumerate(datasets):
            _beta_panel(axes[i][j], rows.loc[rows["dataset"] == dataset], metric, mode, sim, variants)
            axes[i][j].set_title(f"{dataset}: {mode} attack ({sim})", fontsize=10)
    method = LOG_METHOD if spec.log_scale else T_METHOD
    what = ("geometric mean" if spec.log_scale else "mean") + " over (trial, pair)"
    _suptitle(fig, f"{spec.label} against β for β-TCVAE (Fig. 5); {what}; band: {method}", fontsize=10)
    _save(fig, out / file)
    if spec.per_pair:
        cap = (f"{spec.label} ({spec.unit}) against β for β-TCVAE; square: VAE (β = 1) reference. "
               f"One value per input–target pair (as written by the attack step); band: {method} "
               "over the (trial, pair) units (pairs, |z|, seeds). Pairs without a value (see the "
               "report's notes) are left out.")
    else:
        cap = (f"{spec.label} against β for β-TCVAE, healthy trials only; squares: VAE (β = 1) reference. "
               "Solid: each pair's mean over the positive λ (for Δ, the paper's Δ); dashed / open markers: the λ "
               f"the attack step selected for each pair. {what.capitalize()} units (pairs, |z|, seeds); "
               f"band / error bars: {method}.")
    return FigureResult(file, f"{spec.label} against β, β-TCVAE (Fig. 5)", cap)


ROBUSTNESS_METRICS = ("objective", "budget_50", "clean_left")   # the latent robustness measures, side by side


def _robustness_metrics(attacks: pd.DataFrame, figure: str) -> list[str]:
    """The latent robustness measures present: the paper's Δ and those of the newer columns
    (budget_50; clean_left from delta_clean) that the latent attacks carry; SkipFigure if none
    of the newer ones is there, as the paper's Δ has its own figure."""
    latent = attacks.loc[attacks["mode"] == LATENT] if not attacks.empty and "mode" in attacks.columns else attacks
    if not _finite(latent, "objective"):
        raise SkipFigure("no latent attack results in attacks/")
    metrics = [m for m in ROBUSTNESS_METRICS if _finite(latent, m)]
    if metrics == ["objective"]:
        raise SkipFigure(f"no budget_50 or delta_clean in the latent attacks ({NEW_COLUMNS_HINT}); {figure} "
                         "shows the paper's Δ alone")
    return metrics


_ROBUSTNESS_CAPTION = (
    "The paper's Δ mixes how far apart the clean source and target already are with how hard the model is "
    "to move: here it stands beside budget_50, the smallest distortion ‖d‖ on the pair's λ path that removes "
    "half of the clean latent distance (capped at ‖x − xᵗ‖; one value per pair, geometric mean), and the "
    "fraction of the clean distance left, distance / delta_clean, each pair's mean over the positive λ. Higher "
    "is harder to attack on all three.")


def fig_latent_robustness_vs_beta(
    attacks: pd.DataFrame,
    out: Path,
    similarity: dict[str, str | None],
    file: str = "fig5_latent_robustness_vs_beta_tcvae.png",
) -> FigureResult:
    """Fig. 5, latent attack: the paper's Δ, budget_50 and the fraction of the clean distance
    left, side by side, against β for β-TCVAE (VAE as the reference); one row per dataset."""
    metrics = _robustness_metrics(attacks, "Fig. 5")
    rows = _tcvae_rows(attacks)
    sim = similarity.get(LATENT)
    datasets = _datasets(rows)
    fig, axes = _new_figure(len(datasets), len(metrics))
    for i, dataset in enumerate(datasets):
        for j, metric in enumerate(metrics):
            _beta_panel(axes[i][j], rows.loc[rows["dataset"] == dataset], metric, LATENT, sim,
                        [("all λ", False, "-")])
            axes[i][j].set_title(f"{dataset}: {agg.METRICS[metric].label}", fontsize=8)
    _suptitle(fig, f"Latent robustness against β for β-TCVAE, three measures (Fig. 5, {sim}); band: 95% interval "
                   "over (trial, pair)", fontsize=10)
    _save(fig, out / file)
    return FigureResult(
        file, "Latent robustness against β, three measures, β-TCVAE (Fig. 5)",
        f"{_ROBUSTNESS_CAPTION} Healthy trials only; squares: VAE (β = 1) reference. Bands: {LOG_METHOD} for Δ "
        f"and budget_50, {T_METHOD} for the fraction left, over the (trial, pair) units (pairs, |z|, seeds).")


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return "–"
    a = abs(v)
    if a != 0 and (a >= 1e4 or a < 1e-2):
        return f"{v:.1e}"
    return f"{v:.3g}"


def _heatmap_norm(tables: Sequence[pd.DataFrame], log_scale: bool) -> Normalize | None:
    """One colour scale for the cells of ``tables`` (so the panels that share it compare):
    logarithmic for a log-scale metric or values spanning orders of magnitude."""
    vals = np.concatenate([t["mean"].to_numpy(dtype=float) for t in tables]) if tables else np.array([])
    vals = vals[np.isfinite(vals)]
    if not vals.size:
        return None
    lo, hi = float(vals.min()), float(vals.max())
    hi = hi if hi > lo else lo + (abs(lo) * 1e-6 or 1e-6)
    return LogNorm(vmin=lo, vmax=hi) if (log_scale and lo > 0) or _spans_orders(vals) else Normalize(lo, hi)


def _heatmap_panel(fig: Figure, ax, sub: pd.DataFrame, norm: Normalize | None, label: str) -> None:
    """One Fig. 6 panel: the (L, β) cells of ``sub`` (mean, lo, hi per cell), each printed with
    its interval, and a colour bar labelled ``label``."""
    if sub.empty:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
        ax.set_xticks([])
        ax.set_yticks([])
        return
    betas = sorted(sub["beta"].unique())
    layers = sorted(sub["layers"].unique())
    grid = np.full((len(layers), len(betas)), np.nan)
    text = {}
    for _, r in sub.iterrows():
        yi, xi = layers.index(r["layers"]), betas.index(r["beta"])
        grid[yi, xi] = r["mean"]
        text[(yi, xi)] = f"{_fmt(r['mean'])}\n[{_fmt(r['lo'])}, {_fmt(r['hi'])}]"
    im = ax.imshow(np.ma.masked_invalid(grid), origin="lower", aspect="auto", cmap="viridis", norm=norm)
    for (yi, xi), t in text.items():
        # dark text on the bright end of viridis, white on the dark end
        shade = norm(grid[yi, xi]) if norm is not None else 0.0
        ax.text(xi, yi, t, ha="center", va="center", fontsize=7,
                color="black" if np.ma.filled(shade, 0.0) > 0.6 else "white")
    ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
    ax.set_yticks(range(len(layers)), [str(int(L)) for L in layers])
    ax.set_xlabel("β (dimensionless)")
    ax.set_ylabel("L (stochastic layers)")
    cb = fig.colorbar(im, ax=ax)
    cb.set_label(label + (", log scale" if isinstance(norm, LogNorm) else ""), fontsize=8)


def _heatmap_models(attacks: pd.DataFrame) -> list[str]:
    if attacks.empty:
        raise SkipFigure("no attack results in attacks/")
    models = [m for m in ("tcdlgm", "seatbelt") if (attacks["model"] == m).any()]
    if not models:
        raise SkipFigure("no attack results of β-TCDLGM or Seatbelt-VAE (model 'tcdlgm' / 'seatbelt')")
    return models


def _heatmap(attacks, metric, mode, model, similarity, selected_only=False) -> pd.DataFrame:
    return agg.attack_heatmap(attacks, metric, mode, model, similarity.get(mode), selected_only,
                              l1_model="tcvae" if model == "seatbelt" else None)


def fig_attack_heatmaps(
    attacks: pd.DataFrame,
    metric: str,
    out: Path,
    similarity: dict[str, str | None],
    selected_only: bool = False,
    file: str | None = None,
) -> FigureResult:
    """Fig. 6: an attack metric over (β, L) for β-TCDLGM and Seatbelt-VAE (the Seatbelt L = 1
    row is β-TCVAE); rows: model × attack mode; columns: datasets."""
    spec = agg.METRICS[metric]
    suffix = "_selected" if selected_only and not spec.per_pair else ""
    file = file or f"fig6_{metric}{suffix}_heatmap.png"
    models = _heatmap_models(attacks)
    modes = _modes_with(attacks, metric)
    if not modes:
        raise SkipFigure(f"no latent or output attacks with {metric} in attacks/"
                         + ("" if metric == "objective" else f" ({NEW_COLUMNS_HINT})"))
    datasets = _datasets(attacks)
    panels = [(model, mode) for model in models for mode in modes]
    fig, axes = _new_figure(len(panels), len(datasets), w=5.2, h=3.9)
    tables = {(model, mode): _heatmap(attacks, metric, mode, model, similarity, selected_only)
              for model, mode in panels}
    norms = {(mode, dataset): _heatmap_norm([t.loc[t["dataset"] == dataset] for (_, md), t in tables.items()
                                             if md == mode], spec.log_scale)
             for mode in modes for dataset in datasets}  # shared by the models so they compare
    for i, (model, mode) in enumerate(panels):
        sim = similarity.get(mode)
        for j, dataset in enumerate(datasets):
            ax = axes[i][j]
            ax.set_title(f"{dataset}: {agg.model_label(model)}, {mode} ({sim})", fontsize=9)
            table = tables[(model, mode)]
            _heatmap_panel(fig, ax, table.loc[table["dataset"] == dataset], norms[(mode, dataset)],
                           _metric_axis_label(metric, mode, sim).removesuffix(", log scale"))
    mean = "geometric mean" if spec.log_scale else "mean"
    what = (f"{mean} over pairs" if spec.per_pair else
            f"{mean} over pairs at the selected λ" if selected_only else
            f"{mean} over pairs of each pair's mean over the positive λ")
    method = LOG_METHOD if spec.log_scale else T_METHOD
    _suptitle(fig, f"{spec.label} over β and L (Fig. 6); {what}; cells: {mean} [95% interval]", fontsize=10)
    _save(fig, out / file)
    return FigureResult(
        file,
        f"{spec.label} over β and L, β-TCDLGM and Seatbelt-VAE (Fig. 6)" + (", selected λ" if suffix else ""),
        f"{spec.label} per (β, L) cell, healthy trials only, {what} (and |z|, seeds). Each cell prints the "
        f"{mean} and its interval in brackets ({method}). Both models share one colour scale per attack mode "
        "and dataset. As in the paper, the L = 1 row of the Seatbelt-VAE heatmaps is the β-TCVAE data "
        "(Seatbelt-VAE with L = 1 is a β-TCVAE). Colour scale is logarithmic for Δ and where the values "
        "span orders of magnitude.",
    )


def fig_latent_robustness_heatmaps(
    attacks: pd.DataFrame,
    out: Path,
    similarity: dict[str, str | None],
    file: str = "fig6_latent_robustness_heatmap.png",
) -> FigureResult:
    """Fig. 6, latent attack: the paper's Δ, budget_50 and the fraction of the clean distance
    left, side by side, over (β, L) for β-TCDLGM and Seatbelt-VAE; rows: model × dataset."""
    models = _heatmap_models(attacks)
    metrics = _robustness_metrics(attacks, "Fig. 6")
    sim = similarity.get(LATENT)
    datasets = _datasets(attacks)
    panels = [(model, dataset) for model in models for dataset in datasets]
    fig, axes = _new_figure(len(panels), len(metrics), w=5.2, h=3.9)
    tables = {(model, metric): _heatmap(attacks, metric, LATENT, model, similarity)
              for model in models for metric in metrics}
    norms = {(metric, dataset): _heatmap_norm([tables[(m, metric)].loc[tables[(m, metric)]["dataset"] == dataset]
                                               for m in models], agg.METRICS[metric].log_scale)
             for metric in metrics for dataset in datasets}
    for i, (model, dataset) in enumerate(panels):
        for j, metric in enumerate(metrics):
            table = tables[(model, metric)]
            axes[i][j].set_title(f"{dataset}: {agg.model_label(model)}, {agg.METRICS[metric].label}", fontsize=8)
            _heatmap_panel(fig, axes[i][j], table.loc[table["dataset"] == dataset], norms[(metric, dataset)],
                           _metric_axis_label(metric, LATENT, sim).removesuffix(", log scale"))
    _suptitle(fig, f"Latent robustness over β and L, three measures (Fig. 6, {sim}); cells: mean [95% interval]",
              fontsize=10)
    _save(fig, out / file)
    return FigureResult(
        file, "Latent robustness over β and L, three measures, β-TCDLGM and Seatbelt-VAE (Fig. 6)",
        f"{_ROBUSTNESS_CAPTION} Healthy trials only; each cell prints the (geometric) mean over pairs and its interval "
        f"({LOG_METHOD} for Δ and budget_50, {T_METHOD} for the fraction left); one colour scale per measure and "
        "dataset, shared by the models. The L = 1 row of the Seatbelt-VAE panels is the β-TCVAE data, as in Fig. 6.")


def _density(ax, vals: np.ndarray, color, label: str, rng: np.random.Generator) -> None:
    """A Gaussian-kernel density of ``vals`` (at most 20,000 of them), or a histogram where the
    kernel cannot be fitted (fewer than three values, all equal, a singular covariance)."""
    from scipy.stats import gaussian_kde  # noqa: PLC0415  (scipy.stats is already imported by stats)

    kde_vals = vals if vals.size <= 20000 else rng.choice(vals, 20000, replace=False)
    try:
        if kde_vals.size < 3 or np.ptp(kde_vals) == 0:
            raise np.linalg.LinAlgError("degenerate")
        kde = gaussian_kde(kde_vals)
        pad = 0.1 * np.ptp(kde_vals)
        xs = np.linspace(kde_vals.min() - pad, kde_vals.max() + pad, 256)
        ax.plot(xs, kde(xs), color=color, label=label)
    except (np.linalg.LinAlgError, ValueError):
        ax.hist(vals, bins=30, density=True, histtype="step", color=color, label=label)


def _noise_panel(ax, sub: pd.DataFrame, title: str, model: str, sigma: float, cmap,
                 rng: np.random.Generator) -> None:
    """One Fig. 7 panel: a density per β of log p(x|z) for one (dataset, model) at its largest L,
    with the mean and its interval."""
    if sub.empty:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
        ax.set_title(title, fontsize=9)
        return
    L = int(sub["layers"].max())
    sub = sub.loc[sub["layers"] == L]
    betas = sorted(sub["beta"].unique())
    for k, beta in enumerate(betas):
        vals = sub.loc[sub["beta"] == beta, "loglik"].to_numpy(dtype=float)
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            continue
        color = cmap(k / max(1, len(betas) - 1))
        iv = t_interval(vals)
        _density(ax, vals, color, f"β={beta:g} (mean {_fmt(iv.estimate)})", rng)
        ax.axvline(iv.estimate, color=color, linestyle=":", linewidth=1)
        if np.isfinite(iv.lo):
            ax.axvspan(iv.lo, iv.hi, color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel(f"log p(x|z), z ~ q(z|x+ε), σ={sigma:g} (nats)")
    ax.set_ylabel("density (per nat)")
    ax.set_title(f"{title}{_layers_text(model, L, ', ')}", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)


def fig_noise(noise: pd.DataFrame, out: Path, file: str = "fig7_noise_loglik.png") -> FigureResult:
    """Fig. 7: smoothed densities of log p(x|z), z ~ q(z | x + ε), per model and β."""
    sigma = agg.noise_sigma(noise)
    if sigma is None:
        raise SkipFigure("no noise-robustness samples in noise/")
    data = noise.loc[np.isclose(noise["sigma"].astype(float), sigma)]
    datasets = _datasets(data)
    models = sorted(data["model"].unique(), key=agg.model_sort_key)
    fig, axes = _new_figure(len(datasets), len(models), w=4.4, h=3.2)
    import matplotlib as mpl

    cmap = mpl.colormaps["viridis"]
    rng = np.random.default_rng(0)
    for i, dataset in enumerate(datasets):
        for j, model in enumerate(models):
            sub = data.loc[(data["dataset"] == dataset) & (data["model"] == model)]
            _noise_panel(axes[i][j], sub, f"{dataset}: {agg.model_label(model)}", model, sigma, cmap, rng)
    _suptitle(fig, f"Robustness of log p(x|z) to input noise ε ~ N(0, σ²I), σ={sigma:g} (Fig. 7); "
                 f"dotted line + band: mean and {T_METHOD}", fontsize=10)
    _save(fig, out / file)
    return FigureResult(
        file, "Noise robustness (Fig. 7)",
        f"Gaussian-kernel density of log p(x|z) of the clean image with z ~ q(z | x + ε), ε ~ N(0, σ²I) on "
        f"the [-1, 1] encoder input, σ = {sigma:g}, per model and β (pooled over samples, |z| and seeds; the "
        f"largest L of each hierarchical model). Dotted line and band: mean and {T_METHOD} over samples. "
        "Higher (further right) is more robust; x-axes differ between panels.",
    )


def fig_weight_norms(train: pd.DataFrame, out: Path, file: str = "table1_weight_norms.png") -> FigureResult:
    """Table 1 as a figure: relative change of encoder/decoder L2 norm against β, per model."""
    ok = agg.ok_trials(train)
    if ok.empty or not {"encoder_l2", "decoder_l2"} <= set(ok.columns):
        raise SkipFigure("no finished trial with encoder_l2 / decoder_l2 in train/")
    datasets = _datasets(ok)
    fig, axes = _new_figure(2, len(datasets))
    drew = False
    for j, dataset in enumerate(datasets):
        for i, part in enumerate(("encoder_l2", "decoder_l2")):
            ax = axes[i][j]
            sub = ok.loc[ok["dataset"] == dataset]
            for (model, L), grp in sorted(sub.groupby(["model", "layers"]),
                                          key=lambda kv: (agg.model_sort_key(kv[0][0]), kv[0][1])):
                vals = pd.to_numeric(grp[part], errors="coerce")
                bmin = grp["beta"].min()
                base = vals[grp["beta"] == bmin].mean()
                if not np.isfinite(base) or base == 0 or grp["beta"].nunique() < 2:
                    continue
                rel = grp[["beta"]].copy()
                rel["rel"] = 100.0 * (vals / base - 1.0)
                table = summarize(rel, ["beta"], "rel")
                Ltxt = _layers_text(model, L)
                ls = "-" if int(L) == int(sub.loc[sub["model"] == model, "layers"].max()) else ":"
                _line_band(ax, table["beta"], table["mean"], table["lo"], table["hi"],
                           label=f"{agg.model_label(model)}{Ltxt}", color=_color(model), linestyle=ls)
                drew = True
            ax.axhline(0, color="black", linewidth=0.6)
            _beta_axis(ax, sub["beta"])
            ax.set_ylabel(f"{'encoder' if i == 0 else 'decoder'} L2 norm change vs smallest β (%)")
            ax.set_title(f"{dataset}: {'encoder' if i == 0 else 'decoder'} weights", fontsize=10)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    if not drew:
        raise SkipFigure("weight norms need at least two β values of one model in train/")
    _suptitle(fig, f"L2 norm of weights relative to the smallest β (Table 1); band: {T_METHOD} over trials",
                 fontsize=10)
    _save(fig, out / file)
    return FigureResult(
        file, "Weight norms against β (Table 1)",
        "Relative change (%) of the L2 norm of encoder and decoder weights against β, relative to the mean "
        f"at the smallest β of the same model and L. Band: {T_METHOD} over trials (|z|, seeds).",
    )


def _show_image(ax, img) -> None:
    """One uint8 H×W×C picture in an axis without ticks ("missing" when None)."""
    ax.set_xticks([])
    ax.set_yticks([])
    if img is None:
        ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes, fontsize=7)
    elif img.shape[2] == 1:
        ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(img[:, :, :3], interpolation="nearest")


def _unmoved(row) -> bool:
    """Whether the paper's rule picked, for this gallery row's pair, an attack that left the input
    unmoved (``paper_lam_unmoved``; null in galleries written before the column existed)."""
    value = row.get("paper_lam_unmoved") if hasattr(row, "get") else None
    return False if value is None or pd.isna(value) else bool(value)


def _gallery_rows(gallery: pd.DataFrame, similarity: str | None, pairs_per_model: int) -> list:
    """The rows Fig. 1 shows: a few pairs of each (dataset, model)'s most regularised trial."""
    rows = gallery.loc[gallery["mode"] == LATENT] if (gallery["mode"] == LATENT).any() else gallery
    if similarity is not None and (rows["similarity"] == similarity).any():
        rows = rows.loc[rows["similarity"] == similarity]
    chosen = []
    for (dataset, model), grp in sorted(rows.groupby(["dataset", "model"]),
                                        key=lambda kv: (kv[0][0], agg.model_sort_key(kv[0][1]))):
        best = grp.sort_values(["beta", "layers", "z_dim", "seed"], ascending=[False, False, True, True])
        trial = best.iloc[0]["trial_id"]
        picks = best.loc[best["trial_id"] == trial].sort_values("pair").head(pairs_per_model)
        chosen.extend(r for _, r in picks.iterrows())
    return chosen


def _unmoved_note(r) -> str:
    return (f"{r['dataset']} {agg.model_label(r['model'])} β={float(r['beta']):g}"
            f"{_layers_text(r['model'], r['layers'])} pair {int(r['pair'])}: the paper's rule picked "
            f"λ = {float(r['paper_lam']):.3g} with no distortion (the d = 0 plateau); the picture shows the rule's "
            f"choice among the λ that moved the input, λ = {float(r['lam']):.3g}.")


def fig_gallery(
    gallery: pd.DataFrame,
    out: Path,
    similarity: str | None = None,
    pairs_per_model: int = 2,
    file: str = "fig1_gallery.png",
) -> FigureResult:
    """Fig. 1: input, reconstruction, adversarial input, distortion, adversarial reconstruction
    and target at the selected λ, for a few pairs of the most robust setting of each model. A
    row whose pair's paper-rule λ left the input unmoved (``paper_lam_unmoved``) shows the
    rule's pick among the λ that moved it, marked * and named in its label and the caption."""
    if gallery.empty:
        raise SkipFigure("no attack images in gallery/")
    chosen = _gallery_rows(gallery, similarity, pairs_per_model)
    if not chosen:
        raise SkipFigure("no gallery rows")
    names = ["input", "reconstruction", "adversarial", "distortion (normalised)",
             "adversarial reconstruction", "target"]
    fig, axes = _new_figure(len(chosen), 6, w=1.45, h=1.6)
    for i, r in enumerate(chosen):
        for j, (col, img) in enumerate(iter_gallery_images(r)):
            ax = axes[i][j]
            _show_image(ax, img)
            if i == 0:
                ax.set_title(names[j], fontsize=7)
        Ltxt = _layers_text(r["model"], r["layers"])
        lam = f"λ={float(r['lam']):.2g}" + (f"*\n(rule: λ={float(r['paper_lam']):.2g}, d=0)" if _unmoved(r) else "")
        axes[i][0].set_ylabel(f"{r['dataset']}\n{agg.model_label(r['model'])}\nβ={float(r['beta']):g}{Ltxt}\n"
                              f"pair {int(r['pair'])}, {lam}", fontsize=6)
    unmoved = [_unmoved_note(r) for r in chosen if _unmoved(r)]
    _suptitle(fig, f"{chosen[0]['mode']} attacks at the selected λ (Fig. 1)"
                   + ("; *: the paper's rule left the input unmoved, shown: its pick among the λ that moved it"
                      if unmoved else ""), fontsize=9)
    _save(fig, out / file)
    assert len(GALLERY_IMAGE_COLUMNS) == 6
    return FigureResult(
        file, "Attack gallery (Fig. 1)",
        "For a few input–target pairs of each model's most regularised trial (largest β, then L): the input, "
        "its reconstruction, the adversarial input, the distortion (normalised to [0, 255]), the adversarial "
        "input's reconstruction and the target, at the λ the attack step selected for the pair. Pixels in [0, 1] "
        "shown as 0–255." + (" Rows marked *: " + " ".join(unmoved) if unmoved else ""),
    )


_SETTING = ["dataset", "model", "beta", "layers", "z_dim"]   # a row of Fig. 0; its seeds sit side by side


def _number_key(value) -> tuple[bool, float]:
    """Sorts numbers ascending, missing ones last."""
    v = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    return (bool(pd.isna(v)), 0.0 if pd.isna(v) else float(v))


def _setting_label(r, vary: set[str]) -> str:
    text = f"{agg.model_label(r['model'])}\nβ={float(r['beta']):g}{_layers_text(r['model'], r['layers'])}"
    if "z_dim" in vary:
        text += f" |z|={int(r['z_dim'])}"
    return f"{r['dataset']}\n{text}" if "dataset" in vary else text


def _recon_block(axes_row, start: int, rows: pd.DataFrame, pairs: list, first: bool, seed) -> None:
    """One seed's block of a Fig. 0 row: input and reconstruction of each of ``pairs``."""
    for k, pair in enumerate(pairs):
        match = rows.loc[rows["pair"] == pair]
        images = dict(iter_gallery_images(match.iloc[0])) if not match.empty else {}
        for j, panel in enumerate(("input", "reconstruction")):
            ax = axes_row[start + 2 * k + j]
            _show_image(ax, images.get(panel) if images else None)
            if first:
                ax.set_title(f"seed {seed}\npair {int(pair)}: {panel}" if k == j == 0 else f"pair {int(pair)}: {panel}",
                             fontsize=7)


def fig_reconstructions(
    gallery: pd.DataFrame,
    health: pd.DataFrame,
    out: Path,
    file: str = "fig0_reconstructions.png",
    max_seeds: int = 6,
) -> FigureResult:
    """Every trial's reconstructions of the first input–target pairs' inputs, healthy or not,
    labelled with its training health: the check, by eye, that each model learned (a model on
    the mean-image plateau reconstructs every input as the same blur). One row per setting
    (dataset, kind, β, L, |z|), its seeds side by side (two pairs each up to three seeds, then
    one), so a 48-trial grid is 16 rows."""
    if gallery.empty:
        raise SkipFigure("no attack images in gallery/")
    verdicts = health.set_index("trial_id")["health"].astype(str).to_dict() if not health.empty else {}
    gallery = gallery.drop_duplicates(subset=["trial_id", "pair"])
    seeds = sorted(gallery["seed"].dropna().unique())[:max_seeds]
    pairs = sorted(gallery["pair"].unique())[:2 if len(seeds) <= 3 else 1]
    settings = sorted(gallery.groupby(_SETTING, dropna=False), key=lambda kv: (
        str(kv[0][0]), agg.model_sort_key(kv[0][1]), *(_number_key(v) for v in kv[0][2:])))
    vary = {c for c in ("dataset", "z_dim") if gallery[c].nunique() > 1}
    block = 2 * len(pairs)
    fig, axes = _new_figure(len(settings), block * len(seeds), w=1.3, h=1.45)
    for i, (_, rows) in enumerate(settings):
        for s, seed in enumerate(seeds):
            mine = rows.loc[rows["seed"] == seed]
            _recon_block(axes[i], s * block, mine, pairs, i == 0, int(seed))
            if mine.empty:
                axes[i][s * block].set_xlabel("no trial", fontsize=6)
                continue
            verdict = verdicts.get(str(mine.iloc[0]["trial_id"]), "unknown")
            axes[i][s * block].set_xlabel(f"s{int(seed)}: {verdict}", fontsize=6,
                                          color="#126b12" if verdict == agg.HEALTHY else "#a11")
        axes[i][0].set_ylabel(_setting_label(rows.iloc[0], vary), fontsize=6)
    shown, total = gallery["trial_id"].nunique(), gallery.attrs.get("trials_total", gallery["trial_id"].nunique())
    _suptitle(fig, "Reconstructions of every trial, one row per setting, seeds side by side, with training health",
              fontsize=9)
    _save(fig, out / file)
    return FigureResult(
        file, "Reconstructions and training health",
        f"Held-out inputs (the first input–target pairs' inputs) and their reconstructions (decoder mean at the "
        f"deterministic encoding), for {shown} of {total} attacked trials in {len(settings)} settings: one row per "
        "setting (model kind, β, L), its seeds side by side; the label under each seed gives that trial's health "
        "(sweep.train.health; red: not healthy). A model on the mean-image plateau draws the same blur for every "
        "input. Unhealthy trials appear only here and in the Training health table.",
    )


def fig_thesis(trials: pd.DataFrame, correlations: pd.DataFrame, out: Path,
               file: str = "fig8_robustness_vs_disentanglement.png", similarity: str | None = None) -> FigureResult:
    """Beyond the paper: each healthy trial's latent-attack robustness against its MIG and its
    total correlation, with Spearman's ρ pooled and within each β. ``similarity``: the latent
    attack's (its unit labels the Δ axis; None: the default similarity's)."""
    from analysis.thesis import SCORES

    if trials.empty or "log_delta" not in trials.columns:
        raise SkipFigure("no healthy trial with both latent attacks and disentanglement scores")
    scores = [s for s in SCORES if s in trials.columns and pd.to_numeric(trials[s], errors="coerce").notna().any()]
    if not scores:
        raise SkipFigure("no MIG or TC in train/ (MIG needs ground-truth factors)")
    datasets = _datasets(trials)
    fig, axes = _new_figure(len(datasets), len(scores), w=4.8, h=3.8)
    markers = "osD^v<>ph*"
    betas = sorted(trials["beta"].dropna().unique())
    for i, dataset in enumerate(datasets):
        data = trials.loc[trials["dataset"] == dataset]
        for j, score in enumerate(scores):
            ax = axes[i][j]
            for model in sorted(data["model"].unique(), key=agg.model_sort_key):
                for k, beta in enumerate(betas):
                    sub = data.loc[(data["model"] == model) & (data["beta"] == beta)]
                    if sub.empty:
                        continue
                    ax.scatter(pd.to_numeric(sub[score], errors="coerce"), np.exp(sub["log_delta"]),
                               color=_color(model), marker=markers[k % len(markers)], s=28, alpha=0.85,
                               label=f"{agg.model_label(model)} β={beta:g}")
            ax.set_yscale("log")
            ax.set_xlabel(f"{SCORES[score]} ({'unitless' if score == 'mig' else 'nats'})")
            ax.set_ylabel(f"Δ_{LATENT} ({agg.objective_unit(LATENT, similarity)}, log scale)")
            rows = correlations.loc[(correlations["dataset"] == dataset) & (correlations["score"] == score)]
            lines = [f"{'pooled' if r.beta == 'pooled' else 'β=' + r.beta}: ρ={_fmt(r.rho)} [{_fmt(r.lo)}, {_fmt(r.hi)}]"
                     for r in rows.itertuples()]
            ax.text(0.02, 0.98, "\n".join(lines), transform=ax.transAxes, va="top", fontsize=6,
                    bbox=dict(facecolor="white", alpha=0.7, linewidth=0))
            ax.set_title(f"{dataset}: robustness against {SCORES[score]}", fontsize=9)
            ax.grid(True, alpha=0.3)
            if j == len(scores) - 1:
                ax.legend(fontsize=5, loc="lower right", ncol=2)
    _suptitle(fig, "Latent-attack robustness against disentanglement, healthy trials (beyond the paper)", fontsize=10)
    _save(fig, out / file)
    return FigureResult(
        file, "Robustness against disentanglement (beyond the paper)",
        "Each healthy trial: the geometric mean over its input–target pairs of the pair's mean Δ_latent over the "
        "positive λ, against its MIG and its total correlation (the top layer's, MSS estimate on held-out images). "
        "Colour: model kind; marker: β. In each panel, Spearman's ρ pooled over the grid and within each β with its "
        "95% interval (Fisher z, Bonett–Wright standard error).",
    )
