"""The numeric sample task (pump sensor readings -> status): its default run offers the three statuses as the
label's choices, and p -> w -> p runs it end to end on the scripted LM with the embedded models' optimizers."""

from __future__ import annotations

import json
from pathlib import Path

import dspy

from core.config.defaults import EMBEDDED_OPTIMIZERS, default_config, embedded_split, scripted_config_dict
from core.config.schema import parse_config
from core.plan.prepare import label_choices, load_data
from tests.compile_helpers import compile_recorded

STATUSES = ["fault", "normal", "warning"]


def test_the_default_run_makes_the_status_one_of_the_three_values() -> None:
    config = default_config("pump_status")
    table, split = load_data(config)
    assert label_choices(table, config) == {"status": STATUSES}
    for part in (split.train, split.val, split.test):  # stratified: every status in every part
        assert sorted({ex.status for ex in part}) == STATUSES
    example = split.train[0]
    assert set(example.inputs().keys()) == {"bearing_temp", "vibration", "pressure", "flow_rate"}
    assert all(float(value) >= 0 for value in example.inputs().values())


def test_a_scripted_p_w_p_run_of_the_pump_template(tmp_path: Path) -> None:
    """The default run's steps (stratified demo search, a weight step on gold rows) and split, on the scripted LM."""
    doc = scripted_config_dict("pump_status", tag="pump")
    doc["optimizers"] = json.loads(json.dumps(EMBEDDED_OPTIMIZERS))
    doc["optimizers"]["w"]["settings"].update({"epochs": 1})
    doc["data"]["split"] = embedded_split("pump_status")
    run = compile_recorded(parse_config(doc), tmp_path, "pump")
    rounds = run.store.list_rounds(run.run_id)
    assert [r.strategy for r in rounds] == ["", "p", "p -> w", "p -> w -> p"]
    assert all(r.score is not None and 0.0 <= r.score <= 100.0 for r in rounds)
    traces = rounds[2].details.traces
    assert traces is not None and traces.sources == {"classify": "gold"}
    assert set(traces.labels["status"]) == set(STATUSES)  # the gold rows of all three statuses
    assert ":ft-" in rounds[2].predictor_models["classify"]
    with dspy.context(lm=run.prepared.context_lm, adapter=run.adapter):
        answers = {run.program(**ex.inputs()).status for ex in run.prepared.split.test[:6]}
    assert answers and answers <= set(STATUSES)
