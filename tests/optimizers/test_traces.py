"""Trace sources of the weight step (self, teacher, gold, auto) and per-label balance, on the scripted LM."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import dspy
import pytest

from core.errors import StudioError
from core.lms.scripted import ScriptedEngine, make_lm
from core.optimizers.finetune import FinetuneSettings
from core.optimizers.traces import TraceRow, balance_rows, label_distribution, plan_sources
from core.optimizers.weights import RoleAwareFinetune, TraceStats, WeightStepHooks
from core.programs import Stage, StagedPipeline, apply_label_choices
from core.programs.metrics import make_metric

STAGES = [
    Stage(name="extract", module="Predict", signature="text -> summary: str"),
    Stage(name="classify", module="Predict", signature="summary -> label: str"),
]
WORDS = {"alpha": "red", "beta": "green", "gamma": "blue"}
HINTS = {word: {"label": label} for word, label in WORDS.items()}
ADAPTER = dspy.ChatAdapter(use_json_adapter_fallback=False)


def _examples(counts: dict[str, int]) -> list[dspy.Example]:
    by_label = {label: word for word, label in WORDS.items()}
    out = []
    for label, n in counts.items():
        for _ in range(n):
            i = len(out)
            out.append(dspy.Example(text=f"report {i} mentions {by_label[label]} and item{i}",
                                    label=label).with_inputs("text"))
    return out


def _program(large: dspy.LM, small: dspy.LM, stages=STAGES) -> StagedPipeline:
    program = StagedPipeline(stages)
    named = dict(program.named_predictors())
    for name, predictor in named.items():
        predictor.lm = small if name.startswith("classify") else large
    apply_label_choices(program, {"label": sorted(WORDS.values())})
    return program


def _step(tmp_path: Path, seen: list, rows: dict, **settings) -> RoleAwareFinetune:
    hooks = WeightStepHooks(output_dir=tmp_path / "weights", on_traces=seen.append,
                            on_rows=lambda model, r: rows.setdefault(model, []).extend(r))
    teacher = settings.pop("teacher_lm", None)
    name = "classify.predict" if settings.pop("cot", False) else "classify"
    return RoleAwareFinetune(make_metric("exact_match", ["label"]), [name], FinetuneSettings(**settings), hooks,
                             teacher_lm=teacher)


def test_gold_rows_are_built_for_failed_examples(tmp_path: Path) -> None:
    """No hints: the program answers the first choice ('blue') to everything, so every red or green
    example fails. ``self`` has nothing to train on; ``gold`` still gives one row per example, with the
    gold label as output and the upstream summary as input."""
    large, small = make_lm("large", tag="tr1"), make_lm("small", tag="tr1")
    trainset = _examples({"red": 5, "green": 4})
    with dspy.context(lm=large, adapter=ADAPTER):
        with pytest.raises(StudioError, match="nothing to train on"):
            _step(tmp_path, [], {}, trace_source="self").compile(_program(large, small), trainset=trainset)
        seen: list[TraceStats] = []
        rows: dict = {}
        engine: ScriptedEngine = small.engine
        small_calls = engine.calls_by_model.get("scripted/small", 0)
        tuned = _step(tmp_path, seen, rows, trace_source="gold").compile(_program(large, small), trainset=trainset)
    training = rows["scripted/small"]
    assert len(training) == 9 and {r.source for r in training} == {"gold"}
    assert Counter(r.outputs["label"] for r in training) == {"red": 5, "green": 4}
    assert sorted(r.outputs["label"] for r in training) == sorted(ex.label for ex in trainset)
    assert all("[[ ## summary ## ]]" in r.messages[-2]["content"] for r in training)
    assert seen[0].kept == 9 and seen[0].sources == {"classify": "gold"}
    # teacher forcing: the small predictor made no LM call while its rows were collected
    assert engine.calls_by_model.get("scripted/small", 0) == small_calls
    assert tuned.classify.lm.model.startswith("scripted/small:ft-")


def test_teacher_rows_come_from_the_teacher_lm(tmp_path: Path) -> None:
    large, small = make_lm("large", tag="tr2"), make_lm("small", tag="tr2")  # no hints: always wrong
    teacher = make_lm("teacher", tag="tr2", hints=HINTS)  # knows the keywords
    trainset = _examples({"red": 2, "green": 2, "blue": 2})
    seen: list[TraceStats] = []
    rows: dict = {}
    with dspy.context(lm=large, adapter=ADAPTER):
        _step(tmp_path, seen, rows, trace_source="teacher", teacher_lm=teacher, balance="off").compile(
            _program(large, small), trainset=trainset)
    engine: ScriptedEngine = teacher.engine
    assert engine.calls_by_model.get("scripted/teacher", 0) == 6
    training = rows["scripted/small"]
    assert {r.source for r in training} == {"teacher"}
    assert sorted(r.outputs["label"] for r in training) == sorted(ex.label for ex in trainset)
    assert seen[0].sources == {"classify": "teacher"}


def test_auto_is_gold_for_label_predictors_and_teacher_or_hinted_elsewhere() -> None:
    program = _program(make_lm("large", tag="tr3"), make_lm("small", tag="tr3"))
    small = dict(program.named_predictors())
    labels = {"label"}
    assert plan_sources("auto", small, labels, None) == {"extract": "hinted", "classify": "gold"}
    other = make_lm("other", tag="tr3")
    assert plan_sources("auto", small, labels, other) == {"extract": "teacher", "classify": "gold"}
    same = make_lm("large", tag="tr3")  # same model as extract's LM: not a different teacher
    assert plan_sources("auto", small, labels, same)["extract"] == "hinted"
    assert plan_sources("gold", small, labels, None)["extract"] == "self"
    with pytest.raises(StudioError, match="'gold' needs a small predictor"):
        plan_sources("gold", {"extract": small["extract"]}, labels, None)
    with pytest.raises(StudioError, match="needs a teacher LM"):
        plan_sources("teacher", small, labels, None)


def test_balance_caps_or_upsamples_rows_per_label_value() -> None:
    rows = [TraceRow("classify", {"summary": f"s{i}"}, {"label": label}, "self", i)
            for i, label in enumerate(["red"] * 8 + ["green"] * 2 + ["blue"] * 2)]
    categorical = {"classify": ["label"]}
    capped = Counter(r.outputs["label"] for r in balance_rows(rows, categorical, "cap", seed=0))
    assert capped == {"red": 4, "green": 2, "blue": 2}  # at most the mean (12 / 3) per value
    up = Counter(r.outputs["label"] for r in balance_rows(rows, categorical, "upsample", seed=0))
    assert up == {"red": 8, "green": 6, "blue": 6}  # rarer values repeated, at most 3x
    assert Counter(r.outputs["label"] for r in balance_rows(rows, categorical, "off", seed=0)) == {
        "red": 8, "green": 2, "blue": 2}
    assert label_distribution(rows, categorical) == {"label": {"blue": 2, "green": 2, "red": 8}}


def test_weight_step_records_the_label_distribution_before_and_after_balance(tmp_path: Path) -> None:
    large, small = make_lm("large", tag="tr4"), make_lm("small", tag="tr4")
    seen: list[TraceStats] = []
    rows: dict = {}
    with dspy.context(lm=large, adapter=ADAPTER):
        _step(tmp_path, seen, rows, trace_source="gold", balance="cap").compile(
            _program(large, small), trainset=_examples({"red": 8, "green": 2, "blue": 2}))
    stats = seen[0]
    assert stats.labels_before == {"label": {"blue": 2, "green": 2, "red": 8}}
    assert stats.labels == {"label": {"blue": 2, "green": 2, "red": 4}} and stats.balance == "cap"
    assert len(rows["scripted/small"]) == 8


def test_chain_of_thought_gold_rows_get_a_rationalized_reasoning(tmp_path: Path) -> None:
    stages = [STAGES[0], Stage(name="classify", module="ChainOfThought", signature="summary -> label: str")]
    large, small = make_lm("large", tag="tr5"), make_lm("small", tag="tr5")
    rows: dict = {}
    with dspy.context(lm=large, adapter=ADAPTER):
        _step(tmp_path, [], rows, trace_source="gold", cot=True).compile(
            _program(large, small, stages), trainset=_examples({"red": 1, "green": 1, "blue": 1}))
    training = rows["scripted/small"]
    assert len(training) == 3
    for row in training:
        assert row.outputs["reasoning"] and row.outputs["label"] in WORDS.values()
        answer = row.messages[-1]["content"]
        assert answer.index("[[ ## reasoning ## ]]") < answer.index("[[ ## label ## ]]")
        assert "correct_answer" not in row.messages[-2]["content"]  # the hint is not in the training prompt


def test_training_rows_do_not_depend_on_the_trainset_order(tmp_path: Path) -> None:
    """BetterTogether shuffles the trainset before each step; the same examples in another order must
    give the same training rows in the same order (and so the same fine-tune for a seed)."""
    trainset = _examples({"red": 5, "green": 3, "blue": 2})
    shuffled = list(reversed(trainset))
    evidence = []
    for examples in (trainset, shuffled):
        large, small = make_lm("large", tag="order"), make_lm("small", tag="order")
        rows: dict = {}
        with dspy.context(lm=large, adapter=ADAPTER):
            _step(tmp_path, [], rows, trace_source="gold", balance="cap").compile(
                _program(large, small), trainset=examples)
        evidence.append([(r.messages[-2]["content"], r.outputs) for r in rows["scripted/small"]])
    assert len(evidence[0]) == 9  # capped at ceil(10 / 3) = 4 rows per label value: red 4, green 3, blue 2
    assert evidence[0] == evidence[1]


def _both_small(small: dspy.LM, stages=STAGES) -> StagedPipeline:
    program = StagedPipeline(stages)
    for _, predictor in program.named_predictors():
        predictor.lm = small
    apply_label_choices(program, {"label": sorted(WORDS.values())})
    return program


def test_hinted_rows_teach_an_upstream_predictor_what_leads_to_the_gold_answer(tmp_path: Path) -> None:
    """Both predictors small, no hints in the LM: alone, the program answers 'blue' to everything. With
    the gold label as a hint, the scripted extract writes it into its summary and classify then answers
    right, so every example gives a hinted extract row (without the hint in its prompt); the gold rows of
    classify read those hinted summaries, replayed without another extract call."""
    small = make_lm("small", tag="tr7")
    trainset = _examples({"red": 3, "green": 3, "blue": 2})
    seen: list[TraceStats] = []
    rows: dict = {}
    engine: ScriptedEngine = small.engine
    with dspy.context(lm=small, adapter=ADAPTER):
        program = _both_small(small)
        assert plan_sources("auto", dict(program.named_predictors()), {"label"}, None) == {
            "extract": "hinted", "classify": "gold"}
        before = engine.calls_by_model.get("scripted/small", 0)
        hooks = WeightStepHooks(output_dir=tmp_path / "weights", on_traces=seen.append,
                                on_rows=lambda model, r: rows.setdefault(model, []).extend(r))
        step = RoleAwareFinetune(make_metric("exact_match", ["label"]), ["extract", "classify"],
                                 FinetuneSettings(trace_source="auto", balance="off"), hooks)
        step.compile(program, trainset=trainset)
    # the hinted pass calls extract and classify once per example; the gold pass replays extract
    assert engine.calls_by_model["scripted/small"] - before == 2 * len(trainset)
    training = rows["scripted/small"]
    extract = [r for r in training if r.predictor == "extract"]
    classify = [r for r in training if r.predictor == "classify"]
    assert len(extract) == len(classify) == len(trainset)
    assert {r.source for r in extract} == {"hinted"} and {r.source for r in classify} == {"gold"}
    for row in extract:
        assert row.outputs["summary"]
        assert "correct_final_answer" not in row.messages[-2]["content"]  # the hint is not in the prompt
    by_example = {r.outputs["summary"]: r for r in extract}
    for row in classify:
        summary = row.messages[-2]["content"].split("[[ ## summary ## ]]")[1].split("\n\n")[0].strip()
        assert summary in by_example and row.outputs["label"] in summary  # it reads the hinted summary
    assert seen[0].sources == {"extract": "hinted", "classify": "gold"} and seen[0].kept == len(trainset)


def test_hinted_rows_are_kept_only_when_the_program_then_answers_right(tmp_path: Path) -> None:
    """The metric fails two examples whatever the program answers: they give no hinted row, and still a
    gold row (failed examples teach the label predictor)."""
    small = make_lm("small", tag="tr8")
    trainset = _examples({"red": 3, "green": 3})
    exact = make_metric("exact_match", ["label"])

    def metric(example, prediction, trace=None):
        return 0.0 if example.text.endswith(("item0", "item4")) else exact(example, prediction, trace)

    rows: dict = {}
    with dspy.context(lm=small, adapter=ADAPTER):
        hooks = WeightStepHooks(output_dir=tmp_path / "weights",
                                on_rows=lambda model, r: rows.setdefault(model, []).extend(r))
        RoleAwareFinetune(metric, ["extract", "classify"], FinetuneSettings(trace_source="hinted", balance="off"),
                          hooks).compile(_both_small(small), trainset=trainset)
    training = rows["scripted/small"]
    assert sum(r.predictor == "extract" for r in training) == 4
    assert sum(r.predictor == "classify" for r in training) == 6


def test_hinted_needs_an_upstream_predictor_and_labels() -> None:
    program = _both_small(make_lm("small", tag="tr9"))
    small = dict(program.named_predictors())
    with pytest.raises(StudioError, match="'hinted' needs a small predictor with outputs other than"):
        plan_sources("hinted", {"classify": small["classify"]}, {"label"}, None)
    with pytest.raises(StudioError, match="'hinted' needs labelled examples"):
        plan_sources("hinted", small, set(), None)
    assert plan_sources("auto", small, set(), None)["extract"] == "self"


def test_a_chain_of_thought_upstream_predictor_gets_hinted_rows_with_its_reasoning(tmp_path: Path) -> None:
    stages = [Stage(name="extract", module="ChainOfThought", signature="text -> summary: str"), STAGES[1]]
    small = make_lm("small", tag="tr10")
    rows: dict = {}
    seen: list[TraceStats] = []
    with dspy.context(lm=small, adapter=ADAPTER):
        hooks = WeightStepHooks(output_dir=tmp_path / "weights", on_traces=seen.append,
                                on_rows=lambda model, r: rows.setdefault(model, []).extend(r))
        RoleAwareFinetune(make_metric("exact_match", ["label"]), ["extract.predict", "classify"],
                          FinetuneSettings(balance="off"), hooks).compile(
            _both_small(small, stages), trainset=_examples({"red": 2, "green": 2}))
    extract = [r for r in rows["scripted/small"] if r.predictor == "extract.predict"]
    assert seen[0].sources == {"extract.predict": "hinted", "classify": "gold"} and len(extract) == 4
    for row in extract:
        assert row.outputs["reasoning"] and row.outputs["summary"]
        answer = row.messages[-1]["content"]
        assert answer.index("[[ ## reasoning ## ]]") < answer.index("[[ ## summary ## ]]")
