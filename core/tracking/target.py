"""Whether a run is logged to MLflow, and where: decided from its configuration and the environment.

Opt-in: the config's ``tracking.mlflow`` (``true`` on, ``false`` off) or, when it is ``null`` (the
default), a tracking URI in ``tracking.tracking_uri`` or ``MLFLOW_TRACKING_URI``. The URI defaults to a
local SQLite store in ``$STUDIO_HOME`` (``mlflow ui --backend-store-uri`` shows it); the experiment to
``MLFLOW_EXPERIMENT_NAME``, else ``DEFAULT_EXPERIMENT``. Nothing here imports MLflow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from core.config.schema import RunDraft
from core.store.secrets import redact

DEFAULT_EXPERIMENT = "BetterTogether Studio"
URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
LOCAL_STORE = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"
"""Next to a SQLite store: the folder of its experiments' artifacts (MLflow's own default is ``./mlruns``
in whatever folder the process happens to run in)."""


@dataclass(frozen=True)
class TrackingTarget:
    """Where one run is logged: an MLflow tracking URI and an experiment name."""

    uri: str
    experiment: str

    @property
    def shown_uri(self) -> str:
        """The URI as it may be shown or stored: credentials in it redacted."""
        return redact(self.uri)

    def local_artifact_root(self) -> Path | None:
        """For a SQLite store, the folder beside the database file that holds new experiments' artifacts;
        None for a server (it decides) or any other store."""
        prefix = "sqlite:///"
        if not self.uri.startswith(prefix) or ":memory:" in self.uri:
            return None
        database = Path(self.uri[len(prefix):].split("?", 1)[0])
        return database.expanduser().resolve().parent / LOCAL_ARTIFACTS

    def describe(self) -> str:
        """``tracking URI <uri>, experiment '<name>'``, credentials redacted."""
        return f"tracking URI {self.shown_uri}, experiment {self.experiment!r}"


def tracking_target(config: RunDraft, environ: Mapping[str, str] | None = None,
                    home: str | Path | None = None) -> TrackingTarget | None:
    """Where ``config``'s run is logged, or None when it is not (the default: neither the config nor
    ``MLFLOW_TRACKING_URI`` asks). ``home`` is ``$STUDIO_HOME`` (the default local store lives there)."""
    env = os.environ if environ is None else environ
    spec = config.tracking
    if spec.mlflow is False:
        return None
    uri = spec.tracking_uri or (env.get(URI_ENV) or "").strip() or None
    if spec.mlflow is None and uri is None:
        return None
    if uri is None:
        if home is None:
            from core.paths import studio_home

            home = studio_home()
        uri = f"sqlite:///{Path(home).expanduser().resolve() / LOCAL_STORE}"
    experiment = spec.experiment or (env.get(EXPERIMENT_ENV) or "").strip() or DEFAULT_EXPERIMENT
    return TrackingTarget(uri, experiment)
