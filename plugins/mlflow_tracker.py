"""The `mlflow` tracker (`--track mlflow`): each training run is a run of an MLflow experiment.

Where: ``[tracking] options.mlflow.uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's own local
default, the SQLite store ``./mlflow.db`` (what `mlflow ui` run in the same folder opens; MLflow 3.7
put its older file store, ``./mlruns``, in maintenance mode: a ``file:`` URI works where
MLFLOW_ALLOW_FILE_STORE=true says so, as MLflow asks). Credentials for a server go
in MLflow's own variables (MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME and _PASSWORD), never
in the config. MLflow is imported only when a run is tracked.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from pathlib import Path

from emkit.hookspecs import hookimpl

PARAM_LIMIT = 6000  # characters MLflow keeps of a parameter's value
BATCH = 1000  # metrics per request, MLflow's limit


class MlflowTracker:
    name = "mlflow"
    description = "MLflow: an experiment per emkit experiment, a run per training run (pip install 'emkit[mlflow]')"
    options = ("uri",)  # [tracking] options.mlflow

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("mlflow") is None:
            return "MLflow is not installed here; pip install 'emkit[mlflow]'."
        return None

    def open(self, options: dict, run_path: Path):
        return MlflowSession(tracking_uri(options))


def tracking_uri(options: dict) -> str:
    uri = options.get("uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(Path.cwd() / 'mlflow.db').resolve()}"


class MlflowSession:
    def __init__(self, uri: str):
        # A server that does not answer should cost seconds, not MLflow's default minutes of
        # retries: a tracker's failure is a warning and the run goes on (the user's values win).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        # MLflow's own INFO lines (a new database's tables, ...) are not the run's news
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.target = uri
        self._experiments: dict[str, str] = {}

    def _experiment_id(self, name: str) -> str:
        if name not in self._experiments:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                self._experiments[name] = self.client.create_experiment(name)
            else:
                if found.lifecycle_stage == "deleted":  # deleted in the UI: its name is taken until restored
                    self.client.restore_experiment(found.experiment_id)
                self._experiments[name] = found.experiment_id
        return self._experiments[name]

    def start(self, run) -> str:
        from mlflow.entities import Param, RunStatus
        from mlflow.exceptions import MlflowException

        if run.tracked_id:
            try:
                existing = self.client.get_run(run.tracked_id)
            except MlflowException:  # gone from this store (deleted and collected)
                existing = None
            if existing is not None and existing.info.lifecycle_stage != "deleted":
                self.client.update_run(run.tracked_id, status=RunStatus.to_string(RunStatus.RUNNING))
                return run.tracked_id
        created = self.client.create_run(self._experiment_id(run.experiment), run_name=run.key, tags=run.tags)
        params = [Param(key, value[:PARAM_LIMIT]) for key, value in sorted(run.params.items())]
        for start in range(0, len(params), 100):  # MLflow takes 100 parameters a request
            self.client.log_batch(created.info.run_id, params=params[start:start + 100])
        return created.info.run_id

    def log_metrics(self, tracked_id: str, points) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for step, values in points for key, value in values.items()]
        for start in range(0, len(metrics), BATCH):
            self.client.log_batch(tracked_id, metrics=metrics[start:start + BATCH])

    def log_artifact(self, tracked_id: str, path: Path, folder: str) -> None:
        if path.is_dir():
            self.client.log_artifacts(tracked_id, str(path), artifact_path=folder)
        else:
            self.client.log_artifact(tracked_id, str(path), artifact_path=folder)

    def finish(self, tracked_id: str, status: str) -> None:
        if status == "running":
            return  # the emkit run goes on later (resumed): the MLflow run stays open
        self.client.set_terminated(tracked_id, "FINISHED" if status == "finished" else "FAILED")

    def close(self) -> None:
        pass


@hookimpl
def register_trackers(register):
    register(MlflowTracker())
