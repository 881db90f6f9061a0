"""Tests for core.programs.metrics: exact values on known cases, DSPy compatibility, errors."""

from __future__ import annotations

import copy
import inspect
import pickle

import dspy
import pytest

from core.errors import MetricError
from core.programs.metrics import (
    METRICS,
    Metric,
    MetricInfo,
    exact_match,
    field_match,
    make_metric,
    normalize_answer,
    normalize_text,
    token_f1,
)


def _ex(**kw: object) -> dspy.Example:
    return dspy.Example(question="q", **kw).with_inputs("question")


def test_normalize_text() -> None:
    assert normalize_text("  Growth.  ") == "growth"
    assert normalize_text("High  \n risk..") == "high risk"
    assert normalize_text(["A", "b"]) == "a, b"
    assert normalize_text(None) == ""
    assert normalize_text(3) == "3"


def test_normalize_answer() -> None:
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("「日本」です。") == "日本 です"


def test_exact_match() -> None:
    gold = _ex(category="growth", risk="high")
    assert exact_match(gold, dspy.Prediction(category=" Growth. ", risk="HIGH")) == 1.0
    assert exact_match(gold, dspy.Prediction(category="growth", risk="low")) == 0.0
    assert exact_match(gold, dspy.Prediction(category="growth")) == 0.0  # missing field: mismatch
    assert exact_match(gold, None) == 0.0


def test_field_match() -> None:
    gold = _ex(category="growth", risk="high", topic="sales")
    assert field_match(gold, dspy.Prediction(category="growth", risk="low", topic="Sales")) == pytest.approx(
        2 / 3
    )
    assert field_match(gold, dspy.Prediction(category="x")) == 0.0


def test_token_f1() -> None:
    gold = _ex(answer="the quick brown fox")
    assert token_f1(gold, dspy.Prediction(answer="quick brown fox")) == 1.0
    # pred: quick, fox, jumps (3); gold: quick, brown, fox (3); common 2 -> P = R = 2/3
    assert token_f1(gold, dspy.Prediction(answer="Quick fox jumps!")) == pytest.approx(2 / 3)
    assert token_f1(gold, dspy.Prediction(answer="dog")) == 0.0
    assert token_f1(gold, dspy.Prediction()) == 0.0
    assert token_f1(_ex(answer="the"), dspy.Prediction(answer="a")) == 1.0  # both empty after normalising
    assert token_f1(_ex(answer="x"), dspy.Prediction(answer="")) == 0.0


def test_token_f1_mean_over_fields_and_lists() -> None:
    gold = _ex(findings="sales up, costs down", label="growth")
    pred = dspy.Prediction(findings=["sales up", "costs down"], label="decline")
    assert token_f1(gold, pred) == pytest.approx(0.5)
    # recall 1, precision 4/5 -> F1 = 8/9
    pred2 = dspy.Prediction(findings=["sales up", "costs down", "risk"], label="growth")
    assert token_f1(gold, pred2) == pytest.approx((8 / 9 + 1.0) / 2)


def test_list_values_joined() -> None:
    gold = _ex(findings="Sales up, costs down")
    assert exact_match(gold, dspy.Prediction(findings=["sales up", "Costs down."])) == 1.0


def test_trace_returns_same_float() -> None:
    gold = _ex(answer="yes")
    pred = dspy.Prediction(answer="yes")
    assert exact_match(gold, pred, trace=[("step",)]) == exact_match(gold, pred) == 1.0
    m = make_metric("field_match", ["answer"])
    assert m(gold, pred, [("step",)]) == 1.0


def test_example_without_inputs_set() -> None:
    with pytest.raises(MetricError, match="no input fields set"):
        exact_match(dspy.Example(answer="x"), dspy.Prediction(answer="x"))


def test_make_metric_values() -> None:
    gold = _ex(category="legal", risk="low", extra="ignored")
    pred = dspy.Prediction(category="Legal", risk="high", extra="nope")
    assert make_metric("exact_match", ["category", "risk"])(gold, pred) == 0.0
    assert make_metric("exact_match", ["category"])(gold, pred) == 1.0
    assert make_metric("field_match", ["category", "risk"])(gold, pred) == 0.5
    assert make_metric("token_f1", ["category", "risk"])(gold, pred) == 0.5
    assert make_metric("field_match", ["category"])(gold, {"category": "legal"}) == 1.0


def test_make_metric_gold_field_missing() -> None:
    with pytest.raises(MetricError, match="Label field 'risk' is not in the example"):
        make_metric("exact_match", ["risk"])(_ex(category="x"), dspy.Prediction(risk="x"))


def test_make_metric_errors() -> None:
    with pytest.raises(MetricError) as info:
        make_metric("accuracy", ["a"])
    assert "'accuracy'" in str(info.value)
    for name in METRICS:
        assert name in str(info.value)
    with pytest.raises(MetricError, match="at least one label field"):
        make_metric("exact_match", [])
    with pytest.raises(MetricError, match="list of field names"):
        make_metric("exact_match", "answer")  # type: ignore[arg-type]
    with pytest.raises(MetricError, match="non-empty names"):
        make_metric("exact_match", ["a", " "])


def test_metric_object_is_copyable_and_named() -> None:
    m = make_metric("token_f1", ["answer", "answer"])
    assert isinstance(m, Metric)
    assert m.name == "token_f1" and m.__name__ == "token_f1"
    assert m.label_fields == ("answer",)
    c = copy.deepcopy(m)
    assert c == m and c is not m
    assert pickle.loads(pickle.dumps(m)) == m
    assert "token_f1" in repr(m)
    # GEPA requires five positional parameters.
    inspect.signature(m).bind(None, None, None, None, None)
    inspect.signature(exact_match).bind(None, None, None, None, None)


def test_metric_works_with_dspy_evaluate() -> None:
    class Echo(dspy.Module):
        def forward(self, question: str) -> dspy.Prediction:
            return dspy.Prediction(answer=question.upper())

    devset = [dspy.Example(question=q, answer=a).with_inputs("question") for q, a in [("a", "A"), ("b", "c")]]
    result = dspy.Evaluate(devset=devset, metric=make_metric("exact_match", ["answer"]), num_threads=1)(
        Echo()
    )
    assert result.score == pytest.approx(50.0)


def test_metrics_registry() -> None:
    assert set(METRICS) == {"exact_match", "field_match", "token_f1"}
    for name, info in METRICS.items():
        assert isinstance(info, MetricInfo)
        assert info.name == name and info.description
