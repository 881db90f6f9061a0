"""Runs logged to MLflow by the supervising process: a scripted run read back from a real local MLflow store
(SQLite in tmp_path) with ``MlflowClient``; a tracking server that is down; off by default."""

from __future__ import annotations

import socket
import time
from datetime import datetime
from pathlib import Path

import pytest

from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.run import RunManager
from core.store import Store
from core.store.records import Round, RunStatus
from core.tracking.follow import RunTracking, start_tracking
from core.tracking.mlflow import mlflow_client
from core.tracking.target import TrackingTarget
from core.views.monitor import run_snapshot, tracking_warning


@pytest.fixture
def manager(tmp_path: Path) -> RunManager:
    return RunManager(Store(tmp_path / "runs.db"))


def _run(manager: RunManager, tracking: dict | None = None) -> int:
    doc = scripted_config_dict("classifier", tag="tracking")  # p -> w -> p: rounds and training steps
    if tracking is not None:
        doc["tracking"] = tracking
    run_id = manager.start(parse_config(doc))
    assert manager.wait(run_id, timeout=120)
    return run_id


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tracked_run_is_in_mlflow_with_its_config_rounds_losses_scores_tags_and_artifacts(
        manager: RunManager, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = _run(manager, {"mlflow": True, "tracking_uri": uri, "experiment": "studio tests"})
    store = manager.store
    run, rounds = store.get_run(run_id), store.list_rounds(run_id)
    assert run.status is RunStatus.FINISHED, run.error
    client = mlflow_client(uri)
    (found,) = client.search_runs([client.get_experiment_by_name("studio tests").experiment_id])
    mlflow_id = found.info.run_id
    assert found.info.status == "FINISHED"
    tags, params, metrics = found.data.tags, found.data.params, found.data.metrics
    assert tags["studio.run_id"] == str(run_id) and tags["studio.status"] == "finished"
    assert tags["studio.best_strategy"] == (run.best_strategy or "baseline")
    assert params["strategy"] == "p -> w -> p" and params["lms.small.factory"] == "core.lms.scripted:make_lm"
    assert params["optimizers.w.settings.epochs"] == "2" and params["tracking.mlflow"] == "true"
    history = client.get_metric_history(mlflow_id, "val_score")
    assert [(m.step, m.value) for m in history] == [(r.index, r.score) for r in rounds]
    train = store.list_events(run_id, kinds=["train"])
    assert train, "the weight step recorded no training steps"
    losses = client.get_metric_history(mlflow_id, "loss/scripted_small")
    assert [(m.step, m.value) for m in losses] == [(i, e.data["loss"]) for i, e in enumerate(train, start=1)]
    assert metrics["test_best_score"] == run.test_best_score and metrics["test_baseline_score"] == run.test_baseline_score
    assert metrics["val_best_score"] == run.best_score
    artifacts = {a.path for a in client.list_artifacts(mlflow_id)}
    assert artifacts == {"report.html", "bundle"}
    assert {"bundle/manifest.json", "bundle/program.json"} <= {a.path for a in client.list_artifacts(mlflow_id, "bundle")}
    events = store.list_events(run_id, kinds=["tracking"])
    assert events[-1].data["ok"] and events[-1].data["mlflow_run_id"] == mlflow_id
    assert tracking_warning(run_snapshot(store, run_id).log) is None


def test_a_resumed_run_continues_its_mlflow_run(manager: RunManager, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    doc = scripted_config_dict("classifier", tag="tracked-resume", crash_at_round=2,
                               crash_marker=str(tmp_path / "crashed"))  # dies once, when round 2 starts
    doc["tracking"] = {"mlflow": True, "tracking_uri": uri}
    run_id = manager.start(parse_config(doc))
    assert manager.wait(run_id, timeout=120)
    assert manager.store.get_run(run_id).status is RunStatus.FAILED
    client = mlflow_client(uri)
    (first,) = client.search_runs([client.get_experiment_by_name("BetterTogether Studio").experiment_id])
    assert first.info.status == "FAILED" and first.data.tags["studio.status"] == "failed"
    assert [m.step for m in client.get_metric_history(first.info.run_id, "val_score")] == [0, 1]
    manager.resume(run_id)
    assert manager.wait(run_id, timeout=120)
    assert manager.store.get_run(run_id).status is RunStatus.FINISHED
    (again,) = client.search_runs([first.info.experiment_id])
    assert again.info.run_id == first.info.run_id and again.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(again.info.run_id, "val_score")] == [0, 1, 2, 3]
    messages = [e.message for e in manager.store.list_events(run_id, kinds=["tracking"])]
    assert any(m.startswith(f"continuing MLflow run {first.info.run_id}") for m in messages)


def test_a_tracking_server_that_is_down_is_a_warning_and_the_run_still_finishes(
        manager: RunManager, tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    run_id = _run(manager, {"mlflow": True, "tracking_uri": uri})
    run = manager.store.get_run(run_id)
    assert run.status is RunStatus.FINISHED and run.error is None
    assert len(manager.store.list_rounds(run_id)) == 4
    warning = tracking_warning(run_snapshot(manager.store, run_id).log)
    assert warning is not None and "not logged to MLflow" in warning and "cannot be reached" in warning
    assert uri in warning
    last = manager.store.list_events(run_id, kinds=["tracking"])[-1]
    waited = datetime.fromisoformat(last.time) - datetime.fromisoformat(run.finished_at)
    assert waited.total_seconds() < 20  # bounded retries: seconds, not MLflow's default minutes


def test_no_mlflow_run_unless_the_config_or_the_environment_asks(manager: RunManager, tmp_path: Path,
                                                                studio_home: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = _run(manager)
    assert manager.store.get_run(run_id).status is RunStatus.FINISHED
    assert manager.store.list_events(run_id, kinds=["tracking"]) == []
    assert not (studio_home / "mlflow.db").exists() and not (Path.cwd() / "mlflow.db").exists()
    # MLFLOW_TRACKING_URI alone turns it on (no run needed to see that the supervisor would log it)
    uri = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    queued = manager.store.create_run("by env", parse_config(scripted_config_dict("classifier")))
    tracking = start_tracking(manager.store, queued)
    assert tracking is not None and tracking.target.uri == uri
    assert tracking.close(timeout=60)
    client = mlflow_client(uri)
    (found,) = client.search_runs([client.get_experiment_by_name("BetterTogether Studio").experiment_id])
    assert found.data.tags["studio.run_id"] == str(queued)


def test_rounds_reach_mlflow_while_the_run_goes(tmp_path: Path) -> None:
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run("live", parse_config(scripted_config_dict("classifier")), RunStatus.RUNNING)
    target = TrackingTarget(f"sqlite:///{tmp_path / 'mlflow.db'}", "live")
    tracking = RunTracking(store, run_id, target, poll_s=0.05)
    tracking.start()
    client = mlflow_client(target.uri)
    store.add_round(Round(run_id=run_id, index=0, strategy="", score=30.0))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if tracking.log.run_id and client.get_metric_history(tracking.log.run_id, "val_score"):
            break
        time.sleep(0.1)
    history = client.get_metric_history(tracking.log.run_id, "val_score")
    assert [(m.step, m.value) for m in history] == [(0, 30.0)]
    assert client.get_run(tracking.log.run_id).info.status == "RUNNING"  # before the run ended
    store.end_abruptly(run_id, RunStatus.CANCELLED, "cancelled")
    assert tracking.close(timeout=60)
    assert client.get_run(tracking.log.run_id).info.status == "KILLED"
