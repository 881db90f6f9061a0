"""Stratified labeled demos: few-shot sets that show a tiny model every label value.

Why: a 135M model copies the demos it sees. DSPy's bootstrapped sets hold only traces the model
already got right (biased toward the labels it already answers) and random labeled sets of 1-2
demos miss most labels. A set with one demo per label value (covering every value of every label
field of the predictor) shows the whole answer space. The demo's inputs come from the program's
own upstream trace (the predictor is teacher-forced to the gold labels, ``traces.gold_rows``), so
a downstream predictor sees upstream outputs as it will at run time.

A prompt that does not fit the model's context fails (or is cut); demos are dropped from the end
of the set until the formatted prompt fits ``max_prompt_tokens`` (default: the model's context
minus its answer budget). Tokens are estimated from characters (``CHARS_PER_TOKEN``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

import dspy

from core.optimizers.traces import REASONING, gold_rows

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 3.5  # conservative for English with the small models' tokenizers


def cover_examples(trainset: Sequence[dspy.Example], fields: Sequence[str], seed: int) -> list[dspy.Example]:
    """A few examples that together hold every value of every field in ``fields``.

    One example per value of the field with the most values (the one adding most uncovered values of
    the other fields), then more until every value is covered; seeded order, so seeds differ.
    """
    order = list(trainset)
    random.Random(seed).shuffle(order)
    values = {f: {str(ex[f]) for ex in order} for f in fields}
    primary = max(fields, key=lambda f: len(values[f]))
    covered: dict[str, set[str]] = {f: set() for f in fields}
    chosen: list[dspy.Example] = []

    def gain(ex: dspy.Example) -> int:
        return sum(str(ex[f]) not in covered[f] for f in fields)

    def take(ex: dspy.Example) -> None:
        chosen.append(ex)
        for f in fields:
            covered[f].add(str(ex[f]))

    for value in sorted(values[primary]):
        pool = [ex for ex in order if str(ex[primary]) == value and ex not in chosen]
        if pool:
            take(max(pool, key=gain))
    while any(covered[f] != values[f] for f in fields):
        take(max((ex for ex in order if ex not in chosen), key=gain))
    random.Random(seed + 1).shuffle(chosen)
    return chosen


def stratified_candidate(student: dspy.Module, targets: dict[str, list[str]], trainset: Sequence[dspy.Example],
                         *, seed: int, max_prompt_tokens: int | None = None,
                         sample: dspy.Example | None = None) -> dspy.Module:
    """A copy of ``student`` whose ``targets`` predictors hold a stratified labeled demo set."""
    program = student.deepcopy()
    fields = list(dict.fromkeys(f for fs in targets.values() for f in fs))
    examples = cover_examples(trainset, fields, seed)
    rows, failed = gold_rows(student, list(targets), examples)
    if failed:
        logger.info("stratified demos: %d of %d examples failed upstream", len(failed), len(examples))
    named = dict(program.named_predictors())
    for name in targets:
        predictor = named[name]
        demos = [dspy.Example(**row.inputs, **row.outputs) for row in rows if row.predictor == name]
        predictor.demos = fit_demos(predictor, demos, max_prompt_tokens, sample)
    return program


def fit_demos(predictor: Any, demos: list[dspy.Example], max_prompt_tokens: int | None,
              sample: dspy.Example | None) -> list[dspy.Example]:
    """``demos`` without the last ones while the prompt with them is over the token budget."""
    budget = max_prompt_tokens or prompt_budget(predictor.lm)
    if budget is None:
        return demos
    kept = list(demos)
    while kept and estimate_prompt_tokens(predictor, kept, sample) > budget:
        kept.pop()
    if len(kept) < len(demos):
        logger.info("kept %d of %d demos to fit %d prompt tokens", len(kept), len(demos), budget)
    return kept


def estimate_prompt_tokens(predictor: Any, demos: list[dspy.Example], sample: dspy.Example | None) -> int:
    """Tokens of the formatted prompt (system, demos, one input), estimated from its characters."""
    adapter = dspy.settings.adapter or dspy.ChatAdapter()
    inputs = {}
    for name in predictor.signature.input_fields:
        value = sample.get(name) if sample is not None else None
        inputs[name] = value if value is not None else (demos[0].get(name, "") if demos else "")
    messages = adapter.format(predictor.signature, demos, inputs)
    return int(sum(len(str(m.get("content", ""))) for m in messages) / CHARS_PER_TOKEN)


def prompt_budget(lm: Any) -> int | None:
    """Prompt tokens that fit ``lm``'s context next to its answer; None when the context is unknown/large."""
    context = context_tokens(lm)
    if context is None:
        return None
    answer = int((getattr(lm, "kwargs", None) or {}).get("max_tokens") or 512)
    return max(context - answer, 64)


def context_tokens(lm: Any) -> int | None:
    """The context size of an embedded model (``STUDIO_LLAMA_CTX``); None for other LMs."""
    from core.lms import embedded

    return embedded.n_ctx() if isinstance(getattr(lm, "engine", None), embedded.LlamaEngine) else None


__all__ = ["REASONING", "cover_examples", "fit_demos", "prompt_budget", "stratified_candidate"]
