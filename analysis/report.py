"""The sweep's report: PNG figures, tables and a self-contained ``index.html``.

    python -m analysis.report --out DIR [--tracking-uri URI] [--no-mlflow]

writes ``DIR/report/`` (figures, CSV tables, ``index.html`` with relative image links and no
external resources) and logs the folder as artifacts (under ``report/``) of the sweep's parent
MLflow run named in ``DIR/tracking.json``. The sweep calls :func:`build_report` at its end.

The report is built in a temporary folder next to ``report/`` and moved into place with renames,
so a crash never leaves a half-written ``index.html`` (nor an index that links missing images).
Partial results (a sweep still running, failed trials, a model kind missing, no attacks yet)
give a report that says what is missing.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import aggregate as agg
from analysis import claims as cl
from analysis import figures as figs
from analysis import sanity, thesis
from analysis.errors import AnalysisError, AnalysisWarning
from analysis.load import (
    GALLERY_COLUMNS,
    GALLERY_IMAGE_COLUMNS,
    TRAIN_ELBO,
    load_attacks,
    load_gallery,
    load_noise,
    load_train,
    read_sweep_config,
    read_tracking,
    results_dir,
)
from analysis.stats import LOG_METHOD, T_METHOD
from results import kinds, records
from results.schema import TRIAL_FIELDS
from results.store import Store
from results.vocabulary import LATENT, MODES, OUTPUT

__all__ = ["build_report", "log_report_to_mlflow", "main"]

REPORT_ATTACK_COLUMNS = [
    *TRIAL_FIELDS, "mode", "similarity", "pair",
    "lam", "objective", "distortion_l2", "adv_target_l2", "target_nll", "selected", "auddc", "auddc_reason",
    # issue 23's columns (null in older attack files: what reads them says so and skips)
    "distance", "objective_se", "delta_minimised", "delta_clean", "worse_than_clean", "budget_50", "budget_90",
    "iterations",   # the sanity table's share stopped at maxiter
]
NOISE_READ_COLUMNS = [*TRIAL_FIELDS, "sigma", "sample", "loglik"]


@dataclass
class _Content:
    figures: list[figs.FigureResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what is missing / skipped
    tables: list[tuple[str, str, str]] = field(default_factory=list)  # (title, caption, html)
    files: list[str] = field(default_factory=list)  # extra files (CSV) in the report folder


def build_report(out_dir: str | Path, tracking_uri: str | None = None,
                 log_to_mlflow: bool = True) -> Path | Store:
    """Write ``out_dir/report/`` and return its path (``index.html`` is inside).

    ``log_to_mlflow``: log the folder as artifacts of the parent run in ``tracking.json``
    (``tracking_uri`` overrides the URI stored there). Without ``tracking.json`` the logging is
    skipped with an :class:`AnalysisWarning`; a failure to reach MLflow raises
    :class:`AnalysisError` after the report is written.

    A remote results folder (``s3://...``) is read in place; the report is built in a local
    temporary folder and uploaded to ``out_dir/report/`` (``index.html`` last, so it never links
    a missing figure), then logged to MLflow from the local copy.
    """
    out = results_dir(out_dir)
    if not out.is_local:
        return _build_remote(out, tracking_uri, log_to_mlflow)
    final = Path(out.root) / "report"
    tmp = Path(tempfile.mkdtemp(prefix=".report-tmp-", dir=out.root))
    try:
        _render(out, tmp)
        _install(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if log_to_mlflow:
        log_report_to_mlflow(out, final, tracking_uri)
    return final


def _build_remote(out: Store, tracking_uri: str | None, log_to_mlflow: bool) -> Store:
    final = out.sub("report")
    tmp = Path(tempfile.mkdtemp(prefix="seatbelt-report-"))
    try:
        _render(out, tmp)
        _upload(tmp, final)
        if log_to_mlflow:
            log_report_to_mlflow(out, tmp, tracking_uri)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _upload(local: Path, final: Store) -> None:
    """Copy the finished report to the store: figures and tables first, ``index.html`` last,
    then remove files of an older report that the new one no longer has. Each object appears
    whole when its upload completes, so a reader sees the old or the new version of a file."""
    names = sorted(p.name for p in local.iterdir() if p.is_file())
    names.sort(key=lambda name: name == "index.html")
    try:
        old = set(final.list_files(""))
        for name in names:
            final.write_bytes(name, (local / name).read_bytes())
        for name in sorted(old - set(names)):
            final.delete(name)
    except OSError as exc:
        raise AnalysisError(f"writing the report to {final} failed: {exc}. Check the store's "
                            "credentials and endpoint (AWS_ENDPOINT_URL)") from exc


def _install(tmp: Path, final: Path) -> None:
    """Move the finished folder into place: the old report is renamed away first, so at every
    moment ``report/`` is either the complete old report, absent, or the complete new one."""
    os.chmod(tmp, 0o755)
    old = None
    if final.exists():
        old = final.with_name(f".report-old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def log_report_to_mlflow(out_dir: str | Path, report_dir: str | Path, tracking_uri: str | None = None) -> str | None:
    """Log ``report_dir`` as artifacts (under ``report/``) of the sweep's parent run; return the
    run id, or None (with a warning) when ``tracking.json`` is absent."""
    tracking = read_tracking(out_dir)
    if not tracking or not tracking.get("parent_run_id"):
        warnings.warn(
            f"not logged to MLflow: {str(out_dir).rstrip('/')}/tracking.json is missing or names no parent run "
            "(the sweep writes it when it starts); pass --no-mlflow to skip logging",
            AnalysisWarning, stacklevel=2,
        )
        return None
    uri = records.tracking_uri(tracking_uri, tracking)
    run_id = str(tracking["parent_run_id"])
    try:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException
    except ImportError as exc:  # pragma: no cover - mlflow is a dependency
        raise AnalysisError("mlflow is not installed: pip install mlflow, or pass --no-mlflow") from exc
    try:
        client = MlflowClient(tracking_uri=uri)
        client.get_run(run_id)
        client.log_artifacts(run_id, str(report_dir), artifact_path="report")
    except MlflowException as exc:
        raise AnalysisError(
            f"the report was written to {report_dir}, but logging it to MLflow run {run_id} at "
            f"{uri} failed: {str(exc).splitlines()[0]}. Check --tracking-uri (and that the server "
            "is up), or pass --no-mlflow"
        ) from exc
    except OSError as exc:
        raise AnalysisError(
            f"the report was written to {report_dir}, but copying it to the artifact store of run "
            f"{run_id} failed: {exc}. Check the artifact location, or pass --no-mlflow"
        ) from exc
    return run_id


# ---------------------------------------------------------------------------------------------


def _safe_json(out: Store, reader, what: str, notes: list[str]) -> dict | None:
    try:
        data = reader(out)
    except AnalysisError as exc:
        notes.append(str(exc))
        return None
    if data is None:
        notes.append(f"{what} is missing from the results folder.")
    return data


def _skipped(df: pd.DataFrame, folder: str, notes: list[str]) -> None:
    for path, why in df.attrs.get("skipped_files", []):
        notes.append(f"Skipped unreadable file in {folder}/: {path} ({why}). Delete it and re-run the sweep "
                     "step that writes it.")


@dataclass
class _Frames:
    """What the report reads: every trial's rows, and the healthy trials' (``*_h``) that every
    figure and claim uses (the claims also get the others, to say why they are missing)."""

    train: pd.DataFrame
    attacks: pd.DataFrame
    noise: pd.DataFrame
    gallery_meta: pd.DataFrame
    excluded: pd.DataFrame
    train_h: pd.DataFrame
    attacks_h: pd.DataFrame
    noise_h: pd.DataFrame
    gallery_h: pd.DataFrame
    similarity: dict[str, str | None]


def _read(out: Store, c: _Content, config) -> tuple[_Frames, str]:
    """Load every folder (noting skipped files), the status section, the health section, and the
    healthy trials' frames; returns the frames and the status text."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)  # the notes below list the skipped files
        train = load_train(out)
        attacks = load_attacks(out, columns=REPORT_ATTACK_COLUMNS)
        noise = load_noise(out, columns=NOISE_READ_COLUMNS)
        gallery_meta = load_gallery(out, columns=[c for c in GALLERY_COLUMNS if c not in GALLERY_IMAGE_COLUMNS])
    for df, folder in ((train, "train"), (attacks, "attacks"), (noise, "noise"), (gallery_meta, "gallery")):
        _skipped(df, folder, c.notes)
    train = _normalise_train(train, c.notes)
    attacks = agg.with_clean_left(attacks)
    status = _status_section(config, train, attacks, noise, gallery_meta, c)
    excluded = agg.left_out(train, attacks, noise, gallery_meta)
    _health_section(train, excluded, c)
    # no conclusion from a model that did not learn
    attacks_h = agg.keep_healthy(attacks, train)
    frames = _Frames(train, attacks, noise, gallery_meta, excluded, agg.keep_healthy(train, train), attacks_h,
                     agg.keep_healthy(noise, train), agg.keep_healthy(gallery_meta, train),
                     {m: agg.default_similarity(attacks_h, m) for m in MODES})
    if "selected" in attacks_h.columns and len(attacks_h) and \
            not attacks_h["selected"].fillna(False).astype(bool).any():
        c.notes.append("No attack row is marked selected: the selected-λ variants are empty.")
    _auddc_notes(attacks_h, c.notes)
    return frames, status


def _render(out: Store, dest: Path) -> None:
    c = _Content()
    config = _safe_json(out, read_sweep_config, "sweep.json (the resolved config)", c.notes)
    tracking = _safe_json(out, read_tracking, "tracking.json (MLflow run ids)", c.notes)
    f, status = _read(out, c, config)
    similarity = f.similarity

    def draw(fn, *args, **kwargs):
        try:
            c.figures.append(fn(*args, **kwargs))
        except figs.SkipFigure as exc:
            c.notes.append(f"Figure skipped ({fn.__name__.removeprefix('fig_')}"
                           f"{' ' + args[1] if fn.__name__.startswith('fig_attack') else ''}): {exc}.")

    _draw_figures(out, dest, f, c, draw)
    _claims_section(f, dest, c)
    _sanity_section(f.attacks, c, _attack_maxiter(config))
    _thesis_section(f.attacks_h, f.train_h, similarity.get(LATENT), dest, c, draw)
    norms = agg.weight_norm_table(f.train_h)
    if not norms.empty:
        norms.to_csv(dest / "weight_norms.csv", index=False)
        c.files.append("weight_norms.csv")
        c.tables.append(("Weight norms (Table 1)", _norm_caption(), _norm_html(norms)))
    else:
        c.notes.append("Weight-norm table skipped: it needs healthy trials at two or more β values of a model.")
    elbo = agg.elbo_by_beta(f.train_h)
    if not elbo.empty:
        elbo.to_csv(dest / "elbo_by_beta.csv", index=False)
        c.files.append("elbo_by_beta.csv")
    if not f.attacks_h.empty:
        summ = _attack_summary(f.attacks_h, similarity)
        summ.to_csv(dest / "attack_summary.csv", index=False)
        c.files.append("attack_summary.csv")

    page = _page(out, config, tracking, status, c)
    (dest / "index.html").write_text(page, encoding="utf-8")


def _draw_figures(out: Store, dest: Path, f: _Frames, c: _Content, draw) -> None:
    similarity, attacks = f.similarity, f.attacks_h
    # Fig. 1: gallery (images loaded only for the rows shown)
    if not f.gallery_h.empty:
        gallery = _load_gallery_for_figure(out, f.gallery_h, similarity.get(LATENT))
        draw(figs.fig_gallery, gallery, dest, similarity.get(LATENT))
    else:
        c.notes.append("Figure skipped (gallery, Fig. 1): no attack images of a healthy trial in gallery/ yet.")
    if not f.gallery_meta.empty:
        draw(figs.fig_reconstructions, _load_reconstructions(out, f.gallery_meta, f.excluded),
             agg.trial_health(f.train), dest)
    draw(figs.fig_elbo, f.train_h, dest)
    for metric in ("objective", "adv_target_l2", "target_nll", "auddc"):
        draw(figs.fig_attack_vs_beta, attacks, metric, dest, similarity)
    draw(figs.fig_latent_robustness_vs_beta, attacks, dest, similarity)
    for metric, sel in (("objective", False), ("objective", True), ("adv_target_l2", False),
                        ("target_nll", False), ("auddc", False)):
        draw(figs.fig_attack_heatmaps, attacks, metric, dest, similarity, sel)
    draw(figs.fig_latent_robustness_heatmaps, attacks, dest, similarity)
    draw(figs.fig_noise, f.noise_h, dest)
    draw(figs.fig_weight_norms, f.train_h, dest)


def _claims_section(f: _Frames, dest: Path, c: _Content) -> None:
    """The claims table (first on the page), its CSV, and in words where the paper's Δ and
    budget_50 disagree on a latent claim."""
    claims = cl.claims_table(f.attacks, f.train, f.noise, f.similarity)
    if claims.empty:
        c.notes.append("Claims table skipped: no finished trial yet.")
        return
    claims.to_csv(dest / "claims.csv", index=False)
    c.files.append("claims.csv")
    words = "".join(f"<p>{html.escape(s)}</p>" for s in cl.measure_findings(claims))
    c.tables.insert(0, ("The paper's claims on this sweep's data", _claims_caption(f.similarity),
                        words + _claims_html(claims)))


def _attack_maxiter(config: dict | None) -> int | None:
    """The sweep's attack iteration limit from ``sweep.json``, None if it does not say."""
    value = ((config or {}).get("attack") or {}).get("maxiter")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _sanity_section(attacks: pd.DataFrame, c: _Content, maxiter: int | None = None) -> None:
    """The attack-path sanity table (``analysis.sanity``), right after the claims, on every
    attacked trial: a solver that stopped short shows on any model, healthy or not."""
    table = sanity.attack_sanity(attacks, maxiter)
    if table.empty:
        return
    words = sanity.findings(table)
    for r in table.loc[table["below_bar"].astype(bool)].itertuples():
        c.notes.append(f"Attack sanity: the {r.mode} attack passes the path check at only {100 * r.passing_share:.1f}% "
                       f"of its λ-points, below the {100 * sanity.PASS_BAR:g}% bar (see the Attack sanity table).")
    rows = "".join(
        f"<tr><td>{html.escape(str(r.mode))}</td><td>{r.pairs}</td><td>{r.lam_points}</td><td>{r.passing}</td>"
        f"<td class='{'bad' if r.below_bar else 'ok'}'>{100 * r.passing_share:.1f}%</td>"
        f"<td>{'–' if not np.isfinite(r.worse_than_clean) else int(r.worse_than_clean)}</td>"
        f"<td>{_num(r.objective_over_minimised)}</td><td>{r.clean_fallback}</td>"
        f"<td>{'–' if not np.isfinite(r.at_maxiter) else f'{100 * r.at_maxiter:.2f}%'}</td></tr>"
        for r in table.itertuples())
    body = ("".join(f"<p>{html.escape(s)}</p>" for s in words)
            + "<table><tr><th>mode</th><th>pairs</th><th>λ-points</th><th>passing</th><th>share</th>"
            "<th>flagged worse than clean</th><th>median reported Δ / solver's Δ</th>"
            f"<th>checked against Δ at the largest λ</th><th>stopped at maxiter</th></tr>{rows}</table>")
    c.tables.insert(1 if c.tables and c.tables[0][0].startswith("The paper") else 0,
                    ("Attack sanity", _sanity_caption(), body))


def _sanity_caption() -> str:
    return ("Every attacked trial, healthy or not. For each (trial, mode, similarity, pair), Δ*(λ) = min_d f(d) + "
            "λ‖d‖ can never exceed the no-attack value f(0) (delta_clean) and never falls as λ grows. A λ-point "
            f"passes when its Δ is at most {1 + sanity.SLACK:g} × delta_clean and at least {1 - sanity.SLACK:g} × "
            "the largest Δ of the pair at a smaller λ. 'Flagged worse than clean': rows the attack step marked "
            "worse_than_clean (Δ above delta_clean + 3 Monte-Carlo standard errors). Median reported Δ / solver's "
            "Δ (output attack): the Δ on fresh noise draws over the Δ on the draws the solver minimised; above 1, "
            "the distortion is tuned to the solver's own draws. Stopped at maxiter: attacks that hit the sweep's "
            "iteration limit (attack.maxiter) instead of a tolerance; their Δ is an upper bound on the minimum.")


def _normalise_train(train: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Tolerate older/partial train files: no status column means every row is ok; no reason
    column means empty reasons; missing grid columns come back null."""
    if train.empty and not len(train.columns):
        return train
    train = train.copy()
    if "status" not in train.columns:
        notes.append("train/ has no status column: every trial is taken as ok.")
        train["status"] = "ok"
    train["status"] = train["status"].astype("object").where(train["status"].notna(), "unknown").astype(str)
    if "reason" not in train.columns:
        train["reason"] = ""
    train["reason"] = train["reason"].astype("object").where(train["reason"].notna(), "")
    for col in TRIAL_FIELDS:
        if col not in train.columns:
            train[col] = None
    return train


def _thesis_section(attacks: pd.DataFrame, train: pd.DataFrame, similarity: str | None, dest: Path,
                    c: _Content, draw) -> None:
    """Beyond the paper: the rank correlation of log Δ_latent with MIG and TC, its figure, and
    what it finds in words (``analysis.thesis``)."""
    table = thesis.rank_correlations(attacks, train, similarity)
    if table.empty:
        c.notes.append("Robustness-against-disentanglement analysis skipped: no healthy trial with latent attacks.")
        return
    table.to_csv(dest / "robustness_vs_disentanglement.csv", index=False)
    c.files.append("robustness_vs_disentanglement.csv")
    trials = agg.ok_trials(train).merge(thesis.trial_robustness(attacks, similarity), on="trial_id")
    draw(figs.fig_thesis, trials, table, dest, similarity=similarity)
    rows = "".join(
        f"<tr><td>{html.escape(str(r.dataset))}</td><td>{html.escape(thesis.SCORES[r.score])}</td>"
        f"<td>{html.escape(str(r.beta))}</td><td>{_num(r.rho)} [{_num(r.lo)}, {_num(r.hi)}]</td><td>{int(r.trials)}</td></tr>"
        for r in table.itertuples())
    finding = "".join(f"<p>{html.escape(text)}</p>" for text in thesis.findings(table))
    c.tables.append((
        "Does disentangling go with robustness? (beyond the paper)",
        "The paper varies β and reads robustness off it; this reads the link itself. Spearman's ρ across healthy "
        "trials between log Δ_latent (geometric mean over the trial's pairs of each pair's mean Δ over the positive "
        "λ) and MIG or the total correlation, pooled over the grid and within each β (β fixed). 95% interval: "
        "Fisher z with the Bonett–Wright standard error.",
        f"{finding}<table><tr><th>dataset</th><th>score</th><th>β</th><th>ρ [95% CI]</th><th>trials</th></tr>{rows}</table>"))


def _health_section(train: pd.DataFrame, excluded: pd.DataFrame, c: _Content) -> None:
    """The training-health table (every finished trial: its verdict, ELBO against the mean-image
    model, active units) and a note naming the trials every figure and claim leaves out."""
    ok = agg.ok_trials(train) if not train.empty else train
    if not ok.empty:
        health = agg.trial_health(ok).set_index("trial_id")
        rows = []
        for r in ok.sort_values("trial_id").itertuples():
            h = health.loc[str(r.trial_id)]
            units = getattr(r, "active_units", None)
            units = " | ".join(str(int(u)) for u in units) if isinstance(units, (list, tuple, np.ndarray)) else "–"
            cls = "ok" if h.health == agg.HEALTHY else "bad"
            rows.append(
                f"<tr><td>{html.escape(str(r.trial_id))}</td><td class='{cls}'>{html.escape(str(h.health))}</td>"
                f"<td>{_num(getattr(r, TRAIN_ELBO, None))}</td><td>{_num(getattr(r, 'elbo_mean_image', None))}</td>"
                f"<td>{html.escape(units)}</td><td>{html.escape(str(h.health_reason))}</td></tr>")
        c.tables.append((
            "Training health",
            "Every finished trial: held-out ELBO (nats per image) against the mean-image model's log-likelihood on the "
            "same images (the plateau where training starts), active units per layer (Burda et al. 2016: Cov_x(E_q[z]) "
            "> 0.01), and the verdict of sweep.train.health. Only healthy trials enter the figures and the claims.",
            "<table><tr><th>trial</th><th>health</th><th>ELBO</th><th>mean image</th><th>active units</th>"
            f"<th>why</th></tr>{''.join(rows)}</table>"))
    unhealthy = excluded.loc[~excluded["health"].isin(["failed", "diverged"])] if not excluded.empty else excluded
    if not unhealthy.empty:
        names = "; ".join(f"{r.trial_id} ({r.health})" for r in unhealthy.itertuples())
        c.notes.append(f"{len(unhealthy)} trial(s) are not healthy and are left out of every figure and claim "
                       f"(see Training health): {names}.")


def _auddc_notes(attacks: pd.DataFrame, notes: list[str]) -> None:
    """Say how many pairs have no AUDDC, and why (the attack step's ``auddc_reason``)."""
    if attacks.empty or "auddc" not in attacks.columns:
        return
    pairs = attacks.drop_duplicates(subset=["trial_id", "mode", "similarity", "pair"])
    missing = pairs.loc[~np.isfinite(pd.to_numeric(pairs["auddc"], errors="coerce").astype(float))]
    if missing.empty:
        return
    reasons = missing["auddc_reason"].fillna("").astype(str) if "auddc_reason" in missing.columns else \
        pd.Series("", index=missing.index)
    kinds = reasons.map(lambda r: r.split(":")[0] if r else "not recorded (an older attack file)").value_counts()
    notes.append(f"AUDDC is not reported for {len(missing)} of {len(pairs)} (trial, mode, pair) units: "
                 + "; ".join(f"{k} ({v})" for k, v in kinds.items()) + ".")


def _load_reconstructions(out: Store, meta: pd.DataFrame, excluded: pd.DataFrame, limit: int = 24) -> pd.DataFrame:
    """Gallery rows for the reconstructions figure: the first two pairs of one attack task per
    trial, every trial of up to ``limit`` settings (dataset, kind, β, L, |z|: the figure's rows),
    the settings with an unhealthy trial first."""
    mode = LATENT if (meta["mode"] == LATENT).any() else str(meta["mode"].iloc[0])
    rows = meta.loc[meta["mode"] == mode]
    sim = agg.default_similarity(rows.assign(mode=mode), mode) or str(rows["similarity"].iloc[0])
    rows = rows.loc[rows["similarity"] == sim]
    bad = set(excluded["trial_id"].astype(str)) if not excluded.empty else set()
    setting = ["dataset", "model", "beta", "layers", "z_dim"]
    trials = rows.drop_duplicates(subset=["trial_id"]).assign(_bad=lambda f: f["trial_id"].astype(str).isin(bad))
    ranked = trials.groupby(setting, dropna=False)["_bad"].any().reset_index().sort_values(
        "_bad", ascending=False, kind="stable").head(limit)
    keep = trials.merge(ranked[setting], on=setting)["trial_id"].astype(str).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)
        gallery = load_gallery(out, filters={"trial_id": keep, "mode": mode, "similarity": sim,
                                             "pair": list(sorted(rows["pair"].unique()))[:2]})
    gallery.attrs["trials_total"] = int(meta["trial_id"].nunique())
    return gallery


def _load_gallery_for_figure(out: Store, meta: pd.DataFrame, similarity: str | None) -> pd.DataFrame:
    mode = LATENT if (meta["mode"] == LATENT).any() else str(meta["mode"].iloc[0])
    rows = meta.loc[meta["mode"] == mode]
    if similarity is not None and (rows["similarity"] == similarity).any():
        rows = rows.loc[rows["similarity"] == similarity]
    sim = str(rows["similarity"].iloc[0]) if similarity is None else similarity
    if not (rows["similarity"] == sim).any():
        sim = str(rows["similarity"].iloc[0])
    rows = rows.loc[rows["similarity"] == sim]
    trials = []
    for _, grp in rows.groupby(["dataset", "model"]):
        best = grp.sort_values(["beta", "layers", "z_dim", "seed"], ascending=[False, False, True, True])
        trials.append(str(best.iloc[0]["trial_id"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)
        return load_gallery(out, filters={"trial_id": trials, "mode": mode, "similarity": sim})


def _attack_summary(attacks: pd.DataFrame, similarity: dict[str, str | None]) -> pd.DataFrame:
    parts = []
    for mode in MODES:
        for metric in ("objective", "adv_target_l2", "target_nll", "auddc", "budget_50", "budget_90", "clean_left"):
            if metric not in attacks.columns:
                continue
            for sel in ((False,) if agg.METRICS[metric].per_pair else (False, True)):
                rows = agg.attack_rows(attacks, metric, mode, similarity.get(mode), sel)
                t = agg.summarize_metric(agg.pair_units(rows, metric, sel), ["dataset", "model", "layers", "beta"],
                                         metric)
                if t.empty:
                    continue
                t.insert(0, "variant", "selected λ" if sel else ("per pair" if agg.METRICS[metric].per_pair else "all λ"))
                t.insert(0, "metric", metric)
                t.insert(0, "similarity", similarity.get(mode))
                t.insert(0, "mode", mode)
                parts.append(t)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


# ---------------------------------------------------------------------------------------------
# status: what is there and what is missing


def _expected_models(config: dict | None) -> list[str]:
    """The kinds the sweep's grid asked for (every registered one without a ``sweep.json``)."""
    grid = records.grid_of(config)
    return list(grid.models) if grid is not None else list(kinds.names())


def _status_section(config, train, attacks, noise, gallery, c: _Content) -> str:
    notes = c.notes
    parts = []
    n_trials = int(train["trial_id"].nunique()) if not train.empty else 0
    if train.empty:
        notes.append("No training results yet (train/ is missing or empty): the sweep has not finished a trial; "
                     "ELBO, noise and weight-norm figures are left out.")
        ok_ids: set[str] = set()
    else:
        st = train["status"].astype(str).value_counts()
        parts.append("Trials in train/: " + ", ".join(f"{html.escape(k)}: {v}" for k, v in st.items())
                     + f" (total {n_trials}).")
        per_kind = train.drop_duplicates("trial_id")["model"].astype(str).value_counts()
        parts.append("Model kinds: " + ", ".join(f"{html.escape(kinds.label(m))} ('{html.escape(m)}'): {per_kind[m]}"
                                                 for m in sorted(per_kind.index, key=kinds.sort_key)) + ".")
        ok_ids = set(agg.ok_trials(train)["trial_id"].astype(str))
        bad = train.loc[train["status"].astype(str) != "ok"]
        if not bad.empty:
            notes.append(f"{len(bad)} trial(s) did not finish ok and are left out of every aggregate "
                         "(see the table of failed trials).")
            rows = "".join(
                f"<tr><td>{html.escape(str(r.trial_id))}</td><td>{html.escape(str(r.status))}</td>"
                f"<td>{html.escape(str(r.reason) if r.reason is not None else '')}</td></tr>"
                for r in bad[["trial_id", "status", "reason"]].itertuples()
            )
            c.tables.append(("Failed trials", "Trials with status other than ok (not used in any figure).",
                             f"<table><tr><th>trial</th><th>status</th><th>reason</th></tr>{rows}</table>"))
    expected = _expected_models(config)
    present_train = set(agg.ok_trials(train)["model"].astype(str)) if not train.empty else set()
    present_att = set(attacks["model"].astype(str)) if not attacks.empty else set()
    for m in expected:
        label = f"{agg.model_label(m)} ('{m}')"
        if not train.empty and m not in present_train:
            notes.append(f"No finished trial of model kind {label}: its curves and cells are missing from the figures.")
        elif not attacks.empty and m not in present_att:
            notes.append(f"No attack results of model kind {label} yet.")
    if attacks.empty:
        notes.append("No attack results yet (attacks/ is missing or empty): the attack figures (Fig. 1, 5, 6) and "
                     "the claims about Δ are left out. Re-run the report when the attack step has run.")
    else:
        attacked = set(attacks["trial_id"].astype(str))
        waiting = sorted(ok_ids - attacked)
        if waiting:
            shown = ", ".join(waiting[:10]) + (f" and {len(waiting) - 10} more" if len(waiting) > 10 else "")
            notes.append(f"{len(waiting)} finished trial(s) have no attack results yet: {shown}.")
        parts.append(f"Attack rows: {len(attacks):,} from {len(attacked)} trial(s); modes: "
                     + ", ".join(sorted(attacks["mode"].astype(str).unique())) + ".")
    if noise.empty and not train.empty:
        notes.append("No noise-robustness samples (noise/ is missing or empty): Fig. 7 is left out.")
    if gallery.empty and not attacks.empty:
        notes.append("No attack images (gallery/ is missing or empty).")
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# HTML


def _num(v: Any, pct: bool = False) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return html.escape(str(v))
    if not np.isfinite(f):
        return "–"
    if pct:
        return f"{100 * f:+.1f}%"
    a = abs(f)
    if a != 0 and (a >= 1e4 or a < 1e-2):
        return f"{f:.2e}"
    return f"{f:.3g}"


def _claims_caption(similarity: dict[str, str | None]) -> str:
    return (
        "Each claim contrasts settings (a model kind at a β and L) over their healthy trials. Δ (the attack "
        "objective, higher = harder to attack) and the weight norms: ratio of geometric means, numerator over "
        "denominator; noise: difference of the mean log p(x|z), z ~ q(z|x+ε), σ = 1. Units: each (trial, input–target "
        "pair) for Δ, 'all λ' being the pair's mean Δ over the positive λ (the paper's Δ) and 'selected λ' the Δ at "
        "the λ the attack step selected; each trial for the norms; each (trial, image) for noise. Similarities: "
        f"{LATENT} = {similarity.get(LATENT)}, {OUTPUT} = {similarity.get(OUTPUT)}. 95% interval of a linear mixed "
        "model with trials (seeds) and pairs or images random (Welch–Satterthwaite t); 'trials' gives the trials "
        "per setting. A verdict says 'holds' or 'does not hold' only when the whole interval lies on one side of "
        f"the claim's boundary (1 for ratios, 0 for differences, ×{cl.NO_GROWTH_MARGIN:g} for 'Δ does not grow'), "
        "else 'inconclusive'; with one trial per setting the interval holds pair-to-pair variation only and the "
        "verdict says so. 'Not measured' names what is missing, unhealthy trials included (they never enter a claim). "
        "Measure: each latent claim is tested on the paper's Δ and again on budget_50 (the smallest distortion ‖d‖ "
        "on the pair's λ path that removes half the clean latent distance; one value per pair, ratio of geometric "
        "means, higher = harder to attack), which does not grow with how far apart the clean source and target "
        "codes start, as Δ does; the sentences above the table say where the two disagree."
    )


def _claims_html(df: pd.DataFrame) -> str:
    head = ("<tr><th>dataset</th><th>claim</th><th>measure</th><th>λ</th><th>numerator</th><th>denominator</th>"
            "<th>estimate [95% CI]</th><th>trials</th><th>units</th><th>paper</th><th>here</th>"
            "<th>left out (not healthy)</th></tr>")
    body = []
    for r in df.itertuples():
        verdict = str(r.verdict)
        cls = "ok" if verdict.startswith("holds") else ("bad" if verdict.startswith("does not") else "na")
        body.append(
            f"<tr><td>{html.escape(str(r.dataset))}</td><td>{html.escape(r.claim)}</td>"
            f"<td>{html.escape(str(getattr(r, 'measure', 'Δ')))}</td><td>{html.escape(r.variant)}</td>"
            f"<td>{html.escape(str(r.numerator))}</td><td>{html.escape(str(r.denominator))}</td>"
            f"<td>{_num(r.estimate)} [{_num(r.lo)}, {_num(r.hi)}]</td><td>{html.escape(str(r.trials or ''))}</td>"
            f"<td>{int(r.units)}</td><td>{html.escape(r.paper)}</td><td class='{cls}'>{html.escape(verdict)}</td>"
            f"<td>{html.escape(str(r.left_out or ''))}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _norm_caption() -> str:
    return ("Relative change of the L2 norm of the encoder and decoder weights from the smallest to the largest β "
            "of each model kind and L (paper, Table 1: β 1 → 10, encoder grows, decoder shrinks). 95% CI: "
            "percentile bootstrap over trials (|z|, seeds) of the ratio of the means at the two β values.")


def _norm_html(df: pd.DataFrame) -> str:
    head = ("<tr><th>weights</th><th>dataset</th><th>model</th><th>L</th><th>β</th><th>mean L2 norm</th>"
            "<th>change [95% CI]</th><th>trials</th></tr>")
    body = []
    for r in df.itertuples():
        good = (r.change > 0) if r.part == "encoder" else (r.change < 0)
        body.append(
            f"<tr><td>{r.part}</td><td>{html.escape(str(r.dataset))}</td><td>{html.escape(agg.model_label(r.model))}</td>"
            f"<td>{r.layers}</td><td>{r.beta_min:g} → {r.beta_max:g}</td>"
            f"<td>{_num(r.norm_min)} → {_num(r.norm_max)}</td>"
            f"<td class='{'ok' if good else 'bad'}'>{_num(r.change, True)} [{_num(r.change_lo, True)}, "
            f"{_num(r.change_hi, True)}]</td><td>{r.n_min} / {r.n_max}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.85em}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.ok{color:#126b12}td.bad{color:#a11}td.na{color:#777}
figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;max-width:1000px}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.8em}
ul.notes li{margin:.2em 0}.meta{color:#555;font-size:.9em}
"""


def _page(out: Store, config, tracking, status: str, c: _Content) -> str:
    name = (config or {}).get("name") if isinstance(config, dict) else None
    title = f"Sweep report: {name}" if name else "Sweep report"
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    esc = html.escape
    h = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p class='meta'>Results folder: <code>{esc(out.uri)}</code>. Generated {esc(when)}.</p>",
    ]
    if tracking:
        h.append(
            "<p class='meta'>MLflow: experiment <code>{}</code>, parent run <code>{}</code>, tracking URI <code>{}</code>.</p>"
            .format(esc(str(tracking.get("experiment_name"))), esc(str(tracking.get("parent_run_id"))),
                    esc(str(tracking.get("tracking_uri"))))
        )
    h.append("<h2 id='status'>Status</h2>")
    h.append(f"<p>{status or 'No results yet.'}</p>")
    if c.notes:
        h.append("<p><b>What is missing or was skipped:</b></p><ul class='notes'>")
        h.extend(f"<li>{esc(n)}</li>" for n in c.notes)
        h.append("</ul>")
    else:
        h.append("<p>All expected results are present.</p>")
    h.append(f"<p class='meta'>Confidence intervals: the attack objective Δ is summarised by its {esc(LOG_METHOD)}; "
             f"other quantities by the {esc(T_METHOD)}, over the units named in each caption; the claims use a "
             "linear mixed model's interval (trials and pairs random). Only healthy trials (Training health) "
             "enter them.</p>")
    # tables first: the claims are the summary of the page
    for t_title, caption, body in c.tables:
        h.append(f"<h2>{esc(t_title)}</h2><p class='meta'>{esc(caption)}</p>{body}")
    if c.figures:
        h.append("<h2 id='figures'>Figures</h2>")
    for f in c.figures:
        h.append(
            f"<figure><img src=\"{esc(f.file, quote=True)}\" alt=\"{esc(f.title, quote=True)}\">"
            f"<figcaption><b>{esc(f.title)}.</b> {esc(f.caption)}</figcaption></figure>"
        )
    if c.files:
        h.append("<h2>Tables as CSV</h2><ul>")
        h.extend(f"<li><a href=\"{esc(f, quote=True)}\">{esc(f)}</a></li>" for f in c.files)
        h.append("</ul>")
    h.append("<h2 id='config'>Sweep config (sweep.json)</h2>")
    if config is not None:
        h.append(f"<pre>{html.escape(json.dumps(config, indent=2, default=str), quote=False)}</pre>")
    else:
        h.append("<p>sweep.json is missing.</p>")
    h.append("</body></html>")
    return "\n".join(h) + "\n"


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Write DIR/report/ (figures, tables, index.html) from a sweep's results folder and log it "
                    "to the sweep's parent MLflow run.",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="the sweep's results folder (its --out)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: the one in DIR/tracking.json)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", AnalysisWarning)
            report = build_report(args.out, tracking_uri=args.tracking_uri, log_to_mlflow=not args.no_mlflow)
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for w in caught:
        if issubclass(w.category, AnalysisWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    if isinstance(report, Store):
        n_png, index = len(report.list_files("", ".png")), report.uri_of("index.html")
    else:
        n_png, index = len(list(report.glob("*.png"))), report / "index.html"
    print(f"wrote {index} ({n_png} figures)")
    if not args.no_mlflow and not any(issubclass(w.category, AnalysisWarning) and "not logged" in str(w.message)
                                      for w in caught):
        tracking = read_tracking(args.out) or {}
        print(f"logged to MLflow run {tracking.get('parent_run_id')} "
              f"({args.tracking_uri or tracking.get('tracking_uri')}) under artifacts/report/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
