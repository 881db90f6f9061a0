"""Where the weight step's training rows come from, and how they are balanced.

Why: the paper's weight step trains on the program's own fully correct traces (``self``). A 135M
model yields few of them, biased toward the labels it already answers, so fine-tuning mostly
reinforces that bias. Other sources fix that:

* ``gold``: for a predictor whose outputs are all label fields, every training example gives a
  row whose outputs are the gold labels; the inputs come from the program's own upstream trace
  (the program runs with the label predictor *teacher-forced*: it returns the gold labels instead
  of calling its LM, so only the upstream predictors spend LM calls). Failed examples teach too.
  A ChainOfThought predictor also needs a reasoning: it is regenerated with the gold answer given
  as a hint (STaR's rationalization), by the teacher LM when there is one, else by its own LM.
* ``teacher``: the program runs with a teacher LM serving the small predictors (distillation, as
  DSPy's ``BootstrapFinetune(teacher=...)``); its traces are filtered by the metric like ``self``.
* ``hinted``: for a predictor whose outputs are not label fields (an upstream step, e.g. an analysis
  that a label predictor reads), its own LM writes the outputs with the example's gold labels given
  as a hint (STaR's rationalization, applied to the whole program's answer). The rest of the program
  runs on those outputs, and a row is kept when the program then scores at least ``min_score``. The
  hint is not in the training prompt, so the predictor learns to write, from its inputs alone, what
  leads the program to the right answer. Where a program also has ``gold`` predictors, their rows
  take their inputs from these hinted outputs (no extra call), so both learn the same interface.
* ``auto``: ``gold`` where it applies; elsewhere ``teacher`` when a different LM (by model name)
  is available as teacher, else ``hinted`` when the examples have labels, else ``self``.

Rows are then balanced per label value (the tuple of a predictor's categorical outputs): ``cap``
keeps at most the mean count per value, ``upsample`` repeats the rows of rarer values (up to the
largest count, at most 3x each), ``off`` keeps them as they are. The label distribution before
and after is returned so the run can record and chart it.
"""

from __future__ import annotations

import logging
import math
import random
import typing
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dspy
from dspy.primitives.prediction import Prediction
from dspy.teleprompt.bootstrap_trace import FailedPrediction, bootstrap_trace_data

from core.errors import StudioError, shown
from core.programs.build import label_fields
from core.programs.stages import REASONING

logger = logging.getLogger(__name__)

HINT_FIELD = "correct_answer"
PROGRAM_HINT_FIELD = "correct_final_answer"
UPSAMPLE_MAX_FACTOR = 3


@dataclass(frozen=True)
class TraceRow:
    """One training row before formatting: a predictor's inputs and the outputs it should give."""

    predictor: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    source: str  # "self" | "teacher" | "gold" | "hinted"
    example: int  # index of the training example it came from


@dataclass(frozen=True)
class Collected:
    rows: list[TraceRow]
    sources: dict[str, str]  # predictor -> source used
    collected: int  # training examples run
    kept: int  # examples that gave at least one row
    failed: int  # examples whose run crashed or did not parse
    calls: dict[str, int] = field(default_factory=dict)  # source -> examples run for it


# --- which source for which predictor ---------------------------------------------------------------


def categorical_fields(predictor: Any) -> list[str]:
    """Output fields typed as a Literal (label choices): the values rows are balanced on."""
    return [n for n, f in predictor.signature.output_fields.items() if typing.get_origin(f.annotation) is Literal]


def plan_sources(requested: str, small: dict[str, Any], label_keys: set[str], teacher_lm: Any) -> dict[str, str]:
    """Small predictor name -> the source its rows come from (raises when ``requested`` cannot apply)."""
    plan: dict[str, str] = {}
    for name, predictor in small.items():
        gold = label_fields(predictor, label_keys) is not None
        different_teacher = teacher_lm is not None and getattr(teacher_lm, "model", None) != predictor.lm.model
        if requested == "auto":
            plan[name] = "gold" if gold else (
                "teacher" if different_teacher else ("hinted" if label_keys else "self"))
        elif requested == "gold":
            plan[name] = "gold" if gold else "self"
        elif requested == "hinted":
            plan[name] = "gold" if gold else "hinted"
        else:
            plan[name] = requested
    if requested == "gold" and "gold" not in plan.values():
        raise StudioError(
            f"trace_source 'gold' needs a small predictor whose outputs are all label fields {sorted(label_keys)}; "
            f"none of {sorted(small)} has; use 'self', 'teacher' or 'auto'"
        )
    if requested == "hinted" and "hinted" not in plan.values():
        raise StudioError(
            f"trace_source 'hinted' needs a small predictor with outputs other than the label fields "
            f"{sorted(label_keys)}; all of {sorted(small)} output labels only; use 'gold' or 'auto'"
        )
    if "hinted" in plan.values() and not label_keys:
        raise StudioError("trace_source 'hinted' needs labelled examples (the hint is their gold labels); "
                          "map label columns on the Data page, or use 'self' or 'teacher'")
    if "teacher" in plan.values() and teacher_lm is None:
        raise StudioError(
            "trace_source 'teacher' needs a teacher LM: set teacher_lm to a configured LM, or give a predictor "
            "the role 'large'"
        )
    return plan


# --- collection -----------------------------------------------------------------------------------------


def collect_rows(
    student: dspy.Module,
    trainset: Sequence[dspy.Example],
    *,
    plan: dict[str, str],
    metric: Callable,
    min_score: float,
    teacher_lm: Any = None,
    num_threads: int | None = 1,
) -> Collected:
    """Rows for every predictor of ``plan`` from the source it gives it."""
    rows: list[TraceRow] = []
    failed_examples: set[int] = set()
    calls: dict[str, int] = {}
    traced = {n: s for n, s in plan.items() if s in ("self", "teacher")}
    if traced:
        got, failed = _metric_traces(student, traced, trainset, metric, min_score, teacher_lm, num_threads)
        rows += got
        failed_examples |= failed
        for source in set(traced.values()):
            calls[source] = len(trainset)
    replay: dict[int, dict[str, list[dict[str, Any]]]] = {}
    hinted = [n for n, s in plan.items() if s == "hinted"]
    if hinted:
        got, failed, replay = hinted_rows(student, hinted, trainset, metric=metric, min_score=min_score)
        rows += got
        failed_examples |= failed
        calls["hinted"] = len(trainset)
    gold = [n for n, s in plan.items() if s == "gold"]
    if gold:
        got, failed = gold_rows(student, gold, trainset, rationalizer_lm=teacher_lm, replay=replay)
        rows += got
        failed_examples |= failed
        calls["gold"] = len(trainset)
    kept = len({r.example for r in rows})
    return Collected(rows, dict(plan), len(trainset), kept, len(failed_examples), calls)


def _metric_traces(student, traced, trainset, metric, min_score, teacher_lm, num_threads):
    """``self``/``teacher`` rows: the program's traces (teacher LM on teacher-source predictors), kept
    when parsed and scored at least ``min_score``."""
    program = student.deepcopy()
    names = {id(p): n for n, p in program.named_predictors()}
    for name, predictor in program.named_predictors():
        if traced.get(name) == "teacher":
            predictor.lm = teacher_lm
    data = bootstrap_trace_data(program=program, dataset=list(trainset), metric=metric, num_threads=num_threads,
                                raise_on_error=False, capture_crashes=True)
    rows, failed = [], set(range(len(trainset)))
    for item in data:
        prediction, score, index = item["prediction"], item.get("score"), item["example_ind"]
        if isinstance(prediction, FailedPrediction) or not isinstance(prediction, Prediction):
            continue
        failed.discard(index)
        if score is None or score < min_score:
            continue
        for predictor, inputs, outputs in item["trace"]:
            name = names.get(id(predictor))
            if name not in traced or isinstance(outputs, FailedPrediction):
                continue
            clean = {k: v for k, v in outputs.items() if not str(k).startswith("dspy_")}
            rows.append(TraceRow(name, dict(inputs), clean, traced[name], index))
    return rows, failed


def hinted_rows(
    student: dspy.Module, names: Sequence[str], examples: Sequence[dspy.Example], *, metric: Callable,
    min_score: float,
) -> tuple[list[TraceRow], set[int], dict[int, dict[str, list[dict[str, Any]]]]]:
    """``hinted`` rows: run the program with the ``names`` predictors given the gold labels as a hint.

    Every other predictor runs on its LM, on the hinted outputs; an example's hinted rows are kept when
    the program's answer scores at least ``min_score``. Returns the rows, the indices of examples whose
    run failed, and per example the hinted outputs of each predictor in call order (for ``gold_rows``).
    """
    program = student.deepcopy()
    named = dict(program.named_predictors())
    state: dict[str, Any] = {}
    pending: list[TraceRow] = []
    for name in names:
        named[name].forward = _hinted_forward(name, named[name], state, pending)
    rows: list[TraceRow] = []
    failed: set[int] = set()
    outputs: dict[int, dict[str, list[dict[str, Any]]]] = {}
    for index, example in enumerate(examples):
        state["example"], state["index"], state["calls"] = example, index, {}
        pending.clear()
        try:
            prediction = program(**example.inputs())
            score = metric(example, prediction, None)
        except Exception as e:  # noqa: BLE001 - a failure loses this example, not the step
            logger.info("hinted run of example %d failed: %s", index, e)
            failed.add(index)
            continue
        outputs[index] = state["calls"]
        if _score(score) >= min_score:
            rows += pending
    return rows, failed, outputs


def _score(value: Any) -> float:
    """A metric's result as a number (a bool, a number, or a prediction with a ``score``)."""
    value = getattr(value, "score", value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _hinted_forward(name: str, predictor: Any, state: dict, pending: list[TraceRow]):
    signature = predictor.signature
    hinted = signature.append(
        PROGRAM_HINT_FIELD, dspy.InputField(desc="the known correct final answer of the whole program"), type_=str)
    hinted = hinted.append_instructions(
        "The correct final answer of the whole program is given: write your outputs so that they lead to it, "
        "as if you had found it yourself."
    )
    predict = dspy.Predict(hinted)  # no demos: the hint, not the predictor's demos, shapes the outputs
    predict.lm = predictor.lm

    def forward(**kwargs: Any) -> Prediction:
        example = state["example"]
        inputs = {k: kwargs[k] for k in signature.input_fields if k in kwargs}
        answer = "; ".join(f"{k}: {v}" for k, v in example.labels().items())
        result = predict(**inputs, **{PROGRAM_HINT_FIELD: answer})
        outputs = {k: result.get(k) for k in signature.output_fields}
        pending.append(TraceRow(name, inputs, outputs, "hinted", state["index"]))
        state["calls"].setdefault(name, []).append(outputs)
        return Prediction(**outputs)

    return forward


def gold_rows(
    student: dspy.Module, names: Sequence[str], examples: Sequence[dspy.Example], *, rationalizer_lm: Any = None,
    replay: dict[int, dict[str, list[dict[str, Any]]]] | None = None,
) -> tuple[list[TraceRow], set[int]]:
    """``gold`` rows: run the program with the ``names`` predictors teacher-forced to the gold labels.

    Upstream predictors run on their LMs and give the inputs; each forced predictor records its
    inputs with the example's labels as outputs (plus a rationalized reasoning for ChainOfThought).
    ``replay`` (from ``hinted_rows``): per example, the outputs an upstream predictor gave with the
    hint; it gives them again instead of calling its LM, so the label predictors learn to read what
    the hinted predictors learn to write. Returns the rows and the indices of examples whose upstream
    run failed.
    """
    program = student.deepcopy()
    named = dict(program.named_predictors())
    state: dict[str, Any] = {}
    rows: list[TraceRow] = []
    for name in names:
        predictor = named[name]
        predictor.forward = _oracle(name, predictor, state, rows, rationalizer_lm)
    for name in {n for calls in (replay or {}).values() for n in calls} - set(names):
        named[name].forward = _replay(name, named[name], state, replay or {})
    failed: set[int] = set()
    for index, example in enumerate(examples):
        state["example"], state["index"], state["replayed"] = example, index, {}
        try:
            program(**example.inputs())
        except Exception as e:  # noqa: BLE001 - an upstream failure loses this example, not the step
            logger.info("gold row for example %d failed upstream: %s", index, e)
            failed.add(index)
    return rows, failed


def _replay(name: str, predictor: Any, state: dict, replay: dict[int, dict[str, list[dict[str, Any]]]]):
    def replayed(**kwargs: Any) -> Prediction:
        given = replay.get(state["index"], {}).get(name, [])
        nth = state["replayed"].get(name, 0)
        state["replayed"][name] = nth + 1
        if nth < len(given):
            return Prediction(**given[nth])
        # the hinted run failed before this call: the predictor's own answer (its class's forward, as the
        # instance's is this function)
        return type(predictor).forward(predictor, **kwargs)

    return replayed


def _oracle(name: str, predictor: Any, state: dict, rows: list[TraceRow], rationalizer_lm: Any):
    signature = predictor.signature
    labels = [n for n in signature.output_fields if n != REASONING]
    needs_reasoning = REASONING in signature.output_fields

    def forward(**kwargs: Any) -> Prediction:
        example = state["example"]
        inputs = {k: kwargs[k] for k in signature.input_fields if k in kwargs}
        outputs = {k: example[k] for k in labels}
        if needs_reasoning:
            lm = rationalizer_lm or predictor.lm
            outputs = {REASONING: rationalize(signature, inputs, outputs, lm), **outputs}
        rows.append(TraceRow(name, inputs, outputs, "gold", state["index"]))
        return Prediction(**outputs)

    return forward


def rationalize(signature: Any, inputs: dict[str, Any], gold: dict[str, Any], lm: Any) -> str:
    """STaR rationalization: a reasoning for ``inputs`` written with the gold answer given as a hint."""
    hinted = signature
    for name in list(signature.output_fields):
        if name != REASONING:
            hinted = hinted.delete(name)
    hinted = hinted.append(HINT_FIELD, dspy.InputField(desc="the known correct answer"), type_=str)
    hinted = hinted.append_instructions(
        "The correct answer is given: explain step by step why it is correct, as if you had found it yourself."
    )
    predict = dspy.Predict(hinted)
    predict.lm = lm
    answer = "; ".join(f"{k}: {v}" for k, v in gold.items())
    return str(predict(**inputs, **{HINT_FIELD: answer}).get(REASONING) or "")


# --- balance -----------------------------------------------------------------------------------------------


def balance_rows(rows: list[TraceRow], categorical: dict[str, list[str]], mode: str, seed: int) -> list[TraceRow]:
    """Rows per label value balanced per predictor (``cap``, ``upsample`` or ``off``); order kept stable."""
    if mode == "off":
        return list(rows)
    out: list[TraceRow] = []
    for predictor in dict.fromkeys(r.predictor for r in rows):
        mine = [r for r in rows if r.predictor == predictor]
        fields = categorical.get(predictor) or []
        if not fields:
            out += mine
            continue
        groups: dict[tuple, list[TraceRow]] = {}
        for row in mine:
            groups.setdefault(tuple(str(row.outputs.get(f)) for f in fields), []).append(row)
        rng = random.Random(seed)
        if mode == "cap":
            cap = math.ceil(len(mine) / len(groups))
            keep = set()
            for group in groups.values():
                keep |= {id(r) for r in rng.sample(group, min(cap, len(group)))}
            out += [r for r in mine if id(r) in keep]
        elif mode == "upsample":
            target = max(len(g) for g in groups.values())
            out += mine
            for group in groups.values():
                extra = min(target, UPSAMPLE_MAX_FACTOR * len(group)) - len(group)
                out += [group[i % len(group)] for i in range(extra)]
        else:
            raise StudioError(f"balance {shown(mode)} is unknown; allowed: cap, upsample, off")
    return out


def label_distribution(rows: Sequence[TraceRow], categorical: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """How often each label value occurs in ``rows``: ``{field: {value: rows}}``."""
    counts: dict[str, Counter] = {}
    for row in rows:
        for name in categorical.get(row.predictor) or []:
            counts.setdefault(name, Counter())[str(row.outputs.get(name))] += 1
    return {name: dict(sorted(c.items())) for name, c in counts.items()}
