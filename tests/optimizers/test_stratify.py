"""Stratified labeled demos (every label value shown), the prompt-length bound, stratified splits."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import dspy

from core.config.defaults import EMBEDDED_OPTIMIZERS, scripted_config_dict
from core.config.schema import parse_config
from core.data import categorical_labels, split_examples
from core.lms.scripted import make_lm
from core.optimizers.prompt import KeepLMsRandomSearch, passing_demos, served_as_trained
from core.optimizers.stratify import cover_examples, estimate_prompt_tokens, fit_demos
from core.programs import Stage, StagedPipeline, apply_label_choices, label_keys, label_predictors
from core.programs.metrics import make_metric
from core.run.bettertogether import candidates_of
from tests.compile_helpers import compile_recorded

STAGES = [
    Stage(name="extract", module="Predict", signature="text -> summary: str"),
    Stage(name="classify", module="Predict", signature="summary -> color: str, size: str"),
]
COLORS = {"alpha": "red", "beta": "green", "gamma": "blue", "delta": "black"}
ADAPTER = dspy.ChatAdapter(use_json_adapter_fallback=False)


def _examples(n: int) -> list[dspy.Example]:
    words = list(COLORS)
    out = []
    for i in range(n):
        word = words[i % 4]
        size = ["small", "medium", "large"][i % 3]
        out.append(dspy.Example(text=f"note {i} says {word} {size}x thing{i}", color=COLORS[word],
                                size=size).with_inputs("text"))
    return out


def _program(tag: str) -> StagedPipeline:
    program = StagedPipeline(STAGES)
    program.extract.lm = make_lm("large", tag=tag)
    program.classify.lm = make_lm("small", tag=tag)
    apply_label_choices(program, {"color": sorted(COLORS.values()), "size": ["large", "medium", "small"]})
    return program


def test_cover_examples_hold_every_value_of_every_label_field() -> None:
    trainset = _examples(24)
    for seed in range(5):
        chosen = cover_examples(trainset, ["color", "size"], seed)
        assert {ex.color for ex in chosen} == set(COLORS.values())
        assert {ex.size for ex in chosen} == {"small", "medium", "large"}
        assert len(chosen) == 4  # one per colour, sizes covered along the way
    assert cover_examples(trainset, ["color", "size"], 0) != cover_examples(trainset, ["color", "size"], 1)


def test_stratified_search_gives_label_predictors_demos_covering_every_label() -> None:
    program = _program("st1")
    trainset, valset = _examples(24), _examples(36)[24:]
    assert label_predictors(program, label_keys(trainset)) == {"classify": ["color", "size"]}
    search = KeepLMsRandomSearch(metric=make_metric("exact_match", ["color", "size"]), max_bootstrapped_demos=1,
                                 max_labeled_demos=1, num_candidate_programs=2, num_threads=1, stratify=True)
    with dspy.context(lm=program.extract.lm, adapter=ADAPTER):
        tuned = search.compile(program, trainset=trainset, valset=valset)
    assert len(search.candidate_scores) == 3  # the current program + 2 stratified sets
    assert search.candidate_scores[0] < max(search.candidate_scores)  # demos beat zero-shot here
    demos = tuned.classify.demos
    assert {d.color for d in demos} == set(COLORS.values()) and {d.size for d in demos} == {"small", "medium", "large"}
    assert all(d.get("summary") for d in demos)  # inputs from the upstream trace, not "not supplied"
    assert tuned.extract.demos == []  # upstream predictors keep theirs
    assert tuned.classify.lm.model == "scripted/small"  # LMs kept


def test_served_as_trained_means_a_fine_tune_without_demos() -> None:
    program = _program("st5")
    assert served_as_trained(program, ["extract", "classify"]) == []  # base models: searched
    program.classify.lm = make_lm("small:ft-0123abcd", tag="st5")
    assert served_as_trained(program, ["extract", "classify"]) == ["classify"]
    program.classify.demos = [dspy.Example(summary="note", color="red", size="small")]
    assert served_as_trained(program, ["classify"]) == []  # trained with demos: searched as before


def test_the_prompt_step_after_a_weight_step_without_demos_searches_upstream_demos(tmp_path: Path) -> None:
    """p -> w -> p on the scripted support-ticket pipeline with the embedded defaults (classify learns gold
    rows without demos): the last prompt step leaves the fine-tuned classify without demos and tries
    bootstrapped demo sets for extract, taken from training examples the fine-tuned program gets right."""
    doc = scripted_config_dict("support_triage", tag="st6")
    doc["optimizers"] = json.loads(json.dumps(EMBEDDED_OPTIMIZERS))
    doc["optimizers"]["w"]["settings"].update({"epochs": 1})
    run = compile_recorded(parse_config(doc), tmp_path, "upstream")
    rounds = run.store.list_rounds(run.run_id)
    assert [r.strategy for r in rounds] == ["", "p", "p -> w", "p -> w -> p"]
    assert rounds[1].demos["classify"] > 0  # the first prompt step gave the base model demos
    assert ":ft-" in rounds[3].predictor_models["classify"] and rounds[3].demos["classify"] == 0
    assert len(run.optimizers["p"].candidate_scores) == 3  # the program and 2 sets of extract demos
    fine_tuned = next(c.program for c in candidates_of(run.program) if c.strategy == "p -> w")
    train, metric = list(run.prepared.split.train), run.prepared.metric
    allowed = {ex.ticket for ex in train[::2]}  # a metric that fails every other ticket, whatever the answer

    def half(example: dspy.Example, prediction: dspy.Prediction, trace: object = None) -> float:
        return metric(example, prediction) if example.ticket in allowed else 0.0

    with dspy.context(lm=run.prepared.context_lm, adapter=run.adapter):
        pool = passing_demos(fine_tuned, ["extract"], train, half, wanted=4, seed=0)
        passed = {ex.ticket for ex in train if half(ex, fine_tuned(**ex.inputs())) == 1.0}
    assert len(pool["extract"]) == 4 and 4 <= len(passed) <= len(allowed)
    for demo in pool["extract"]:  # what extract answered on a training ticket the fine-tuned program gets right
        assert demo.ticket in passed and demo.summary and demo.product_area


def test_demos_are_trimmed_to_the_prompt_budget() -> None:
    program = _program("st2")
    demos = [dspy.Example(summary=f"a long summary number {i} " * 20, color="red", size="small") for i in range(6)]
    with dspy.context(adapter=ADAPTER):
        full = estimate_prompt_tokens(program.classify, demos, None)
        one = estimate_prompt_tokens(program.classify, demos[:1], None)
        assert full > one
        kept = fit_demos(program.classify, demos, one + 5, None)
    assert kept == demos[:1]
    assert fit_demos(program.classify, demos, None, None) == demos  # scripted LM: no known context, no bound


def test_stratified_splits_keep_label_proportions_and_the_seed_contract() -> None:
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    examples = [dspy.Example(text=f"t{i}", label=label).with_inputs("text") for i, label in enumerate(labels)]
    assert categorical_labels(examples) == ["label"]
    split = split_examples(examples, 50, 20, 30, seed=3)
    for part, n in ((split.train, 50), (split.val, 20), (split.test, 30)):
        counts = Counter(ex.label for ex in part)
        for label, share in (("a", 0.6), ("b", 0.3), ("c", 0.1)):
            assert abs(counts[label] - share * n) <= 1, (label, counts, n)
    again = split_examples(examples, 50, 20, 30, seed=3)
    assert [e.text for e in again.test] == [e.text for e in split.test]
    other = split_examples(examples, 50, 20, 30, seed=4)
    assert [e.text for e in other.test] != [e.text for e in split.test]
    # free-text labels (a different value per example) are not strata: a plain seeded shuffle
    texts = [dspy.Example(text=f"t{i}", answer=f"answer {i}").with_inputs("text") for i in range(20)]
    assert categorical_labels(texts) == []
    assert split_examples(texts, 10, 5, 5, seed=1).train == split_examples(texts, 10, 5, 5, seed=1, stratify=False).train
