"""The configuration's ``tracking`` field: whether and where a run is logged to MLflow (``core.tracking``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TrackingSpec(BaseModel):
    """``mlflow``: true on, false off, null (the default) on when a tracking URI is given here or in
    ``MLFLOW_TRACKING_URI``; ``experiment`` defaults to ``MLFLOW_EXPERIMENT_NAME``, else 'BetterTogether Studio'
    (docs/config.md)."""

    model_config = ConfigDict(extra="forbid")

    mlflow: bool | None = None
    tracking_uri: str | None = Field(None, min_length=1, max_length=2000)
    experiment: str | None = Field(None, min_length=1, max_length=500)
