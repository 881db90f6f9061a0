"""Tracking: a Studio run mirrored into an experiment tracker (MLflow), written from the store's records.

- ``target``: whether a run is tracked and where (the config's ``tracking`` field or ``MLFLOW_TRACKING_URI``),
  without importing MLflow;
- ``mlflow``: ``MlflowRunLog``, one MLflow run per Studio run through ``MlflowClient`` (no global MLflow state);
- ``follow``: ``start_tracking``, the thread of the supervising process that logs a run while it goes and
  completes it when it ends; a tracker that fails becomes a warning event, never a failed run.
"""

from core.tracking.target import TrackingTarget, tracking_target

__all__ = ["TrackingTarget", "tracking_target"]
