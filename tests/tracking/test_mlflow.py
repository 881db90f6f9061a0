"""``MlflowRunLog`` against a real local MLflow store (SQLite in tmp_path), read back with ``MlflowClient``."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.bundles.load import load_bundle, predict, read_manifest
from core.store import Store
from core.store.records import Round
from core.tracking.mlflow import (
    BOUNDED_CLIENT,
    MlflowRunLog,
    flat_params,
    loss_key,
    mlflow_client,
    prepare_mlflow,
)
from core.tracking.target import TrackingTarget
from tests.security_helpers import finished_run

LOSSES = [0.9, 0.5, 0.3]


def _recorded_run(tmp_path: Path) -> tuple[Store, int]:
    """A finished run with three rounds (the second's evaluation failed) and three training steps."""
    store, run_id = finished_run(tmp_path)
    for index, (strategy, score) in enumerate([("", 40.0), ("p", None), ("p -> w", 50.0)]):
        store.add_round(Round(run_id=run_id, index=index, strategy=strategy, score=score, eval_failed=score is None,
                              finished_at=f"2026-01-01T00:0{index}:00.000+00:00"))
    for step, loss in enumerate(LOSSES, start=1):
        store.add_event(run_id, "train", f"step {step}", {"model": "scripted/small", "step": step, "total": 3,
                                                          "loss": loss, "strategy": "p -> w"})
    return store, run_id


@pytest.fixture
def target(tmp_path: Path) -> TrackingTarget:
    return TrackingTarget(f"sqlite:///{tmp_path / 'mlflow.db'}", "unit")


def test_flat_params_name_every_leaf_in_characters_mlflow_takes() -> None:
    params = flat_params({"lms": {"my lm!": {"model": "m", "max_tokens": 512}}, "data": {"inputs": ["a", "b"]},
                          "metric": {"fields": None}, "empty": {}, "long": "x" * 7000, "ok": True})
    assert params == {"lms.my lm_.model": "m", "lms.my lm_.max_tokens": "512", "data.inputs": '["a", "b"]',
                      "metric.fields": "null", "empty": "{}", "long": "x" * 6000, "ok": "true"}
    assert loss_key("embedded/smollm2-135m:ft-1") == "loss/embedded_smollm2-135m_ft-1"


def test_a_run_is_logged_whole_and_a_second_log_continues_it_without_doubles(tmp_path: Path,
                                                                               target: TrackingTarget) -> None:
    store, run_id = _recorded_run(tmp_path)
    log = MlflowRunLog(target)
    mlflow_id = log.open(store.get_run(run_id))
    assert log.sync(store, run_id) == 2 + len(LOSSES)  # rounds 0 and 2 (1 failed its evaluation), three losses
    assert log.sync(store, run_id) == 0
    assert log.finish(store, store.get_run(run_id), tmp_path / "home") == []
    client = mlflow_client(target.uri)
    run = client.get_run(mlflow_id)
    assert run.info.status == "FINISHED" and run.info.run_name == f"#{run_id} security"
    assert run.data.tags["studio.status"] == "finished" and run.data.tags["studio.best_strategy"] == "p"
    assert run.data.params["program.name"] == "analyze_classify" and run.data.params["strategy"] == "p -> w -> p"
    assert [(m.step, m.value) for m in client.get_metric_history(mlflow_id, "val_score")] == [(0, 40.0), (2, 50.0)]
    history = client.get_metric_history(mlflow_id, "loss/scripted_small")
    assert [(m.step, m.value) for m in history] == [(1, 0.9), (2, 0.5), (3, 0.3)]
    assert run.data.metrics["val_best_score"] == 50.0 and "test_best_score" not in run.data.metrics
    assert {a.path for a in client.list_artifacts(mlflow_id)} == {"report.html", "bundle"}
    experiment = client.get_experiment(run.info.experiment_id)
    assert Path(experiment.artifact_location) == tmp_path / "mlartifacts"  # beside the store, not ./mlruns
    assert not (Path.cwd() / "mlruns").exists()

    # a resumed run: one more training step and round; the same MLflow run, nothing twice
    store.add_event(run_id, "train", "step 4", {"model": "scripted/small", "step": 1, "total": 1, "loss": 0.1})
    store.add_round(Round(run_id=run_id, index=3, strategy="p -> w -> p", score=60.0))
    again = MlflowRunLog(target)
    assert again.open(store.get_run(run_id), previous=mlflow_id) == mlflow_id
    assert client.get_run(mlflow_id).info.status == "RUNNING"
    assert again.sync(store, run_id) == 2
    again.finish(store, store.get_run(run_id), tmp_path / "home")
    assert [m.step for m in client.get_metric_history(mlflow_id, "val_score")] == [0, 2, 3]
    assert [m.step for m in client.get_metric_history(mlflow_id, "loss/scripted_small")] == [1, 2, 3, 4]
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_the_bundle_artifact_loads_back_as_a_program(tmp_path: Path, target: TrackingTarget) -> None:
    store, run_id = _recorded_run(tmp_path)
    log = MlflowRunLog(target)
    mlflow_id = log.open(store.get_run(run_id))
    log.finish(store, store.get_run(run_id), tmp_path / "home")
    assert log.artifacts == ["report.html", "bundle/"]
    client = mlflow_client(target.uri)
    folder = Path(client.download_artifacts(mlflow_id, "bundle", str(tmp_path / "down")))
    assert read_manifest(folder)["run_id"] == run_id
    program = load_bundle(folder)
    assert set(predict(program, {"document": "The supplier missed two deliveries."})) >= {"category", "risk_level"}
    report = Path(client.download_artifacts(mlflow_id, "report.html", str(tmp_path / "down")))
    assert f"Run #{run_id}" in report.read_text(encoding="utf-8")
    assert not list((tmp_path / "home").iterdir())  # the bundle's working copy is gone


def test_a_parent_run_makes_it_a_child_run(tmp_path: Path, target: TrackingTarget) -> None:
    store, run_id = _recorded_run(tmp_path)
    client = mlflow_client(target.uri)
    parent = client.create_run(client.create_experiment("sweep")).info.run_id
    child = MlflowRunLog(target, parent_run_id=parent).open(store.get_run(run_id))
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == parent


def test_credentials_in_a_stored_tracking_uri_are_asked_for_in_the_environment(tmp_path: Path) -> None:
    store, run_id = _recorded_run(tmp_path)
    stored = TrackingTarget("https://[REDACTED]@mlflow.example.com", "unit")  # as the store keeps such a URI
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_USERNAME"):
        MlflowRunLog(stored).open(store.get_run(run_id))


def test_mlflow_loads_with_bounded_retries_and_no_telemetry_unless_the_user_set_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in BOUNDED_CLIENT:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    prepare_mlflow()
    import os

    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true" and os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"
    from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY, MLFLOW_HTTP_REQUEST_MAX_RETRIES

    assert MLFLOW_DISABLE_TELEMETRY.get() is True and MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 2
