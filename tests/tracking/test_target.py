"""When a run is logged to MLflow, and where: off unless the config or MLFLOW_TRACKING_URI asks."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.errors import ConfigError
from core.tracking import tracking_target
from core.tracking.target import DEFAULT_EXPERIMENT


def _config(tracking: dict | None = None):
    doc = scripted_config_dict("classifier", tag="target")
    if tracking is not None:
        doc["tracking"] = tracking
    return parse_config(doc)


def test_off_when_neither_the_config_nor_the_environment_asks(tmp_path: Path) -> None:
    assert _config().tracking.mlflow is None
    assert tracking_target(_config(), {}, tmp_path) is None
    assert tracking_target(_config({"mlflow": None, "experiment": "x"}), {"MLFLOW_EXPERIMENT_NAME": "y"}, tmp_path) is None


def test_the_environment_turns_it_on_and_the_config_can_still_turn_it_off(tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": "http://mlflow.internal:5000", "MLFLOW_EXPERIMENT_NAME": "team"}
    target = tracking_target(_config(), env, tmp_path)
    assert (target.uri, target.experiment) == ("http://mlflow.internal:5000", "team")
    assert tracking_target(_config({"mlflow": False}), env, tmp_path) is None


def test_on_by_the_config_alone_writes_a_local_store_in_studio_home(tmp_path: Path) -> None:
    target = tracking_target(_config({"mlflow": True}), {}, tmp_path / "home")
    assert target.uri == f"sqlite:///{(tmp_path / 'home').resolve()}/mlflow.db"
    assert target.experiment == DEFAULT_EXPERIMENT
    assert target.local_artifact_root() == (tmp_path / "home").resolve() / "mlartifacts"


def test_a_tracking_uri_in_the_config_turns_it_on_and_wins_over_the_environment(tmp_path: Path) -> None:
    config = _config({"tracking_uri": "sqlite:///runs/m.db", "experiment": "mine"})
    target = tracking_target(config, {"MLFLOW_TRACKING_URI": "http://elsewhere", "MLFLOW_EXPERIMENT_NAME": "env"},
                             tmp_path)
    assert (target.uri, target.experiment) == ("sqlite:///runs/m.db", "mine")
    assert target.local_artifact_root() == (Path.cwd() / "runs" / "mlartifacts").resolve()
    assert tracking_target(_config({"tracking_uri": "http://h:5000"}), {}, tmp_path).local_artifact_root() is None


def test_credentials_in_the_uri_are_never_shown(tmp_path: Path) -> None:
    target = tracking_target(_config({"tracking_uri": "https://me:hunter2secret@mlflow.example.com"}), {}, tmp_path)
    assert "hunter2secret" not in target.describe() and "hunter2secret" not in target.shown_uri
    assert "mlflow.example.com" in target.describe()


@pytest.mark.parametrize("tracking", [{"mlflow": "sometimes"}, {"tracking_uri": ""}, {"experiment": ""},
                                      {"server": "http://h"}])
def test_a_bad_tracking_field_is_refused_by_name(tracking: dict) -> None:
    with pytest.raises(ConfigError, match=r"tracking\."):
        _config(tracking)
