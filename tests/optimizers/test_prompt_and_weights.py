"""Prompt steps keep per-predictor LMs; the weight step fine-tunes small-role predictors only and survives bad traces."""

from __future__ import annotations

from pathlib import Path

import dspy
import pytest

from core.errors import LMError, StudioError
from core.lms.scripted import ScriptedEngine, make_lm
from core.optimizers.finetune import FinetuneSettings
from core.optimizers.prompt import KeepLMsRandomSearch
from core.optimizers.weights import RoleAwareFinetune, TraceStats, WeightStepHooks
from core.programs import Stage, StagedPipeline
from core.programs.metrics import make_metric

STAGES = [
    Stage(name="extract", module="Predict", signature="text -> summary: str"),
    Stage(name="classify", module="Predict", signature="summary -> label: str"),
]
WORDS = {"alpha": "red", "beta": "green", "gamma": "blue"}
HINTS = {word: {"label": label} for word, label in WORDS.items()}


def _examples(n: int) -> list[dspy.Example]:
    words = list(WORDS)
    out = []
    for i in range(n):
        word = words[i % 3]
        text = f"report {i} mentions {word} and item{i}"
        out.append(dspy.Example(text=text, label=WORDS[word]).with_inputs("text"))
    return out


def _program(large: dspy.LM, small: dspy.LM) -> StagedPipeline:
    program = StagedPipeline(STAGES)
    program.extract.lm = large
    program.classify.lm = small
    return program


def _hooks(tmp_path: Path, **kwargs) -> WeightStepHooks:
    return WeightStepHooks(output_dir=tmp_path / "weights", **kwargs)


def test_random_search_keeps_each_predictors_lm() -> None:
    large = make_lm("large", tag="rs", hints=HINTS)
    small = make_lm("small", tag="rs", hints=HINTS)
    context = make_lm("context", tag="rs", hints=HINTS)
    engine = large.engine
    assert context.engine is engine and small.engine is engine
    metric = make_metric("exact_match", ["label"])
    optimizer = KeepLMsRandomSearch(metric=metric, max_bootstrapped_demos=1, max_labeled_demos=1,
                                    num_candidate_programs=1, num_threads=1)
    with dspy.context(lm=context, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        compiled = optimizer.compile(_program(large, small), trainset=_examples(9), valset=_examples(6))
    assert engine.calls_by_model.get("scripted/context", 0) == 0
    assert engine.calls_by_model["scripted/large"] > 0 and engine.calls_by_model["scripted/small"] > 0
    assert compiled.extract.lm.model == "scripted/large" and compiled.classify.lm.model == "scripted/small"


def test_stock_random_search_would_have_used_the_context_lm() -> None:
    """The defect KeepLMsRandomSearch fixes, shown on DSPy's own class."""
    large = make_lm("large", tag="stock", hints=HINTS)
    small = make_lm("small", tag="stock", hints=HINTS)
    context = make_lm("context", tag="stock", hints=HINTS)
    engine = large.engine
    optimizer = dspy.BootstrapFewShotWithRandomSearch(metric=make_metric("exact_match", ["label"]),
                                                      max_bootstrapped_demos=1, max_labeled_demos=1,
                                                      num_candidate_programs=1, num_threads=1)
    with dspy.context(lm=context, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        optimizer.compile(_program(large, small), trainset=_examples(9), valset=_examples(6))
    assert engine.calls_by_model.get("scripted/context", 0) > 0


def test_weight_step_finetunes_only_small_predictors(tmp_path: Path) -> None:
    large = make_lm("large", tag="w1", hints=HINTS)
    small = make_lm("small", tag="w1", hints=HINTS)
    seen: list[TraceStats] = []
    progress: list[tuple[str, int, int, float]] = []
    step = RoleAwareFinetune(make_metric("exact_match", ["label"]), ["classify"], FinetuneSettings(epochs=2),
                             _hooks(tmp_path, on_traces=seen.append,
                                    on_progress=lambda *a: progress.append(a)))
    with dspy.context(lm=large, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        tuned = step.compile(_program(large, small), trainset=_examples(12))
    assert tuned.extract.lm.model == "scripted/large"
    assert tuned.classify.lm.model.startswith("scripted/small:ft-")
    assert list(step.finetuned) == ["scripted/small"]
    stats = seen[0]
    assert stats.collected == 12 and stats.kept == 12 and stats.rows == {"scripted/small": 12}
    steps = [p[1] for p in progress]
    assert steps == sorted(steps) and steps[-1] == progress[-1][2] == 4  # 2 epochs x ceil(12 / 8)
    assert (tmp_path / "weights").is_dir()


def test_weight_step_survives_unparseable_answers_and_lm_errors(tmp_path: Path) -> None:
    large = make_lm("large", tag="w2", hints=HINTS, garble_every=4)
    small = make_lm("small", tag="w2", hints=HINTS, garble_every=4)
    seen: list[TraceStats] = []
    step = RoleAwareFinetune(make_metric("exact_match", ["label"]), ["classify"], FinetuneSettings(),
                             _hooks(tmp_path, on_traces=seen.append))
    with dspy.context(lm=large, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        tuned = step.compile(_program(large, small), trainset=_examples(12))
    stats = seen[0]
    assert 0 < stats.kept < stats.collected == 12
    assert stats.failed > 0
    assert tuned.classify.lm.model.startswith("scripted/small:ft-")
    # an LM that errors after a few calls: the step still trains on what it kept
    large = make_lm("large", tag="w3", hints=HINTS, fail_after=10)
    small = make_lm("small", tag="w3", hints=HINTS)
    seen.clear()
    step = RoleAwareFinetune(make_metric("exact_match", ["label"]), ["classify"], FinetuneSettings(),
                             _hooks(tmp_path, on_traces=seen.append))
    with dspy.context(lm=large, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        tuned = step.compile(_program(large, small), trainset=_examples(12))
    assert seen[0].kept == 10 and seen[0].failed == 2
    assert tuned.classify.lm.model.startswith("scripted/small:ft-")


def test_weight_step_with_zero_usable_traces_says_what_to_do(tmp_path: Path) -> None:
    large = make_lm("large", tag="w4")  # no hints: every answer is wrong
    small = make_lm("small", tag="w4")  # 'self' (the paper's source): 'gold' would train on the labels
    step = RoleAwareFinetune(make_metric("exact_match", ["label"]), ["classify"], FinetuneSettings(trace_source="self"),
                             _hooks(tmp_path))
    with dspy.context(lm=large, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        with pytest.raises(StudioError, match=r"nothing to train on: 0 of 6 .*Put a prompt step before it"):
            step.compile(_program(large, small), trainset=_examples(6))


def test_one_job_per_small_lm_each_on_its_own_rows(tmp_path: Path) -> None:
    large = make_lm("a", tag="w5", hints=HINTS)
    small = make_lm("b", tag="w5", hints=HINTS)
    jobs: list[tuple[str, int]] = []
    step = RoleAwareFinetune(make_metric("exact_match", ["label"]), ["extract", "classify"], FinetuneSettings(),
                             _hooks(tmp_path, on_job_start=lambda model, rows: jobs.append((model, rows))))
    with dspy.context(lm=large, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        tuned = step.compile(_program(large, small), trainset=_examples(6))
    assert sorted(jobs) == [("scripted/a", 6), ("scripted/b", 6)]
    assert tuned.extract.lm.model.startswith("scripted/a:ft-")
    assert tuned.classify.lm.model.startswith("scripted/b:ft-")
    # each fine-tuned model memorised only its own predictor's rows
    rows_a = ScriptedEngine._finetuned[tuned.extract.lm.model].rows
    assert all(set(outputs) == {"summary"} for _, outputs in rows_a)


def test_small_role_on_an_lm_that_cannot_finetune_is_refused(tmp_path: Path) -> None:
    large = make_lm("large", tag="w6")
    from core.config.schema import LiteLLMSpec
    from core.lms.registry import build_lm

    hosted = build_lm("hosted", LiteLLMSpec(kind="litellm", model="openai/gpt-4o-mini", api_key="unused"))
    step = RoleAwareFinetune(make_metric("exact_match", ["label"]), ["classify"], FinetuneSettings(),
                             _hooks(tmp_path))
    with pytest.raises(LMError, match="role 'small' but its LM 'openai/gpt-4o-mini' cannot be fine-tuned"):
        step.compile(_program(large, hosted), trainset=_examples(3))


def test_the_validation_sets_rows_choose_the_budget_and_are_never_trained_on(tmp_path: Path, monkeypatch) -> None:
    """The weight step formats the run's validation examples as rows of the same source (gold labels here) and hands
    them to the provider as ``validation_data``: every training row trains, the validation rows only score."""
    large = make_lm("large", tag="w7", hints=HINTS)
    small = make_lm("small", tag="w7", hints=HINTS)
    provider = type(small.provider)
    seen: list[tuple[list[dict], dict]] = []
    original = provider.finetune

    def finetune(self, job, model, train_data, train_data_format, train_kwargs):
        seen.append((train_data, dict(train_kwargs)))
        return original(self, job, model, train_data, train_data_format, train_kwargs)

    monkeypatch.setattr(provider, "finetune", finetune)
    train, val = _examples(12), _examples(18)[12:]
    settings = FinetuneSettings(trace_source="gold")
    step = RoleAwareFinetune(make_metric("exact_match", ["label"]), ["classify"], settings, _hooks(tmp_path),
                             valset=val)
    with dspy.context(lm=large, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        step.compile(_program(large, small), trainset=train)
    (rows, kwargs), = seen
    validation = kwargs["validation_data"]
    assert len(rows) == 12 and len(validation) == 6
    answers = sorted(r["messages"][-1]["content"].split("]]\n")[1].split("\n")[0] for r in validation)
    assert answers == sorted(e.label for e in val)
    assert not {str(r["messages"]) for r in validation} & {str(r["messages"]) for r in rows}

    seen.clear()
    off = RoleAwareFinetune(make_metric("exact_match", ["label"]), ["classify"],
                            FinetuneSettings(trace_source="gold", validation_fraction=0.0), _hooks(tmp_path), valset=val)
    with dspy.context(lm=large, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        off.compile(_program(large, small), trainset=train)
    assert "validation_data" not in seen[0][1]
