"""The whole sweep, stage by stage: check, train, record, attack, report, summarise.

Each stage reads what the one before it wrote in the results folder, so the pipeline can stop
anywhere and the same command picks up where it stopped.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from results import layout, records, schema
from results.errors import UserError
from results.store import Store
from results.vocabulary import LATENT, OUTPUT
from sweep.cli.options import RunOptions
from sweep.config import SweepConfig
from sweep.config.trials import TrialSpec
from sweep.infra import run_artifacts
from sweep.infra.cluster import connect, place_on_gpus, shutdown
from sweep.infra.lock import hold
from sweep.infra.tracking import Tracker, open_tracker

TRAIN_METRICS = (schema.TRAIN_ELBO, "elbo_mean_image", "recon_loglik", "recon_r2", "index_code_mi", "tc", "dim_kl",
                 "mig", "dead_first_layer", "encoder_l2", "decoder_l2", "clean_loglik_mean", "noise_loglik_mean",
                 "noise_loglik_median", "eval_images", "mig_images", "steps", "seconds", "images_per_s")
# list columns of a train row, logged as one metric per layer: kl_layer_1, active_units_layer_1, ...
TRAIN_LAYER_METRICS = {"kl_layers": "kl_layer", "active_units": "active_units_layer",
                       "logvar_at_bound": "logvar_at_bound_layer"}


def run_pipeline(cfg: SweepConfig, specs: list[TrialSpec], out: str, options: RunOptions) -> int:
    store = Store(out)
    with hold(store):  # one sweep per results folder, checked before anything is written
        return _run_pipeline(cfg, specs, store, options)


def _run_pipeline(cfg: SweepConfig, specs: list[TrialSpec], store: Store, options: RunOptions) -> int:
    check_results_folder(store, cfg, reuse=options.reuse_out)
    check_data_paths(cfg)
    tracker = None
    if options.tracking:
        tracker = open_tracker(store, cfg, options.tracking_uri)
        records.write_tracking(store, tracker.info())
    cfg.save(store)

    print(f"sweep {cfg.name!r}: {len(specs)} trials -> {store.uri}")
    # Connected only after the checks above, so a bad folder or tracking store fails first.
    print(connect(options.cluster, temp_dir=options.ray_temp_dir, num_cpus=options.num_cpus,
                  worker_env=list(options.worker_env)), flush=True)
    # GPU requests are checked against the real cluster: one no node can ever meet is dropped
    # with a warning instead of leaving every trial pending forever.
    for line in place_on_gpus(cfg.resources):
        print(line, file=sys.stderr if line.startswith("warning") else sys.stdout, flush=True)
    status = "FAILED"
    try:
        from sweep.train.training import finished_trials, run_training

        run_training(cfg, specs, store, tracker)
        rows = finished_trials(store)
        if tracker is not None:
            record_trials(tracker, rows)
            run_artifacts.log_checkpoints(tracker, store, rows)
        attack_failures: dict[str, str] = {}
        if options.attacks:
            from sweep.fanout.stage import run_attacks

            attack_failures = run_attacks(cfg, store, rows, tracker) or {}
            if tracker is not None:
                run_artifacts.log_reconstructions(tracker, store, rows)
        if options.report:
            write_report(store, tracker)
        if tracker is not None:
            tracker.log_results(results_datasets(cfg, store))
        print_summary(cfg, store, specs, rows, tracker, attack_failures)
        status = "FINISHED"
    finally:
        shutdown()
        if tracker is not None:
            tracker.close(status)
    return 0


def check_results_folder(store: Store, cfg: SweepConfig, reuse: bool) -> None:
    """A results folder belongs to one sweep config: mixing two would mix their results."""
    if not store.exists(layout.SWEEP_JSON) or reuse:
        return
    _, previous = records.read_sweep(store)
    if previous != cfg.fingerprint():
        raise UserError(
            f"--out {store.uri} holds results of a different sweep config (fingerprint {previous}, "
            f"this config {cfg.fingerprint()}); choose another --out, or pass --reuse-out to add to it"
        )


def check_data_paths(cfg: SweepConfig) -> None:
    problems = missing_data_paths(cfg)
    if problems:
        raise UserError(problems[0])


def missing_data_paths(cfg: SweepConfig) -> list[str]:
    """What is wrong with each local dataset path that does not exist on this machine (a
    dry run only warns: the sweep may be meant for another machine)."""
    problems = []
    for dataset in cfg.grid.datasets:
        path = cfg.data.data_dirs.get(dataset)
        if path and "://" not in path and not Path(path).expanduser().exists():
            problems.append(
                f"data.data_dirs.{dataset} = {path!r} does not exist; point it at your local copy "
                f"of {dataset} (see the README's datasets section; nothing is downloaded)"
            )
    return problems


def results_datasets(cfg: SweepConfig, store: Store) -> dict[str, tuple[str, Any]]:
    """The Parquet datasets of the results folder that exist: MLflow name -> (URI, schema)."""
    found = {layout.TRAIN: schema.TRAIN, layout.NOISE: schema.NOISE, layout.ATTACKS: schema.ATTACKS,
             layout.GALLERY: schema.GALLERY}
    return {f"{cfg.name}/{name}": (store.uri_of(name), table_schema)
            for name, table_schema in found.items() if store.exists(name)}


def record_trials(tracker: Tracker, rows: dict[str, dict[str, Any]]) -> None:
    """Back-fill MLflow from the train rows: every trial gets exactly one closed child run with
    its evaluation, whatever happened to the driver or the server while it trained."""
    for row in rows.values():
        metrics = {name: row.get(name) for name in TRAIN_METRICS}
        for column, prefix in TRAIN_LAYER_METRICS.items():
            for i, value in enumerate(row.get(column) or [], start=1):
                metrics[f"{prefix}_{i}"] = value
        step = int(row.get("steps") or 0)
        tracker.log_metrics(row, metrics, step=step)
        ok = row["status"] == "ok"
        tags = {"status": row["status"]}
        if ok:
            tags.update(health=row.get("health") or "", health_reason=row.get("health_reason") or "")
        else:
            tags["reason"] = row.get("reason") or ""
        tracker.finish(row, "FINISHED" if ok else "FAILED", tags=tags)


def write_report(store: Store, tracker: Tracker | None) -> None:
    try:
        from analysis.report import build_report
    except ImportError:
        print("report: the analysis package is not installed; skipped")
        return
    try:
        path = build_report(store.uri, tracking_uri=tracker.tracking_uri if tracker else None,
                            log_to_mlflow=tracker is not None)
        print(f"report: {path}")
    except Exception as exc:  # the results are safe in Parquet; a report can be made later
        print(f"report: failed ({type(exc).__name__}: {exc}); run python -m analysis.report --out {store.uri}")


def print_summary(cfg: SweepConfig, store: Store, specs: list[TrialSpec],
                  rows: dict[str, dict[str, Any]], tracker: Tracker | None,
                  attack_failures: dict[str, str] | None = None) -> None:
    """The table of trials, why any of them did not finish (diverged, failed, or its attacks
    failed), where the results are, and what could not be logged to MLflow."""
    attack_failures = attack_failures or {}
    attack_means = _attack_means(store)
    print()
    header = (f"{'trial_id':44s} {'status':8s} {'health':9s} {'ELBO':>9s} {'mean img':>9s} {'AU':>7s} "
              f"{'TC':>7s} {'MIG':>5s} {'latent D':>9s} {'output D':>9s}")
    print(header)
    print("-" * len(header))
    for spec in specs:
        row = rows.get(spec.trial_id, {})
        means = attack_means.get(spec.trial_id, {})
        status = "failed" if spec.trial_id in attack_failures else row.get("status", "missing")
        units = "/".join(str(u) for u in row.get("active_units") or []) or "-"
        print(f"{spec.trial_id:44s} {status:8s} {row.get('health') or '-':9s} {_fmt(row.get(schema.TRAIN_ELBO)):>9s} "
              f"{_fmt(row.get('elbo_mean_image')):>9s} {units:>7s} "
              f"{_fmt(row.get('tc')):>7s} {_fmt(row.get('mig'), 2):>5s} "
              f"{_fmt(means.get(LATENT)):>9s} {_fmt(means.get(OUTPUT)):>9s}")
    print()
    print("(mean img: the held-out log-likelihood of the mean-image model, the plateau; AU: active units per "
          "layer; latent D / output D: mean over pairs and lambdas of the final attack objective, higher = "
          "harder to attack)")
    unhealthy = [(spec.trial_id, rows[spec.trial_id]) for spec in specs
                 if rows.get(spec.trial_id, {}).get("status") == "ok"
                 and rows[spec.trial_id].get("health") not in (None, "healthy")]
    if unhealthy:
        print(f"{len(unhealthy)} trial(s) are not healthy; the report draws no conclusion from them:")
        for trial_id, row in unhealthy:
            print(f"  {trial_id} {row['health']}: {row.get('health_reason') or ''}")
    reasons = [(spec.trial_id, rows[spec.trial_id]["status"], rows[spec.trial_id].get("reason") or "")
               for spec in specs if rows.get(spec.trial_id, {}).get("status") not in (None, "ok")]
    reasons += [(trial_id, "failed", f"attacks: {reason}") for trial_id, reason in sorted(attack_failures.items())]
    if reasons:
        print(f"{len(reasons)} trial(s) did not finish:")
        for trial_id, status, reason in reasons:
            print(f"  {trial_id} {status}: {reason}")
    print(f"results:     {store.uri}")
    for name in (layout.SWEEP_JSON, layout.TRAIN, layout.NOISE, layout.CHECKPOINTS, layout.ATTACKS, layout.GALLERY,
                 layout.REPORT_INDEX):
        print(f"  {name:12s} {store.uri_of(name)}")
    if tracker is not None:
        print(f"MLflow:      {tracker.tracking_uri}  experiment {tracker.experiment_name!r}, "
              f"parent run {tracker.parent_run_id}")
        if tracker.tracking_uri.startswith(("http://", "https://")):
            print(f"             open it at {tracker.ui_url(tracker.tracking_uri)}")
        else:
            print("             open it with: mlflow ui --backend-store-uri " + tracker.tracking_uri)
            print(f"             then {tracker.ui_url('http://127.0.0.1:5000')}")
        if tracker.failures:
            print(f"MLflow: {len(tracker.failures)} logging call(s) failed; re-run the command to back-fill:")
            for failure in tracker.failures[:10]:
                print(f"  {failure}")


def _attack_means(store: Store) -> dict[str, dict[str, float]]:
    from sweep.fanout.stage import read_attack_rows

    frame = read_attack_rows(store, ["trial_id", "mode", "objective"])
    if frame is None:
        return {}
    means = frame.groupby(["trial_id", "mode"])["objective"].mean()
    result: dict[str, dict[str, float]] = {}
    for (trial_id, mode), value in means.items():
        result.setdefault(trial_id, {})[mode] = float(value)
    return result


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if abs(value) >= 1e5 or (0 < abs(value) < 1e-2):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"
