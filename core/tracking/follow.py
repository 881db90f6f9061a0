"""Logging a run to MLflow from the process that supervises it, while it goes and when it ends.

``start_tracking(store, run_id)`` (called by ``core.run.supervisor`` for every run it supervises)
returns None when the run is not tracked (``core.tracking.target``: off by default), else a
``RunTracking`` whose thread opens the MLflow run, logs each new round and training step every
``POLL_S`` seconds from the store's records, and, once ``close()`` says the run has ended, completes
it: final scores, tags, the report and the bundle. The worker process is never involved.

A tracker that fails never fails the run: each failure is a ``"tracking"`` event with ``ok: false``
(the Run page shows the latest one as a warning); the live logging stops at its first failure and is
tried once more, whole, when the run ends (every write is idempotent, so nothing is lost or doubled).
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Any

from core.store import Store
from core.tracking.mlflow import MlflowRunLog
from core.tracking.target import TrackingTarget, tracking_target

logger = logging.getLogger(__name__)

POLL_S = 2.0
EVENT_KIND = "tracking"
MAX_ERROR_CHARS = 300


def start_tracking(store: Store, run_id: int, *, home: str | Path | None = None,
                   parent_run_id: str | None = None) -> RunTracking | None:
    """Start logging run ``run_id`` to MLflow when its config or ``MLFLOW_TRACKING_URI`` asks; None when
    not. ``parent_run_id`` makes it a child run (a sweep's). Never raises: a problem is a warning event."""
    try:
        run = store.get_run(run_id)
        target = tracking_target(run.config, home=home) if run.config is not None else None
        if target is None:
            return None
        tracking = RunTracking(store, run_id, target, home=home, parent_run_id=parent_run_id)
        tracking.start()
        return tracking
    except Exception as e:  # noqa: BLE001 - tracking must never stop a run from starting
        logger.exception("cannot start MLflow tracking of run %s", run_id)
        _warn(store, run_id, f"MLflow logging could not start: {_short(e)}; the run goes on without it")
        return None


def previous_mlflow_run(store: Store, run_id: int, target: TrackingTarget) -> str | None:
    """The MLflow run an earlier supervision of this (resumed) run opened at the same place, if any."""
    for event in reversed(store.list_events(run_id, kinds=[EVENT_KIND])):
        data = event.data or {}
        if data.get("mlflow_run_id") and data.get("uri") == target.shown_uri:
            return str(data["mlflow_run_id"])
    return None


class RunTracking:
    """The thread logging one run to MLflow; ``close()`` when the run has ended."""

    def __init__(self, store: Store, run_id: int, target: TrackingTarget, *, home: str | Path | None = None,
                 parent_run_id: str | None = None, poll_s: float = POLL_S) -> None:
        self.store, self.run_id, self.target, self.home = store, run_id, target, home
        self.log = MlflowRunLog(target, parent_run_id=parent_run_id)
        self.poll_s = poll_s
        self._ended = threading.Event()
        self._opened = False
        self._thread = threading.Thread(target=self._work, name=f"mlflow-run-{run_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float | None = None) -> bool:
        """The run has ended: complete its MLflow run and wait for that (``timeout`` seconds at most);
        False when it is still going."""
        self._ended.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _work(self) -> None:
        store = self.store
        try:
            live = self._open()
            while not self._ended.wait(self.poll_s):
                if live:
                    live = self._step(self.log.sync, "paused")
            self._finish()
        except Exception as e:  # noqa: BLE001 - a bug here must not take the supervising thread down
            logger.exception("MLflow tracking of run %s failed", self.run_id)
            _warn(store, self.run_id, f"MLflow logging failed: {_short(e)}")
        finally:
            store.close()  # this thread's connection

    def _open(self) -> bool:
        return self._step(self._open_run, "could not start")

    def _open_run(self, store: Store, run_id: int) -> None:
        """Open the MLflow run: the one this tracker or an earlier supervision of the run began, else a new one."""
        previous = self.log.run_id or previous_mlflow_run(store, run_id, self.target)
        if self.log.parent_run_id is None and previous is None:  # a sweep's child nests under the sweep's run
            from core.tracking.sweep import sweep_parent_run

            self.log.parent_run_id = sweep_parent_run(store, run_id, self.target)
        mlflow_id = self.log.open(store.get_run(run_id), previous)
        self._opened = True
        verb = "continuing" if previous == mlflow_id else "logging to"
        store.add_event(run_id, EVENT_KIND, f"{verb} MLflow run {mlflow_id} ({self.target.describe()})",
                        self._data(ok=True))

    def _step(self, action: Any, what: str) -> bool:
        """Run ``action(store, run_id)``; on failure, a warning event and False."""
        try:
            action(self.store, self.run_id)
            return True
        except Exception as e:  # noqa: BLE001 - a tracking server that is down, a full disk...
            logger.warning("MLflow logging of run %s %s: %s", self.run_id, what, _short(e))
            _warn(self.store, self.run_id, f"MLflow logging {what}: {_short(e)} ({self.target.describe()}); "
                                           "the run goes on, and the logging is tried again when it ends",
                  self._data(ok=False))
            return False

    def _finish(self) -> None:
        store, run_id = self.store, self.run_id
        try:
            if not self._opened:
                self._open_run(store, run_id)
            run = store.get_run(run_id)
            problems = self.log.finish(store, run, self.home)
        except Exception as e:  # noqa: BLE001
            logger.warning("run %s was not logged to MLflow: %s", run_id, _short(e))
            _warn(store, run_id, f"the run was not logged to MLflow: {_short(e)} ({self.target.describe()})",
                  self._data(ok=False))
            return
        if problems:
            _warn(store, run_id, f"MLflow run {self.log.run_id} is missing " + "; ".join(_short(p) for p in problems),
                  self._data(ok=False))
            return
        artifacts = ", ".join(self.log.artifacts) or "no artifacts"
        store.add_event(run_id, EVENT_KIND, f"logged to MLflow run {self.log.run_id}: {self.log.rounds_logged} "
                        f"round(s); {artifacts} ({self.target.describe()})", self._data(ok=True))

    def _data(self, *, ok: bool) -> dict[str, Any]:
        return {"ok": ok, "uri": self.target.shown_uri, "experiment": self.target.experiment,
                "mlflow_run_id": self.log.run_id}


def _short(error: Any) -> str:
    """One line about ``error``; a server that cannot be reached is said so, with the system's reason."""
    text = " ".join(str(error).split())
    if "Max retries exceeded" in text:
        reason = re.search(r"\[Errno -?\d+\] ([^\"')]+)", text)
        why = reason.group(1).strip() if reason else ("timed out" if "timed out" in text.lower() else "no answer")
        return f"the tracking server cannot be reached ({why})"
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "…"


def _warn(store: Store, run_id: int, message: str, data: dict[str, Any] | None = None) -> None:
    try:
        store.add_event(run_id, EVENT_KIND, message, data or {"ok": False})
    except Exception:  # noqa: BLE001 - the store itself failing is the supervisor's to report
        logger.exception("cannot record the tracking warning of run %s", run_id)
