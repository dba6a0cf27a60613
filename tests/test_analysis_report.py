"""End to end: a hand-built results folder plus a real MLflow SQLite store -> report/ with every
figure, an index.html that references only files that exist, the artifacts on the parent run,
the query CLI on that store, and reports from partial results."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis import figures as figs
from analysis.errors import AnalysisError, AnalysisWarning
from analysis.load import load_train
from analysis.query import main as query_main
from analysis.report import build_report, log_report_to_mlflow
from analysis.report import main as report_main
from analysis.synthetic import log_synthetic_runs, write_synthetic_results

REPO = Path(__file__).resolve().parents[1]

GRID = (
    [("vae", 1.0, 1)]
    + [("tcvae", b, 1) for b in (1.0, 4.0, 10.0)]
    + [("tcdlgm", b, L) for b in (1.0, 10.0) for L in (2, 3)]
    + [("seatbelt", b, L) for b in (1.0, 4.0, 10.0) for L in (2, 3)]
)
EXPECTED_FIGURES = {
    "fig0_reconstructions.png",
    "fig8_robustness_vs_disentanglement.png",
    "fig1_gallery.png",
    "fig3_elbo_vs_beta.png",
    "fig5_objective_vs_beta_tcvae.png",
    "fig5_adv_target_l2_vs_beta_tcvae.png",
    "fig5_target_nll_vs_beta_tcvae.png",
    "fig5_auddc_vs_beta_tcvae.png",
    "fig6_objective_heatmap.png",
    "fig6_objective_selected_heatmap.png",
    "fig6_adv_target_l2_heatmap.png",
    "fig6_target_nll_heatmap.png",
    "fig6_auddc_heatmap.png",
    "fig5_latent_robustness_vs_beta_tcvae.png",
    "fig6_latent_robustness_heatmap.png",
    "fig7_noise_loglik.png",
    "table1_weight_norms.png",
}


def write_sweep_json(out: Path, grid, seeds=(0,), models=None, name="synthetic") -> None:
    """Replace the folder's sweep.json by the one the sweep itself writes for this grid: its
    config (``sweep.config``) through the contract's writer, as ``python -m sweep.grid`` does."""
    from results.store import Store
    from sweep.config import from_dict

    cfg = from_dict({"name": name,
                     "grid": {"datasets": ["dsprites"], "models": models or sorted({g[0] for g in grid}),
                              "betas": sorted({g[1] for g in grid}), "layers": sorted({g[2] for g in grid}),
                              "z_dims": [10], "seeds": list(seeds)},
                     "data": {"data_dirs": {"dsprites": "data/dsprites.npz"}}})
    cfg.save(Store(out))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    out = root / "out"
    # 21 λ (steps of 2^2): a path fine enough for budget_50 to resolve the models' distortion scales
    write_synthetic_results(out, grid=GRID, seeds=(0, 1), pairs=3, n_lam=21)
    write_sweep_json(out, GRID, seeds=(0, 1))
    uri = f"sqlite:///{root}/mlflow.db"
    parent = log_synthetic_runs(out, uri, "seatbelt-test", artifact_location=(root / "artifacts").as_uri())
    report = build_report(out)
    return {"out": out, "uri": uri, "parent": parent, "report": report}


def referenced_files(index: Path) -> list[str]:
    text = index.read_text(encoding="utf-8")
    return re.findall(r'(?:src|href)="([^"]+)"', text)


def check_references(report: Path) -> list[str]:
    refs = referenced_files(report / "index.html")
    for ref in refs:
        assert not re.match(r"^[a-z]+:", ref), f"external or absolute reference {ref}"
        assert not ref.startswith("/"), ref
        assert (report / ref).is_file(), f"index.html references missing {ref}"
    return refs


def check_png(path: Path) -> None:
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] > 0 and im.size[1] > 0
        im.load()


def test_every_figure_is_a_nonempty_png(sweep):
    report = sweep["report"]
    pngs = {p.name for p in report.glob("*.png")}
    assert pngs == EXPECTED_FIGURES
    for name in pngs:
        check_png(report / name)


def test_html_references_only_existing_files(sweep):
    report = sweep["report"]
    refs = check_references(report)
    assert {r for r in refs if r.endswith(".png")} == EXPECTED_FIGURES
    html = (report / "index.html").read_text(encoding="utf-8")
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert '"name": "synthetic"' in html  # the sweep config is shown
    assert not list(sweep["out"].glob(".report-*")), "temporary folders left behind"


def test_headline_claims_and_tables(sweep):
    html = (sweep["report"] / "index.html").read_text(encoding="utf-8")
    assert "The paper&#x27;s claims on this sweep" in html and "Weight norms (Table 1)" in html
    claims = pd.read_csv(sweep["report"] / "claims.csv")
    latent = claims[(claims["claim"] == "latent Δ: β-TCVAE (largest β) over VAE") & (claims["variant"] == "all λ")].iloc[0]
    # synthetic data: β-TCVAE latent scale 2·10^1.5 ≈ 63 vs VAE 1, two seeds per setting
    assert latent["estimate"] > 10 and latent["lo"] > 1 and latent["verdict"] == "holds (CI above 1)"
    assert latent["trials"] == "2 / 2"
    dlgm = claims[claims["claim"].str.contains("TCDLGM not more robust with β") & (claims["variant"] == "all λ")].iloc[0]
    assert dlgm["verdict"].startswith("holds")
    # every claim the synthetic grid covers gets a verdict with its interval
    measured = claims.loc[~claims["verdict"].str.startswith("not measured")]
    assert len(measured) >= 20 and measured["lo"].notna().all()
    norms = pd.read_csv(sweep["report"] / "weight_norms.csv")
    tc = norms[(norms["model"] == "tcvae")].set_index("part")
    assert tc.loc["encoder", "change"] > 0 > tc.loc["decoder", "change"]


def test_report_is_logged_to_the_parent_run(sweep):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=sweep["uri"])
    names = {Path(a.path).name for a in client.list_artifacts(sweep["parent"], "report")}
    assert "index.html" in names and EXPECTED_FIGURES <= names


def test_query_cli_on_the_store(sweep, tmp_path, capsys):
    out = sweep["out"]
    train = load_train(out)
    want = set(train.loc[(train["model"] == "seatbelt") & (train["beta"] >= 4), "trial_id"])
    assert len(want) == 8  # β ∈ {4, 10} × L ∈ {2, 3} × 2 seeds; "10" < "4" as strings
    csv, parquet = tmp_path / "runs.csv", tmp_path / "runs.parquet"
    rc = query_main(["--out", str(out), "--where", "model='seatbelt' and beta>=4",
                     "--csv", str(csv), "--parquet", str(parquet)])
    assert rc == 0, capsys.readouterr().err
    got = pd.read_csv(csv)
    assert set(got["trial_id"]) == want and len(got) == len(want)
    assert set(pd.read_parquet(parquet)["trial_id"]) == want
    assert {"beta", "layers", "elbo", "encoder_l2"} <= set(got.columns)
    assert sweep["parent"] not in set(got["run_id"])

    # explicit URI + experiment; a metric filter and a numeric 'in' on a param, printed as a table
    want2 = set(train.loc[(train["elbo"] < -110) & train["layers"].isin([1, 3]), "trial_id"])
    assert want2
    rc = query_main(["--tracking-uri", sweep["uri"], "--experiment", "seatbelt-test",
                     "--where", "elbo < -110 and layers in (1, 3)", "--columns", "trial_id,elbo"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert f"{len(want2)} run(s)" in printed
    assert all(t in printed for t in want2)

    rc = query_main(["--tracking-uri", sweep["uri"], "--experiment", "nope"])
    assert rc == 2 and "no MLflow experiment named 'nope'" in capsys.readouterr().err


def test_mlflow_failure_is_a_user_error(sweep, tmp_path):
    out = tmp_path / "other"
    out.mkdir()
    (out / "tracking.json").write_text(json.dumps(
        {"tracking_uri": sweep["uri"], "experiment_name": "seatbelt-test", "parent_run_id": "0" * 32}))
    with pytest.raises(AnalysisError, match="report was written to .* but logging it to MLflow run 0+ .* failed"):
        log_report_to_mlflow(out, sweep["report"])


def test_a_crash_never_leaves_a_half_written_report(sweep, monkeypatch):
    out = sweep["out"]
    before = (out / "report" / "index.html").read_text(encoding="utf-8")

    def boom(*args, **kwargs):
        raise RuntimeError("simulated crash while drawing")

    monkeypatch.setattr(figs, "fig_elbo", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_report(out, log_to_mlflow=False)
    assert (out / "report" / "index.html").read_text(encoding="utf-8") == before
    assert not list(out.glob(".report-*"))
    check_references(out / "report")


def test_cli_errors_exit_2_without_traceback(tmp_path, capsys):
    assert report_main(["--out", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: results folder") and "pass the --out folder" in err
    res = subprocess.run([sys.executable, "-m", "analysis.report", "--out", str(tmp_path / "missing"), "--no-mlflow"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "does not exist" in res.stderr


# ---------------------------------------------------------------------------------------------
# partial results


def test_partial_no_attacks_failed_trial_missing_model(tmp_path):
    out = tmp_path / "partial"
    grid = [("vae", 1.0, 1), ("tcvae", 1.0, 1), ("tcvae", 10.0, 1), ("seatbelt", 1.0, 2), ("seatbelt", 10.0, 2)]
    write_synthetic_results(out, grid=grid, seeds=(0, 1), attacks=False,
                            failed=["dsprites-tcvae-b10-L1-z10-s1"])
    # the config asked for β-TCDLGM too
    write_sweep_json(out, grid, seeds=(0, 1), models=["vae", "tcvae", "tcdlgm", "seatbelt"])
    with pytest.warns(AnalysisWarning, match="not logged to MLflow: .*tracking.json is missing"):
        report = build_report(out)  # no tracking.json: logging skipped, the report is still written
    html = (report / "index.html").read_text(encoding="utf-8")
    assert "No attack results yet (attacks/ is missing or empty)" in html
    assert "dsprites-tcvae-b10-L1-z10-s1" in html and "CUDA out of memory" in html
    assert "No finished trial of model kind β-TCDLGM (&#x27;tcdlgm&#x27;)" in html
    pngs = {p.name for p in report.glob("*.png")}
    assert pngs == {"fig3_elbo_vs_beta.png", "fig7_noise_loglik.png", "table1_weight_norms.png"}
    for p in pngs:
        check_png(report / p)
    check_references(report)


def test_only_the_kinds_the_sweep_asked_for_are_expected(tmp_path):
    """The report reads the grid of a real sweep.json (``grid.models``): a sweep of two kinds gets
    no note about the kinds it never asked for, and its kinds are listed with their labels."""
    out = tmp_path / "two"
    grid = [("vae", 1.0, 1), ("tcvae", 1.0, 1), ("tcvae", 4.0, 1)]
    write_synthetic_results(out, grid=grid, noise=False, gallery=False)
    write_sweep_json(out, grid)
    html = (build_report(out, log_to_mlflow=False) / "index.html").read_text(encoding="utf-8")
    assert "No finished trial of model kind" not in html and "No attack results of model kind" not in html
    assert "Model kinds: VAE ('vae'): 1, β-TCVAE ('tcvae'): 2." in html


def test_partial_running_sweep_with_a_corrupt_file(tmp_path, capsys):
    out = tmp_path / "running"
    grid = [("vae", 1.0, 1), ("tcvae", 1.0, 1), ("tcvae", 4.0, 1)]
    write_synthetic_results(out, grid=grid, seeds=(0,), noise=False, gallery=False)
    shutil.rmtree(out / "attacks" / "dsprites-tcvae-b4-L1-z10-s0")  # not attacked yet
    (out / "attacks" / "broken").mkdir()
    (out / "attacks" / "broken" / "latent-kl.parquet").write_bytes(b"PAR1 truncated")
    rc = report_main(["--out", str(out), "--no-mlflow"])
    assert rc == 0
    err = capsys.readouterr().err
    html = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert "1 finished trial(s) have no attack results yet: dsprites-tcvae-b4-L1-z10-s0" in html
    assert "Skipped unreadable file in attacks/" in html and "latent-kl.parquet" in html
    assert "no attack results of β-TCDLGM or Seatbelt-VAE" in html
    assert "No noise-robustness samples" in html
    assert "Traceback" not in err
    assert "fig5_objective_vs_beta_tcvae.png" in {p.name for p in (out / "report").glob("*.png")}
    check_references(out / "report")


def test_empty_results_folder_still_gives_a_report(tmp_path):
    (tmp_path / "new").mkdir()
    report = build_report(tmp_path / "new", log_to_mlflow=False)
    html = (report / "index.html").read_text(encoding="utf-8")
    assert "No training results yet" in html and "sweep.json is missing" in html
    assert not list(report.glob("*.png"))
    check_references(report)


# ---------------------------------------------------------------------------------------------
# issue 23: attack sanity, budget_50 beside the paper's Δ, the unmoved paper λ, Fig. 0 at 48 trials


def test_attack_sanity_table_follows_the_claims(sweep):
    html = (sweep["report"] / "index.html").read_text(encoding="utf-8")
    claims_at = html.index("<h2>The paper&#x27;s claims")
    sanity_at = html.index("<h2>Attack sanity</h2>")
    assert claims_at < sanity_at < html.index("<h2>Training health</h2>")
    # the synthetic attacks are exact minima (tests/test_analysis_sanity.py): every point passes
    assert "The latent attack passes the path check at 100.0% of its" in html
    assert "The output attack passes the path check at 100.0% of its" in html
    assert "below the 98% bar" not in html


def test_claims_csv_has_both_measures_and_the_page_says_where_they_differ(sweep):
    from analysis import claims as cl

    claims = pd.read_csv(sweep["report"] / "claims.csv")
    assert "measure" in claims.columns
    budget = claims.loc[claims["measure"] == "budget_50"]
    assert len(budget) == 8 and (budget["variant"] == "per pair").all()
    assert budget["claim"].str.startswith("latent Δ:").all()
    html = (sweep["report"] / "index.html").read_text(encoding="utf-8")
    import html as h
    for sentence in cl.measure_findings(claims):
        assert h.escape(sentence) in html


def _gallery_row(trial, model, beta, layers, seed, pair, size=4, **extra):
    img = np.full((size, size, 1), 40 * pair + 10 * seed, dtype=np.uint8).tobytes()
    row = dict(trial_id=trial, dataset="dsprites", model=model, beta=beta, layers=layers, z_dim=10, seed=seed,
               mode="latent", similarity="kl", pair=pair, lam=0.5, channels=1, height=size, width=size)
    row.update({panel: img for panel in ("input", "reconstruction", "adversarial", "distortion",
                                         "adversarial_reconstruction", "target")})
    row.update(extra)
    return row


# the repro preset's grid: 4 kinds × β {1, 4, 8} × L {1, 2, 3}, valid combinations only:
# VAE (β = 1, L = 1), β-TCVAE (3 β, L = 1), β-TCDLGM and Seatbelt-VAE (3 β × L 2, 3): 16 settings
REPRO_SETTINGS = ([("vae", 1.0, 1)] + [("tcvae", b, 1) for b in (1.0, 4.0, 8.0)]
                  + [(k, b, L) for k in ("tcdlgm", "seatbelt") for b in (1.0, 4.0, 8.0) for L in (2, 3)])


def _repro_gallery(seeds):
    rows = [_gallery_row(f"{m}-b{b:g}-L{L}-s{s}", m, b, L, s, p)
            for m, b, L in REPRO_SETTINGS for s in seeds for p in (0, 1, 2)]
    frame = pd.DataFrame(rows)
    health = frame.drop_duplicates("trial_id")[["trial_id"]].assign(health="healthy")
    health.loc[health["trial_id"] == "seatbelt-b8-L3-s1", "health"] = "collapsed"
    return frame, health


def test_fig0_has_one_row_per_setting_and_seeds_side_by_side(tmp_path):
    gallery, health = _repro_gallery(seeds=(0, 1, 2))
    assert gallery["trial_id"].nunique() == 48
    res = figs.fig_reconstructions(gallery, health, tmp_path)
    assert "for 48 of 48 attacked trials in 16 settings" in res.caption
    with Image.open(tmp_path / res.file) as im:
        # 16 rows of 1.45 in; 3 seeds × 2 pairs × (input, reconstruction) columns of 1.3 in; 100 dpi
        assert im.size == (round(3 * 2 * 2 * 1.3 * 100), round(16 * 1.45 * 100))
    gallery, health = _repro_gallery(seeds=(0, 1, 2, 3))   # past three seeds: one pair per seed
    res = figs.fig_reconstructions(gallery, health, tmp_path, file="four.png")
    with Image.open(tmp_path / "four.png") as im:
        assert im.size == (round(4 * 1 * 2 * 1.3 * 100), round(16 * 1.45 * 100))


def test_fig1_says_when_the_papers_lambda_left_the_input_unmoved(tmp_path):
    rows = [_gallery_row("t", "tcvae", 4.0, 1, 0, 0, paper_lam=1048576.0, paper_lam_unmoved=True),
            _gallery_row("t", "tcvae", 4.0, 1, 0, 1, paper_lam=0.5, paper_lam_unmoved=False)]
    res = figs.fig_gallery(pd.DataFrame(rows), tmp_path, "kl")
    assert ("Rows marked *: dsprites β-TCVAE β=4 pair 0: the paper's rule picked λ = 1.05e+06 with no distortion "
            "(the d = 0 plateau); the picture shows the rule's choice among the λ that moved the input, λ = 0.5."
            ) in res.caption
    assert "pair 1:" not in res.caption
    old = pd.DataFrame([_gallery_row("t", "tcvae", 4.0, 1, 0, p) for p in (0, 1)])   # no paper_lam columns
    assert "Rows marked" not in figs.fig_gallery(old, tmp_path, "kl", file="old.png").caption


def test_with_clean_left_by_hand():
    from analysis import aggregate as agg

    frame = pd.DataFrame({"distance": [1.0, 3.0, 2.0, 5.0], "delta_clean": [4.0, 4.0, None, 0.0]})
    left = agg.with_clean_left(frame)["clean_left"].tolist()
    assert left[:2] == [0.25, 0.75] and np.isnan(left[2]) and np.isnan(left[3])
    assert agg.with_clean_left(frame[["distance"]])["clean_left"].isna().all()


@pytest.fixture(scope="module")
def small_attacks(tmp_path_factory):
    from analysis import aggregate as agg
    from analysis.load import load_attacks

    out = tmp_path_factory.mktemp("small")
    grid = [("vae", 1.0, 1), ("tcvae", 1.0, 1), ("tcvae", 4.0, 1), ("tcdlgm", 1.0, 2), ("seatbelt", 4.0, 2)]
    write_synthetic_results(out, grid=grid, pairs=2, n_lam=11, noise=False, gallery=False)
    return agg.with_clean_left(load_attacks(out))


def test_latent_robustness_figures_put_the_measures_side_by_side(small_attacks, tmp_path):
    sim = {"latent": "kl", "output": "elbo"}
    res = figs.fig_latent_robustness_vs_beta(small_attacks, tmp_path, sim)
    with Image.open(tmp_path / res.file) as im:
        assert im.size == (3 * 460, 340)   # Δ | budget_50 | distance / delta_clean, one dataset
    res = figs.fig_latent_robustness_heatmaps(small_attacks, tmp_path, sim)
    with Image.open(tmp_path / res.file) as im:
        assert im.size == (3 * 520, 2 * 390)   # two models × one dataset, three measures
    no_clean = small_attacks.drop(columns=["delta_clean"]).assign(clean_left=np.nan)
    res = figs.fig_latent_robustness_vs_beta(no_clean, tmp_path, sim, file="two.png")
    with Image.open(tmp_path / "two.png") as im:
        assert im.size == (2 * 460, 340)
    old = no_clean.assign(budget_50=None)
    with pytest.raises(figs.SkipFigure, match="no budget_50 or delta_clean in the latent attacks"):
        figs.fig_latent_robustness_vs_beta(old, tmp_path, sim)
    with pytest.raises(figs.SkipFigure, match="no budget_50 in attacks/"):
        figs.fig_attack_vs_beta(old, "budget_50", tmp_path, sim)
    res = figs.fig_attack_vs_beta(small_attacks, "budget_50", tmp_path, sim)
    with Image.open(tmp_path / res.file) as im:
        assert im.size == (460, 340)   # latent only: the output attack has no budget


def test_budget_50_is_one_value_per_pair():
    from analysis import aggregate as agg

    rows = pd.DataFrame({"trial_id": "t", "dataset": "d", "model": "tcvae", "beta": 4.0, "layers": 1, "z_dim": 10,
                         "seed": 0, "mode": "latent", "similarity": "kl", "pair": [0, 0, 0, 1, 1, 1],
                         "lam": [0.0, 1.0, 2.0] * 2, "budget_50": [4.0] * 3 + [16.0] * 3})
    table = agg.attack_by_beta(rows, "budget_50", "latent", "kl")
    assert table.loc[0, "n"] == 2 and table.loc[0, "mean"] == pytest.approx(8.0)   # sqrt(4 · 16)


def test_a_mode_below_the_bar_is_said_at_the_top(tmp_path):
    from analysis import report
    from tests.test_analysis_sanity import hand_table

    c = report._Content()
    report._sanity_section(hand_table(), c)
    assert c.tables[0][0] == "Attack sanity"
    assert c.notes == ["Attack sanity: the latent attack passes the path check at only 75.0% of its λ-points, "
                       "below the 98% bar (see the Attack sanity table)."]


def test_old_results_without_the_new_columns_give_a_report(tmp_path):
    """Attack and gallery files written before issue 23: the new columns load as nulls, the new
    panels are skipped with a note, the claims fall back to the paper's Δ, nothing crashes."""
    import pyarrow.parquet as pq

    from results import schema

    out = tmp_path / "old"
    grid = [("vae", 1.0, 1), ("tcvae", 1.0, 1), ("tcvae", 4.0, 1), ("seatbelt", 1.0, 2), ("seatbelt", 4.0, 2)]
    write_synthetic_results(out, grid=grid, pairs=2, n_lam=6, noise=False)
    new = {"objective_se", "delta_minimised", "delta_clean", "worse_than_clean", "budget_50", "budget_90",
           "paper_lam", "paper_lam_unmoved"}
    assert new <= set(schema.ATTACKS.names) | set(schema.GALLERY.names)
    for path in [*(out / "attacks").rglob("*.parquet"), *(out / "gallery").rglob("*.parquet")]:
        table = pq.read_table(path)
        pq.write_table(table.drop_columns([c for c in table.column_names if c in new]), path)
    report = build_report(out, log_to_mlflow=False)
    html = (report / "index.html").read_text(encoding="utf-8")
    assert "Figure skipped (latent_robustness_vs_beta): no budget_50 or delta_clean" in html
    assert "Figure skipped (latent_robustness_heatmaps): no budget_50 or delta_clean" in html
    assert "tested on the paper&#x27;s Δ only" in html
    assert "have no delta_clean (attack files written before the column existed)" in html
    assert {"fig0_reconstructions.png", "fig1_gallery.png", "fig5_objective_vs_beta_tcvae.png"} <= \
        {p.name for p in report.glob("*.png")}
    check_references(report)
