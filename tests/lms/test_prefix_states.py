"""Prefix states on the real SmolLM2 model: prompts of two predictors that alternate on one model keep
their prefixes (the second call of a family evaluates only its suffix) and answer exactly what a model
that evaluates every prompt from scratch answers."""

from __future__ import annotations

import threading
from typing import Literal

import dspy
import numpy as np
import pytest

from core.lms import catalog, grammar
from core.lms.generation import CancelWatcher, run_generation
from core.lms.prefix_states import PrefixStates, common_prefix

KEY = "smollm2-135m"
TICKETS = ["I was charged twice for my plan this month, please refund one.",
           "The dashboard crashes every time I open the reports tab.",
           "How do I change the email address on my account?"]


class Extract(dspy.Signature):
    """Summarise the support ticket in one sentence and name the product area it concerns."""

    ticket: str = dspy.InputField()
    summary: str = dspy.OutputField()
    product_area: str = dspy.OutputField()


class Classify(dspy.Signature):
    """Decide what the customer wants (intent) and how urgently the ticket must be handled (urgency)."""

    ticket: str = dspy.InputField()
    summary: str = dspy.InputField()
    intent: Literal["account", "billing", "bug", "feature_request"] = dspy.OutputField()
    urgency: Literal["high", "low"] = dspy.OutputField()


@pytest.fixture(scope="module")
def llama():
    import llama_cpp

    return llama_cpp.Llama(model_path=str(catalog.gguf_path(KEY)), n_ctx=2048, n_threads=1, n_threads_batch=1,
                           seed=0, verbose=False)


def _prompt(signature: type[dspy.Signature], **inputs: str) -> tuple[list[dict], str]:
    messages = dspy.ChatAdapter().format(signature, [], inputs)
    return messages, catalog.render_prompt(KEY, messages)


def _answer(llama, messages: list[dict], prompt: str, states: PrefixStates | None) -> str:
    tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    if states is None:
        llama.n_tokens = 0  # evaluate the whole prompt, as a fresh model would
    else:
        states.restore(llama, tokens)
    compiled = grammar.compile_grammar(grammar.grammar_for_system(messages[0]["content"]), llama)
    watcher = CancelWatcher(threading.Event(), lambda: False)
    with watcher:
        out = run_generation(llama, tokens, grammar=compiled, max_tokens=96, temperature=0.0, stop=[],
                             watcher=watcher)
    if states is not None:
        states.remember(llama)
    return out.text


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix(np.array([1, 2]), [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([9], [1]) == 0


def test_alternating_predictors_reuse_their_prefixes_and_answer_the_same(llama) -> None:
    calls = []
    for ticket in TICKETS:
        calls.append(_prompt(Extract, ticket=ticket))
        calls.append(_prompt(Classify, ticket=ticket, summary="The customer reports a problem."))
    scratch = [_answer(llama, m, p, None) for m, p in calls]
    states = PrefixStates()
    llama.n_tokens = 0
    kept = [_answer(llama, m, p, states) for m, p in calls]
    assert kept == scratch  # restored KV cells give the same greedy answers
    assert all("[[ ## completed ## ]]" in text for text in kept)
    # every call after the first of its family started from that family's saved state
    assert states.restored == len(calls) - 2
    shared = common_prefix(llama.tokenize(calls[0][1].encode(), add_bos=True, special=True),
                           llama.tokenize(calls[2][1].encode(), add_bos=True, special=True))
    assert shared > 100  # the system message and the template
    assert states.reused_tokens >= (len(calls) - 2) * 100
    assert len(states) == 2  # one state per predictor's prompt family


def test_capacity_evicts_the_least_recently_used_family(llama) -> None:
    states = PrefixStates(capacity=1)
    llama.n_tokens = 0
    _answer(llama, *_prompt(Extract, ticket=TICKETS[0]), states)
    _answer(llama, *_prompt(Classify, ticket=TICKETS[0], summary="x"), states)
    assert len(states) == 1
    _answer(llama, *_prompt(Extract, ticket=TICKETS[1]), states)  # its family's state was evicted
    assert states.restored == 0
