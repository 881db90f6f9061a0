"""A sweep in MLflow: one parent run per sweep, its child runs nested under it.

The sweep's driver (``core.run.sweep``) opens the parent when the sweep starts (``start_sweep_tracking``)
and completes it when the sweep ends: per strategy the mean and sd of its test scores, one point per
seed, the verdict of the best strategy against each other one, tags for status and best strategy, and
the sweep summary as an artifact. Each child run is logged by its own supervisor as for any run
(``core.tracking.follow``); it finds its parent by the ``studio.sweep_id`` tag, so a resumed sweep
continues the same parent. Like a run's tracking, it never fails the sweep: a problem is a warning in
the log of the process (each child's Run page shows its own tracking warnings).
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

from core.config.schema import config_to_dict
from core.store import Store
from core.store.secrets import redact_value
from core.store.sweep_records import Sweep
from core.tracking.mlflow import (
    MAX_KEY_CHARS,
    MLFLOW_STATUS,
    PARAMS_PER_BATCH,
    _chunks,
    _local_lock,
    flat_params,
    mlflow_client,
    prepare_mlflow,
)
from core.tracking.target import TrackingTarget, tracking_target

logger = logging.getLogger(__name__)

SWEEP_TAG = "studio.sweep_id"
KIND_TAG = "studio.kind"
SUMMARY_FILE = "sweep_summary.json"


def strategy_key(prefix: str, strategy: str) -> str:
    """A metric name for a strategy (``test_mean/p_-_w_-_p``): MLflow takes letters, digits, ``_-./`` and spaces."""
    name = re.sub(r"\s*->\s*", " then ", strategy.strip()) or "baseline"
    return (prefix + re.sub(r"[^\w\-. ]", "_", name))[:MAX_KEY_CHARS]


class SweepRunLog:
    """The parent MLflow run of one sweep."""

    def __init__(self, target: TrackingTarget) -> None:
        self.target = target
        self.run_id: str | None = None
        self._client: Any = None

    def _lock(self) -> Any:
        import contextlib

        return _local_lock if self.target.uri.startswith("sqlite:") else contextlib.nullcontext()

    def _connect(self) -> Any:
        prepare_mlflow()
        self._client = self._client or mlflow_client(self.target.uri)
        return self._client

    def find(self, sweep_id: int) -> str | None:
        """The parent run of sweep ``sweep_id`` in this target's experiment, if it was opened."""
        client = self._connect()
        with self._lock():
            experiment = client.get_experiment_by_name(self.target.experiment)
            if experiment is None:
                return None
            found = client.search_runs([experiment.experiment_id],
                                       filter_string=f"tags.`{SWEEP_TAG}` = '{int(sweep_id)}'", max_results=1)
        return found[0].info.run_id if found else None

    def open(self, sweep: Sweep) -> str:
        """Create the parent run of ``sweep`` (or continue the one a first start of it opened)."""
        from mlflow.entities import Param

        from core.tracking.mlflow import MlflowRunLog

        self.run_id = self.find(sweep.id)
        client = self._connect()
        with self._lock():
            if self.run_id is not None:
                client.update_run(self.run_id, status="RUNNING")
                return self.run_id
            experiment = MlflowRunLog(self.target)
            experiment._client = client
            created = client.create_run(experiment._experiment_id(), run_name=f"sweep #{sweep.id} {sweep.name}"[:250],
                                        tags={SWEEP_TAG: str(sweep.id), KIND_TAG: "sweep",
                                              "studio.status": sweep.status.value})
            self.run_id = created.info.run_id
            if sweep.config is not None:
                params = [Param(k, v) for k, v in flat_params(redact_value(config_to_dict(sweep.config))).items()]
                for chunk in _chunks(params, PARAMS_PER_BATCH):
                    client.log_batch(self.run_id, params=chunk)
        return self.run_id

    def finish(self, sweep: Sweep) -> None:
        """Log the summary's scores, verdicts and tags, the summary file, and end the parent run."""
        from mlflow.entities import Metric, RunTag

        client = self._connect()
        summary = sweep.summary
        metrics: list[Any] = []
        tags = [RunTag("studio.status", sweep.status.value)]
        if summary is not None:
            for result in summary.results:
                if result.mean is not None:
                    metrics.append(Metric(strategy_key("test_mean/", result.strategy), float(result.mean), 0, 0))
                if result.sd is not None:
                    metrics.append(Metric(strategy_key("test_sd/", result.strategy), float(result.sd), 0, 0))
                for seed in result.seeds:
                    if seed.test_score is not None:
                        metrics.append(Metric(strategy_key("test/", result.strategy), float(seed.test_score), 0,
                                              int(seed.seed)))
            if summary.best:
                tags.append(RunTag("studio.best_strategy", summary.best))
            verdicts = [c.sentence for c in summary.comparisons if c.sentence]
            if verdicts:
                tags.append(RunTag("studio.verdict", " | ".join(verdicts)[:5000]))
        with self._lock():
            client.log_batch(self.run_id, metrics=metrics, tags=tags)
            if summary is not None:
                with tempfile.TemporaryDirectory(prefix=f"mlflow-sweep-{sweep.id}-") as work:
                    path = Path(work) / SUMMARY_FILE
                    path.write_text(json.dumps(summary.to_json(), indent=2), encoding="utf-8")
                    client.log_artifact(self.run_id, str(path))
            client.set_terminated(self.run_id, status=MLFLOW_STATUS.get(sweep.status, "FINISHED")
                                  if sweep.status.is_terminal else "RUNNING")


class SweepTracking:
    """What the sweep's driver holds: ``close()`` when the sweep has ended."""

    def __init__(self, store: Store, sweep_id: int, log: SweepRunLog) -> None:
        self.store, self.sweep_id, self.log = store, sweep_id, log

    def close(self) -> None:
        try:
            sweep = self.store.get_sweep(self.sweep_id)
            if self.log.run_id is None:
                self.log.open(sweep)
            self.log.finish(sweep)
        except Exception as e:  # noqa: BLE001 - tracking never fails the sweep
            logger.warning("sweep %s was not completed in MLflow (%s): %s", self.sweep_id, self.log.target.describe(),
                           " ".join(str(e).split())[:300])


def start_sweep_tracking(store: Store, sweep_id: int, *, home: str | Path | None = None) -> SweepTracking | None:
    """Open the parent MLflow run of sweep ``sweep_id`` when its config or ``MLFLOW_TRACKING_URI`` asks;
    None when not tracked. Never raises: the children then log as runs of their own."""
    try:
        sweep = store.get_sweep(sweep_id)
        target = tracking_target(sweep.config, home=home) if sweep.config is not None else None
        if target is None:
            return None
        log = SweepRunLog(target)
        tracking = SweepTracking(store, sweep_id, log)
        log.open(sweep)
        return tracking
    except Exception as e:  # noqa: BLE001
        logger.warning("sweep %s: MLflow logging could not start: %s", sweep_id, " ".join(str(e).split())[:300])
        return None


def sweep_parent_run(store: Store, run_id: int, target: TrackingTarget) -> str | None:
    """The parent MLflow run of run ``run_id`` when it is a sweep's child and the sweep is tracked there."""
    child = store.sweep_of_run(run_id)
    if child is None:
        return None
    return SweepRunLog(target).find(child.sweep_id)

