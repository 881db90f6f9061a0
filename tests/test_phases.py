"""Each round records its phases with durations and the weight step's trace sources and label
distribution; the charts and the test comparison built from them (scripted LM, real run path)."""

from __future__ import annotations

from pathlib import Path

from core.charts import compare_test_scores, phases_figure
from core.config import parse_config
from core.defaults import scripted_config_dict
from core.records import RunStatus
from core.run import RunManager
from core.store import Store


def test_rounds_record_phases_sources_and_training_labels(tmp_path: Path) -> None:
    manager = RunManager(Store(tmp_path / "runs.db"))
    doc = scripted_config_dict("support_triage", tag="phases")
    run_id = manager.start(parse_config(doc))
    assert manager.wait(run_id, timeout=120)
    run = manager.store.get_run(run_id)
    assert run.status is RunStatus.FINISHED, run.error
    rounds = manager.store.list_rounds(run_id)
    phases = [r.details["phases"] for r in rounds]
    assert list(phases[0]) == ["baseline evaluation"]
    assert set(phases[1]) == {"prompt search", "evaluation"}
    assert {"trace collection", "training", "GGUF export", "evaluation"} <= set(phases[2])
    assert set(phases[3]) == {"prompt search", "evaluation"}
    assert all(seconds >= 0 for p in phases for seconds in p.values())
    traces = rounds[2].details["traces"]
    assert traces["sources"] == {"classify": "gold"}  # auto: classify's outputs are the label fields
    assert traces["balance"] == "cap"
    assert set(traces["labels"]) == {"intent", "urgency"}
    assert sum(traces["labels"]["intent"].values()) == sum(traces["rows"].values())
    assert sum(traces["labels_before_balance"]["intent"].values()) == traces["kept"] == doc["data"]["split"]["train"]
    figure = phases_figure(rounds)
    assert {t.name for t in figure.data} >= {"baseline evaluation", "prompt search", "training", "evaluation"}
    assert [e.data["hits"] >= 0 for e in manager.store.list_events(run_id, kinds=["cache"])] == [True]


def test_compare_test_scores_says_plainly_when_the_best_is_below_the_baseline() -> None:
    kind, message = compare_test_scores(40.0, 34.0, "p -> w")
    assert kind == "warning" and "below the baseline's 40.0" in message and "34.0" in message
    assert compare_test_scores(10.0, 15.0, "p")[0] == "success"
    assert compare_test_scores(None, 15.0, "p") is None
