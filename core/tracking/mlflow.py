"""One MLflow run per Studio run, written through ``MlflowClient`` from the store's records.

No global MLflow state (``mlflow.start_run``, autolog): several runs may be logged at once by one
process, each with its own ``MlflowRunLog``. What it writes:

* parameters: the run configuration flattened (``lms.large.model``...), as the store keeps it: typed
  API keys are never part of it and key-like values are redacted again here;
* metrics: ``val_score`` per round (step = round index, 0 = baseline), ``loss/<model>`` per training
  step (step = that model's training steps counted over the run), and at the end ``val_baseline_score``,
  ``val_best_score``, ``test_baseline_score``, ``test_best_score``;
* tags: ``studio.run_id``, ``studio.strategy``, ``studio.status``, ``studio.best_strategy``;
  ``mlflow.parentRunId`` when a parent run is given (the seam for a sweep's child runs);
* artifacts: ``report.html`` (``core.evidence.report``) and ``bundle/``, the exported bundle
  (``core.bundles.export``), which loads back with ``load_bundle``.

Every write is idempotent against what the MLflow run already holds, so a resumed Studio run continues
its MLflow run. MLflow is imported on first use only (about 2 s): runs that are not tracked never load it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from core.config.schema import config_to_dict
from core.store import Store
from core.store.records import Run, RunStatus
from core.store.secrets import REDACTED, redact, redact_value
from core.tracking.target import TrackingTarget

logger = logging.getLogger(__name__)

BOUNDED_CLIENT = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",  # MLflow's default, 7 retries with backoff 2, waits about 4 minutes
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",  # seconds per request (default 120)
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow 3 reports usage to its makers unless told not to
}
"""Set for this process before MLflow loads, unless the user set them: a tracking server that is down
costs about 3 s per attempt (connection refused), not minutes."""

VAL_SCORE = "val_score"
LOSS_PREFIX = "loss/"
FINAL_SCORES = {"val_baseline_score": "baseline_score", "val_best_score": "best_score",
                "test_baseline_score": "test_baseline_score", "test_best_score": "test_best_score"}
MLFLOW_STATUS = {RunStatus.FINISHED: "FINISHED", RunStatus.FAILED: "FAILED", RunStatus.CANCELLED: "KILLED",
                 RunStatus.INTERRUPTED: "KILLED"}
MAX_PARAM_CHARS = 6000  # MLflow's limits
MAX_KEY_CHARS = 250
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000

_setup_lock = threading.Lock()
_local_lock = threading.RLock()
"""One writer at a time to a local SQLite store in this process (SQLite allows one)."""


def prepare_mlflow() -> None:
    """Set ``BOUNDED_CLIENT`` and load MLflow (its import reads the telemetry setting): before any MLflow import."""
    with _setup_lock:
        for name, value in BOUNDED_CLIENT.items():
            os.environ.setdefault(name, value)
        try:
            import mlflow  # noqa: F401
        except ImportError as e:
            raise RuntimeError(f"MLflow is not installed ({e}); install the pinned mlflow-skinny of "
                               "requirements.txt") from e


def mlflow_client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri``, with the bounded retries of ``BOUNDED_CLIENT``."""
    prepare_mlflow()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _segment(part: Any) -> str:
    """One part of a parameter or metric name, in the characters MLflow takes (no dots: they join parts)."""
    return re.sub(r"[^\w\- :]", "_", str(part)).strip() or "_"


def flat_params(config: dict[str, Any]) -> dict[str, str]:
    """The configuration document as MLflow parameters: ``{"lms": {"large": {"model": m}}}`` ->
    ``{"lms.large.model": m}``; lists and scalars as JSON text, strings as they are, cut to MLflow's limit."""
    out: dict[str, str] = {}

    def walk(value: Any, path: list[str]) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                walk(item, [*path, _segment(key)])
            return
        key = ".".join(path)[:MAX_KEY_CHARS]
        while key in out:  # two names that only differed in characters MLflow refuses
            key = key[:MAX_KEY_CHARS - 2] + "_"
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
        out[key] = text[:MAX_PARAM_CHARS]

    walk(config, [])
    return out


def loss_key(model: str) -> str:
    return LOSS_PREFIX + re.sub(r"[^\w\-.]", "_", str(model))[:MAX_KEY_CHARS - len(LOSS_PREFIX)]


def _millis(iso: str | None) -> int:
    if not iso:
        return int(datetime.now().timestamp() * 1000)
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class MlflowRunLog:
    """The MLflow run of one Studio run: ``open`` it, ``sync`` while the run goes, ``finish`` at its end."""

    def __init__(self, target: TrackingTarget, *, parent_run_id: str | None = None) -> None:
        self.target = target
        self.parent_run_id = parent_run_id
        self.run_id: str | None = None
        self._client: Any = None
        self._rounds: set[int] = set()  # round indexes already handled
        self._steps: dict[str, int] = {}  # loss key -> training steps counted in the store's events so far
        self._logged: dict[str, int] = {}  # loss key -> the last step the MLflow run already held when opened
        self._last_event = 0
        self.artifacts: list[str] = []  # what ``finish`` logged: "report.html", "bundle/"

    @property
    def rounds_logged(self) -> int:
        return len(self._rounds)

    def _lock(self) -> Any:
        return _local_lock if self.target.uri.startswith("sqlite:") else contextlib.nullcontext()

    # -- open -----------------------------------------------------------------------------------

    def open(self, run: Run, previous: str | None = None) -> str:
        """Create the MLflow run of ``run`` (or continue ``previous``, the one an earlier supervision of a
        resumed run opened); returns its id."""
        prepare_mlflow()
        from mlflow.entities import Param, RunTag

        if REDACTED in self.target.uri:  # the store keeps a config's URI with its credentials redacted
            raise ValueError("the tracking URI held credentials, which the Studio never stores; give them in "
                             "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
        with self._lock():
            client = self._client = self._client or mlflow_client(self.target.uri)
            existing = self._existing(previous)
            if existing is not None:
                self.run_id = existing.info.run_id
                client.update_run(self.run_id, status="RUNNING")
                self._load_logged(existing)
                if existing.data.params:
                    return self.run_id
            else:
                tags = {"studio.run_id": str(run.id), "studio.strategy": run.strategy or "",
                        "studio.status": run.status.value}
                if self.parent_run_id:
                    tags["mlflow.parentRunId"] = self.parent_run_id
                created = client.create_run(self._experiment_id(), tags=tags, run_name=f"#{run.id} {run.name}"[:250])
                self.run_id = created.info.run_id
            if run.config is not None:
                params = [Param(k, v) for k, v in flat_params(redact_value(config_to_dict(run.config))).items()]
                for chunk in _chunks(params, PARAMS_PER_BATCH):
                    client.log_batch(self.run_id, params=chunk)
            else:
                client.log_batch(self.run_id, tags=[RunTag("studio.config_problem", redact(run.config_problem or ""))])
        return self.run_id

    def _existing(self, previous: str | None) -> Any:
        if not previous:
            return None
        from mlflow.exceptions import MlflowException

        try:
            found = self._client.get_run(previous)
        except MlflowException:  # deleted meanwhile, or another store: start a new one
            return None
        return None if found.info.lifecycle_stage == "deleted" else found

    def _experiment_id(self) -> str:
        client, name = self._client, self.target.experiment
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        root = self.target.local_artifact_root()
        location = None if root is None else str(root)
        return client.create_experiment(name, artifact_location=location)

    def _load_logged(self, existing: Any) -> None:
        """What a continued MLflow run already holds: its rounds and the last step of each loss."""
        client = self._client
        self._rounds = {int(m.step) for m in client.get_metric_history(self.run_id, VAL_SCORE)}
        for key in existing.data.metrics:
            if key.startswith(LOSS_PREFIX):
                self._logged[key] = max((int(m.step) for m in client.get_metric_history(self.run_id, key)), default=0)

    # -- while the run goes ------------------------------------------------------------------------

    def sync(self, store: Store, run_id: int) -> int:
        """Log the rounds and training steps recorded since the last sync; returns how many points it sent.
        Nothing is counted as sent unless MLflow took it (a failed sync is redone whole by the next one)."""
        prepare_mlflow()
        from mlflow.entities import Metric

        metrics: list[Any] = []
        rounds = set(self._rounds)
        for round_ in store.list_rounds(run_id):
            if round_.index in rounds:
                continue
            rounds.add(round_.index)
            if round_.score is not None and not round_.eval_failed:
                metrics.append(Metric(VAL_SCORE, float(round_.score), _millis(round_.finished_at), round_.index))
        steps, last = dict(self._steps), self._last_event
        for event in store.list_events(run_id, since_id=self._last_event, kinds=["train"]):
            last = event.id
            loss, model = event.data.get("loss"), event.data.get("model")
            if loss is None or model is None:
                continue
            key = loss_key(model)
            steps[key] = steps.get(key, 0) + 1
            if steps[key] > self._logged.get(key, 0):
                metrics.append(Metric(key, float(loss), _millis(event.time), steps[key]))
        with self._lock():
            for chunk in _chunks(metrics, METRICS_PER_BATCH):
                self._client.log_batch(self.run_id, metrics=chunk)
        self._rounds, self._steps, self._last_event = rounds, steps, last
        return len(metrics)

    # -- at the end ------------------------------------------------------------------------------

    def finish(self, store: Store, run: Run, home: str | Path | None = None) -> list[str]:
        """Log what is left, the final scores, tags and the artifacts, and end the MLflow run with the Studio
        run's status. Returns the problems with single artifacts (the rest is logged all the same)."""
        prepare_mlflow()
        from mlflow.entities import Metric, RunTag

        self.sync(store, run.id)
        now = _millis(run.finished_at)
        metrics = [Metric(name, float(value), now, 0) for name, attr in FINAL_SCORES.items()
                   if (value := getattr(run, attr)) is not None]
        tags = [RunTag("studio.status", run.status.value)]
        if run.best_score is not None:
            tags.append(RunTag("studio.best_strategy", run.best_strategy or "baseline"))
        with self._lock():
            self._client.log_batch(self.run_id, metrics=metrics, tags=tags)
        problems = self._artifacts(store, run, home)
        with self._lock():
            self._client.set_terminated(self.run_id, status=MLFLOW_STATUS.get(run.status, "FINISHED"))
        return problems

    def _artifacts(self, store: Store, run: Run, home: str | Path | None) -> list[str]:
        from core.bundles.export import ExportError, export_run
        from core.evidence.report import write_report

        problems: list[str] = []
        work_root = Path(home) if home else None  # beside the weights: a bundle may be large for /tmp
        if work_root is not None:
            work_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"mlflow-run-{run.id}-", dir=work_root) as work:
            try:
                report = write_report(store, run.id, Path(work) / "report.html")
                with self._lock():
                    self._client.log_artifact(self.run_id, str(report))
                self.artifacts.append("report.html")
            except Exception as e:  # noqa: BLE001 - one artifact failing leaves the others
                logger.warning("the report of run %s was not logged to MLflow: %s", run.id, e)
                problems.append(f"the report: {e}")
            try:
                bundle = export_run(store, run.id, Path(work) / "bundle", as_zip=False)
                with self._lock():
                    self._client.log_artifacts(self.run_id, str(bundle), "bundle")
                self.artifacts.append("bundle/")
            except ExportError as e:  # no best program (failed before its baseline): nothing to export
                logger.info("no bundle of run %s for MLflow: %s", run.id, e)
            except Exception as e:  # noqa: BLE001
                logger.warning("the bundle of run %s was not logged to MLflow: %s", run.id, e)
                problems.append(f"the bundle: {e}")
        return problems
