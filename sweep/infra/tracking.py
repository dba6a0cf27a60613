"""MLflow tracking, from the driver only.

Trials never talk to MLflow: they report to Tune, and this module (in the driver) logs what
they report, so parallel trials never fight over one SQLite file. One experiment per sweep
name, a parent run for the sweep, and one nested child run per trial, found again on resume by
its ``trial_id`` tag so that a re-run never makes a second run for a trial.

If the tracking server goes away mid-sweep, logging calls fail; they are counted and reported
at the end instead of stopping the sweep, and ``backfill`` logs what the results folder holds.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from results import records
from results.errors import UserError
from results.schema import GRID_FIELDS
from results.store import Store
from sweep.config import SweepConfig

log = logging.getLogger(__name__)

PARENT_TAG = "seatbelt.role"
# Without this tag MLflow 3's UI opens an experiment on its GenAI traces overview ("No data
# available") and a researcher must find the "Model training" switch to see any run.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}

# MLflow's REST client retries a refused connection 7 times with back-off 2 (about four
# minutes per call). The tracker retries on its own and the results are safe in Parquet, so a
# lost server should cost seconds, not minutes per call. A user's own settings win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def open_tracker(store: Store, cfg: SweepConfig, given_uri: str | None) -> "Tracker":
    """The tracker of the sweep that writes ``store``: at the URI ``results.records.tracking_uri``
    picks (``given_uri``, else the one in the folder's ``tracking.json``, else MLflow's default),
    continuing the parent run named there. Both sweep CLIs open it this way."""
    stored = records.read_tracking(store)
    return Tracker(records.tracking_uri(given_uri, stored), cfg.name, cfg.to_dict(),
                   parent_run_id=stored.get("parent_run_id"))


class Tracker:
    """The sweep's MLflow experiment, parent run and child runs."""

    def __init__(self, tracking_uri: str | None, sweep_name: str, config: dict[str, Any],
                 parent_run_id: str | None = None, retries: int = 3, pause_seconds: float = 30.0):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.retries = retries
        self.failures: list[str] = []
        # After two logging calls in a row failed every retry, the store is taken to be down:
        # calls fail at once (counted) for pause_seconds, then one call tries again.
        self.pause_seconds = pause_seconds
        self._failed_in_a_row = 0
        self._paused_until = 0.0
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        self.tracking_uri = mlflow.get_tracking_uri()
        if self.tracking_uri.startswith(("http://", "https://")):
            for name, value in HTTP_DEFAULTS.items():
                os.environ.setdefault(name, value)
        self.client = MlflowClient(self.tracking_uri)
        self.experiment_name = sweep_name
        try:
            experiment = self.client.get_experiment_by_name(sweep_name)
            self.experiment_id = (
                experiment.experiment_id if experiment else self.client.create_experiment(sweep_name)
            )
        except Exception as exc:  # any failure to reach the store, before work starts
            raise UserError(
                f"cannot reach the MLflow tracking store at {self.tracking_uri} ({type(exc).__name__}: "
                f"{str(exc)[:200]}); start it, pass another --tracking-uri, or use --no-tracking"
            ) from None
        for key, value in EXPERIMENT_TAGS.items():
            self._call("tag the experiment",
                       lambda k=key, v=value: self.client.set_experiment_tag(self.experiment_id, k, v))
        self.parent_run_id = self._parent(parent_run_id, config)
        self.children = self._existing_children()

    # --- runs --------------------------------------------------------------------------

    def _parent(self, parent_run_id: str | None, config: dict[str, Any]) -> str:
        if parent_run_id:
            try:
                run = self.client.get_run(parent_run_id)
                if run.info.experiment_id == self.experiment_id:
                    self.client.update_run(parent_run_id, status="RUNNING")
                    return parent_run_id
            except Exception:
                log.warning("parent run %s not found; starting a new one", parent_run_id)
        run = self.client.create_run(
            self.experiment_id, run_name=f"sweep-{self.experiment_name}", tags={PARENT_TAG: "sweep"}
        )
        run_id = run.info.run_id
        flat = _flatten(config)
        self.client.log_batch(run_id, params=_params(flat))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "sweep_config.json"
            path.write_text(json.dumps(config, indent=2, sort_keys=True))
            self.client.log_artifact(run_id, str(path))
        return run_id

    def _existing_children(self) -> dict[str, str]:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'",
            max_results=50_000,
        )
        children: dict[str, str] = {}
        for run in sorted(runs, key=lambda r: r.info.start_time):
            trial_id = run.data.tags.get("trial_id")
            if trial_id and trial_id not in children:
                children[trial_id] = run.info.run_id
        return children

    def child(self, trial: dict[str, Any]) -> str | None:
        """The run of a trial, created with its grid fields as params and tags if it is new."""
        trial_id = trial["trial_id"]
        if trial_id in self.children:
            return self.children[trial_id]

        def create() -> str:
            tags = {"mlflow.parentRunId": self.parent_run_id, "trial_id": trial_id,
                    **{name: str(trial[name]) for name in GRID_FIELDS}}
            run = self.client.create_run(self.experiment_id, run_name=trial_id, tags=tags)
            params = {name: trial[name] for name in (*GRID_FIELDS, "trial_id")}
            self.client.log_batch(run.info.run_id, params=_params(params))
            return run.info.run_id

        run_id = self._call(f"create run for {trial_id}", create)
        if run_id:
            self.children[trial_id] = run_id
        return run_id

    def forget(self, trial: dict[str, Any], reason: str) -> None:
        """Delete a trial's run (MLflow keeps it recoverable, tagged with ``reason``), so the
        trial's next run is its only one: used when its results are thrown away and redone."""
        run_id = self.children.pop(trial["trial_id"], None)
        if run_id is None:
            return

        def delete() -> None:
            self.client.set_tag(run_id, "seatbelt.deleted_because", reason[:5000])
            self.client.delete_run(run_id)

        self._call(f"delete the old run of {trial['trial_id']}", delete)

    # --- logging -----------------------------------------------------------------------

    def log_metrics(self, trial: dict[str, Any], metrics: dict[str, Any], step: int | None = None) -> None:
        run_id = self.child(trial)
        if run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [
            Metric(key, float(value), now, step or 0)
            for key, value in metrics.items()
            if _is_number(value)
        ]
        for start in range(0, len(entries), 500):  # MLflow's batch limit is 1000 metrics
            batch = entries[start : start + 500]
            self._call(f"log metrics of {trial['trial_id']}",
                       lambda: self.client.log_batch(run_id, metrics=batch))

    def finish(self, trial: dict[str, Any], status: str = "FINISHED", tags: dict[str, str] | None = None) -> None:
        run_id = self.child(trial)
        if run_id is None:
            return
        for key, value in (tags or {}).items():
            self._call(f"tag {trial['trial_id']}", lambda k=key, v=value: self.client.set_tag(run_id, k, v))
        self._call(f"close run of {trial['trial_id']}", lambda: self.client.set_terminated(run_id, status))

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        self._call("log artifacts", lambda: self.client.log_artifacts(self.parent_run_id, local_dir, artifact_path))

    @property
    def artifacts_unreachable(self) -> str | None:
        """Why this client cannot reach the experiment's artifacts, if it cannot: runs made
        through a tracking server keep them behind it (``mlflow-artifacts:/``), which a client
        of the server's database directly cannot write."""
        if not hasattr(self, "_artifacts_unreachable"):
            location = self._call("read the experiment", lambda: self.client.get_experiment(self.experiment_id))
            where = getattr(location, "artifact_location", "") or ""
            self._artifacts_unreachable = None
            if where.startswith("mlflow-artifacts:") and not self.tracking_uri.startswith(("http://", "https://")):
                self._artifacts_unreachable = (
                    f"the experiment's artifacts are served by a tracking server ({where}); pass its "
                    "URL with --tracking-uri to log the trials' model files")
        return self._artifacts_unreachable

    def artifacts_of(self, trial: dict[str, Any]) -> set[str] | None:
        """The top-level artifact paths of a trial's run (None if they cannot be listed)."""
        run_id = self.child(trial)
        if run_id is None or self.artifacts_unreachable:
            return None
        listed = self._call(f"list artifacts of {trial['trial_id']}", lambda: self.client.list_artifacts(run_id))
        return None if listed is None else {item.path for item in listed}

    def log_trial_artifact(self, trial: dict[str, Any], local_path: str | Path,
                           artifact_path: str | None = None) -> None:
        run_id = self.child(trial)
        if run_id is not None:
            self._call(f"log {Path(local_path).name} to {trial['trial_id']}",
                       lambda: self.client.log_artifact(run_id, str(local_path), artifact_path))

    def log_results(self, datasets: dict[str, tuple[str, Any]]) -> None:
        """Link the sweep's Parquet datasets to the parent run as its dataset inputs: name ->
        (URI, pyarrow schema). Logging the same ones again adds nothing."""
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for name, (uri, schema) in datasets.items():
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": all the same class
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(uri)
            dataset = MetaDataset(source, name=name, schema=_mlflow_schema(schema))
            inputs.append(DatasetInput(dataset._to_mlflow_entity(),
                                       tags=[InputTag("mlflow.data.context", "results")]))
        self._call("log the results datasets", lambda: self.client.log_inputs(self.parent_run_id, datasets=inputs))

    def close(self, status: str = "FINISHED") -> None:
        self._call("close the sweep run", lambda: self.client.set_terminated(self.parent_run_id, status))

    def _call(self, what: str, action: Callable[[], Any]) -> Any:
        """Run one logging call, retrying with back-off; a call that keeps failing is counted,
        not raised, so a lost tracking server never stops a sweep (nor slows it: while the
        store looks down, calls are counted without waiting on it; a re-run back-fills)."""
        if time.monotonic() < self._paused_until:
            self.failures.append(f"{what}: skipped, the tracking store was unreachable")
            return None
        retries = 1 if self._failed_in_a_row >= 2 else self.retries  # probing a store that was down
        for attempt in range(retries):
            try:
                result = action()
                self._failed_in_a_row = 0
                return result
            except Exception as exc:  # the server or database can fail in many ways
                if attempt == retries - 1:
                    self.failures.append(f"{what}: {type(exc).__name__}: {str(exc)[:120]}")
                    log.warning("MLflow: could not %s (%s)", what, exc)
                    self._failed_in_a_row += 1
                    if self._failed_in_a_row >= 2:
                        self._paused_until = time.monotonic() + self.pause_seconds
                    return None
                time.sleep(0.5 * 2**attempt)
        return None

    def ui_url(self, server: str) -> str:
        """The experiment's page in ``mlflow ui`` at ``server``, on its runs. MLflow 3.17's UI
        picks GenAI or model-training pages by a switch it keeps per browser (GenAI first) and
        reads this URL's ``workflowType`` for it; the experiment's kind tag serves other UIs."""
        return f"{server.rstrip('/')}/#/experiments/{self.experiment_id}?workflowType=machine_learning"

    def info(self) -> dict[str, str]:
        return {
            "tracking_uri": self.tracking_uri,
            "experiment_name": self.experiment_name,
            "experiment_id": self.experiment_id,
            "parent_run_id": self.parent_run_id,
        }


def _mlflow_schema(schema):
    """A pyarrow schema as MLflow's (what the UI shows beside a dataset input)."""
    import pyarrow as pa
    from mlflow.types import DataType
    from mlflow.types.schema import Array, ColSpec, Schema

    def kind(arrow_type):
        if pa.types.is_list(arrow_type):
            return Array(kind(arrow_type.value_type))
        for test, mlflow_type in ((pa.types.is_string, DataType.string), (pa.types.is_boolean, DataType.boolean),
                                  (pa.types.is_integer, DataType.long), (pa.types.is_floating, DataType.double),
                                  (pa.types.is_binary, DataType.binary)):
            if test(arrow_type):
                return mlflow_type
        return DataType.string

    return Schema([ColSpec(kind(field.type), field.name) for field in schema])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _params(values: dict[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(key, str(value)[:6000]) for key, value in values.items()]
