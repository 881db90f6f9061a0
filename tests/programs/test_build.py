"""Tests of core.programs.build's one definition of a label predictor (a predictor whose outputs, besides a
ChainOfThought reasoning, are all label fields), as the prompt step, the weight step and the estimate use it."""

from __future__ import annotations

import dspy

from core.config.defaults import scripted_config
from core.lms.scripted import make_lm
from core.optimizers.traces import plan_sources
from core.plan.estimate import _label_predictors, inspected_program
from core.programs import Stage, StagedPipeline, label_fields, label_keys, label_predictors

STAGES = [
    Stage(name="analyze", module="ChainOfThought", signature="text -> summary: str"),
    Stage(name="classify", module="ChainOfThought", signature="summary -> color: str, size: str"),
    Stage(name="describe", module="Predict", signature="summary -> shape: str, note: str"),
]


def test_a_label_predictor_outputs_label_fields_only_besides_its_reasoning() -> None:
    program = StagedPipeline(STAGES)
    assert label_predictors(program, {"color", "size", "shape"}) == {"classify.predict": ["color", "size"]}
    assert label_predictors(program, {"color", "size", "shape", "note"}) == {
        "classify.predict": ["color", "size"], "describe": ["shape", "note"]}
    assert label_predictors(program, {"color"}) == {}  # 'size' is not a label: not a label predictor
    assert label_predictors(program, set()) == {}
    assert label_fields(program.classify.predict, ["size", "color"]) == ["color", "size"]  # the signature's order
    assert label_fields(program.describe, {"shape"}) is None


def test_label_keys_are_the_examples_label_fields() -> None:
    examples = [dspy.Example(text="a", color="red").with_inputs("text"),
                dspy.Example(text="b", size="big").with_inputs("text")]
    assert label_keys(examples) == {"color", "size"}
    assert label_keys([]) == set()


def test_the_weight_step_and_the_estimate_use_the_same_definition() -> None:
    program = StagedPipeline(STAGES)
    small = make_lm("small", tag="lp1")
    for _, predictor in program.named_predictors():
        predictor.lm = small
    labels = {"color", "size", "shape"}
    sources = plan_sources("auto", dict(program.named_predictors()), labels, None)
    assert {name for name, source in sources.items() if source == "gold"} == set(label_predictors(program, labels))

    config = scripted_config("analyze_classify")
    built = inspected_program(config, {})
    assert _label_predictors(config, built) == list(label_predictors(built, config.data.labels)) == ["classify"]
