"""A sweep in MLflow: one parent run holding the strategies' test scores and verdicts, its child runs
nested under it; read back with MLflow's own client from a real SQLite tracking store."""

from __future__ import annotations

import json
import time
from pathlib import Path

from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.run import RunManager
from core.run.sweep import SweepManager
from core.store import Store
from core.store.records import RunStatus
from core.tracking.mlflow import mlflow_client
from core.tracking.sweep import KIND_TAG, SWEEP_TAG, strategy_key


def test_a_sweep_is_a_parent_run_with_its_children_nested(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    doc = scripted_config_dict("classifier", tag="sweep-mlflow")
    doc["sweep"] = {"strategies": ["p", "p -> w"], "seeds": [0, 1]}
    doc["tracking"] = {"mlflow": True, "tracking_uri": uri, "experiment": "sweeps"}
    sweeps = SweepManager(RunManager(Store(tmp_path / "runs.db")))
    sweep_id = sweeps.start(parse_config(doc))
    assert sweeps.wait(sweep_id, timeout=300)
    sweep = sweeps.store.get_sweep(sweep_id)
    assert sweep.status is RunStatus.FINISHED and sweep.summary is not None
    child_runs = [c.run_id for c in sweep.children]
    for run_id in child_runs:  # each child's supervisor finishes its MLflow run before the run counts as ended
        for _ in range(100):
            if any("logged to MLflow run" in e.message for e in sweeps.store.list_events(run_id, kinds=["tracking"])):
                break
            time.sleep(0.2)

    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name("sweeps")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get(KIND_TAG) == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags[SWEEP_TAG] == str(sweep_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["studio.best_strategy"] == sweep.summary.best
    assert parent.data.params["sweep.strategies"]  # the configuration, sweep included, as parameters
    for result in sweep.summary.results:
        assert parent.data.metrics[strategy_key("test_mean/", result.strategy)] == result.mean
        history = client.get_metric_history(parent.info.run_id, strategy_key("test/", result.strategy))
        assert {int(m.step): m.value for m in history} == {s.seed: s.test_score for s in result.seeds}
    verdicts = [c.sentence for c in sweep.summary.comparisons]
    assert parent.data.tags["studio.verdict"] == " | ".join(verdicts)
    local = client.download_artifacts(parent.info.run_id, "sweep_summary.json", str(tmp_path))
    assert json.loads(Path(local).read_text())["best"] == sweep.summary.best

    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(int(r.data.tags["studio.run_id"]) for r in children) == sorted(child_runs)
    assert len(runs) == 1 + len(child_runs)
