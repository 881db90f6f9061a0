"""Each round records its phases with durations and the weight step's trace sources and label
distribution; the charts and the test comparison built from them (scripted LM, real run path)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.run import RunManager
from core.store import Store
from core.store.records import RunStatus
from core.views.charts import compare_test_scores, phases_figure


def test_rounds_record_phases_sources_and_training_labels(tmp_path: Path) -> None:
    manager = RunManager(Store(tmp_path / "runs.db"))
    doc = scripted_config_dict("support_triage", tag="phases")
    run_id = manager.start(parse_config(doc))
    assert manager.wait(run_id, timeout=120)
    run = manager.store.get_run(run_id)
    assert run.status is RunStatus.FINISHED, run.error
    rounds = manager.store.list_rounds(run_id)
    phases = [r.details.phases for r in rounds]
    # the phases each round ran, in the order they ran ("other": the rest of a weight step, when over 0.5 s)
    assert list(phases[0]) == ["baseline evaluation"]
    assert list(phases[1]) == list(phases[3]) == ["prompt search", "evaluation"]
    assert [name for name in phases[2] if name != "other"] == ["trace collection", "training", "GGUF export",
                                                               "evaluation"]
    assert phases[2].get("other", 1.0) > 0.5
    # and their seconds add up to the round's wall time (each rounded to 0.01 s; timestamps to 1 ms)
    for r in rounds:
        wall = (datetime.fromisoformat(r.finished_at) - datetime.fromisoformat(r.started_at)).total_seconds()
        spent = sum(r.details.phases.values())
        assert r.details.phases["evaluation" if r.index else "baseline evaluation"] > 0
        assert spent <= wall + 0.05, (r.index, r.details.phases, wall)
        if r.index in (1, 3):  # a prompt step: its search is the rest of the round, so nothing is left out
            assert spent >= wall - 0.05, (r.index, r.details.phases, wall)
        if r.index == 2:  # a weight step leaves out only a rest under 0.5 s
            assert spent >= wall - 0.55, (r.index, r.details.phases, wall)
    traces = rounds[2].details.traces
    assert traces is not None and all(r.details.traces is None for r in rounds if r.index != 2)
    assert traces.sources == {"classify": "gold"}  # auto: classify's outputs are the label fields
    assert traces.balance == "cap"
    assert set(traces.labels) == {"intent", "urgency"}
    assert sum(traces.labels["intent"].values()) == sum(traces.rows.values())
    assert sum(traces.labels_before["intent"].values()) == traces.kept == doc["data"]["split"]["train"]
    assert list(rounds[2].details.finetuned) == ["scripted/small"]
    figure = phases_figure(rounds)  # one stacked bar per round, one trace per phase, 0 where a round had none
    assert {t.name: list(t.x) for t in figure.data} == {
        name: [p.get(name, 0.0) for p in phases] for name in {n for p in phases for n in p}}
    # one cache event with the run's own counts: the scripted LM never looks a call up (only the embedded
    # engine does), so a run on it counts no lookup, no hit and no entry
    (cache,) = manager.store.list_events(run_id, kinds=["cache"])
    assert cache.data == {"hits": 0, "misses": 0, "entries": 0, "enabled": True}
    assert cache.message == "repeated deterministic LM calls answered from the run's cache: 0"


def test_compare_test_scores_says_plainly_when_the_best_is_below_the_baseline() -> None:
    kind, message = compare_test_scores(40.0, 34.0, "p -> w")
    assert kind == "warning" and "below the baseline's 40.0" in message and "34.0" in message
    assert compare_test_scores(10.0, 15.0, "p")[0] == "success"
    assert compare_test_scores(None, 15.0, "p") is None
