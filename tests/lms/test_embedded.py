"""The llama.cpp engine with the real SmolLM2 model (tiny budgets)."""

from __future__ import annotations

import copy
import csv
import json
import threading
import time
from typing import Literal

import dspy
import pytest
from dspy.lm15 import Config, Message, Request

from core.errors import LMError, RunCancelled
from core.lms import catalog
from core.lms.embedded import LlamaEngine, artifact_dir, cancel_scope, register_finetuned
from core.lms.registry import make_embedded_lm

KEY = "smollm2-135m"
MODEL = f"embedded/{KEY}"
STORY = "Write a very long story about a dragon who learns to bake bread."


class Ticket(dspy.Signature):
    """Classify the support ticket by intent and urgency."""

    ticket: str = dspy.InputField()
    intent: Literal["billing", "bug", "account", "feature_request"] = dspy.OutputField()
    urgency: Literal["low", "high"] = dspy.OutputField()


@pytest.fixture(scope="module")
def engine() -> LlamaEngine:
    # One llama.cpp thread: with 2 threads on a busy 2-core machine (other test processes,
    # training), llama.cpp's spinning thread barrier slows generation down by 10x or more.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STUDIO_LLAMA_THREADS", "1")
        engine = LlamaEngine.shared()
        engine.resolve(MODEL)  # load once for the module (a no-op if another module loaded it)
    return engine


@pytest.fixture(scope="module")
def lm(engine) -> dspy.LM:
    return make_embedded_lm(KEY, max_tokens=64)


@pytest.fixture(scope="module")
def roomy_lm(engine) -> dspy.LM:
    """The product's default budget (512 tokens): a ChainOfThought reasoning alone can take 60."""
    return make_embedded_lm(KEY)


def request(text: str, *, max_tokens: int = 16, temperature: float = 0.0, model: str = MODEL, **config) -> Request:
    return Request(
        model=model,
        messages=(Message.user(text),),
        config=Config(max_tokens=max_tokens, temperature=temperature, **config),
    )


def sample_tickets(n: int) -> list[dict]:
    rows = [json.loads(line) for line in (catalog.REPO_ROOT / "data" / "support_tickets.jsonl").open()]
    return rows[:n]


def test_generates_text_and_reports_usage(engine):
    response = engine.complete(request("What is the capital of France?", max_tokens=24))
    assert response.model == MODEL
    assert response.message.text.strip()
    llama = engine.resolve(MODEL).llama
    prompt = catalog.render_prompt(KEY, [{"role": "user", "content": "What is the capital of France?"}])
    assert response.usage.input_tokens == len(llama.tokenize(prompt.encode(), special=True))
    assert 0 < response.usage.output_tokens <= 24


def test_max_tokens_is_honoured(engine):
    response = engine.complete(request(STORY, max_tokens=5))
    assert response.usage.output_tokens <= 5
    assert response.finish_reason == "length"


def test_temperature_is_honoured(engine):
    greedy = {engine.complete(request(STORY, max_tokens=12)).message.text for _ in range(2)}
    assert len(greedy) == 1  # temperature 0 is deterministic
    sampled = {engine.complete(request(STORY, max_tokens=12, temperature=1.5)).message.text for _ in range(4)}
    assert sampled - greedy  # sampling departs from the greedy answer


def test_dspy_lm_call_without_network(lm):
    outputs = lm("Say hello.", max_tokens=8)
    assert isinstance(outputs, list) and outputs[0].strip()
    assert lm.history[-1]["usage"]["completion_tokens"] <= 8


def test_zero_shot_parse_rate_on_sample_tickets(lm):
    tickets = sample_tickets(20)
    predict = dspy.Predict(Ticket)
    parsed = 0
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        for row in tickets:
            try:
                prediction = predict(ticket=row["ticket"])
            except Exception:
                continue
            parsed += prediction.intent in Ticket.output_fields["intent"].annotation.__args__
    assert parsed / len(tickets) >= 0.95


def test_chain_of_thought_parses(roomy_lm):
    with dspy.context(lm=roomy_lm, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        prediction = dspy.ChainOfThought(Ticket)(ticket=sample_tickets(1)[0]["ticket"])
    assert prediction.reasoning and prediction.urgency in ("low", "high")


def test_free_text_answers_are_about_the_input_not_the_format(roomy_lm):
    """Unconstrained, SmolLM2 answered most of these analyses with the format's placeholder
    (``{analysis}``), code fences, ``#`` headings or numbered sections: free text starts with a letter."""
    analyze = dspy.ChainOfThought("document -> analysis: str, key_findings: list[str]")
    with (catalog.REPO_ROOT / "data" / "documents.csv").open(newline="") as f:
        documents = [row["document"] for row in csv.DictReader(f)][:6]
    with dspy.context(lm=roomy_lm, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        answers = [analyze(document=d) for d in documents]
    for answer in answers:
        for text in (answer.reasoning, answer.analysis):
            assert text[:1].isalpha() or text[:1] == '"', text
    documents_words = [set(d.lower().split()) for d in documents]
    about = sum(len(set(a.analysis.lower().split()) & words) >= 3
                for a, words in zip(answers, documents_words, strict=True))
    assert about >= len(answers) - 1


def test_one_model_shared_by_deep_copies(engine, lm):
    program = dspy.Predict(Ticket)
    program.lm = lm
    clone = copy.deepcopy(program)
    assert clone.lm is not lm
    assert clone.lm._engine_spec is engine and copy.deepcopy(lm)._engine_spec is engine
    assert copy.deepcopy(engine) is engine
    assert LlamaEngine.load_state(engine.dump_state()) is engine
    assert make_embedded_lm(KEY)._engine_spec is engine
    llama = engine.resolve(MODEL).llama
    assert engine.resolve(clone.lm.model).llama is llama


def test_unknown_model_lists_the_known_ones(engine):
    with pytest.raises(ValueError, match="known models are: embedded/smollm2-135m, embedded/gemma3-270m"):
        engine.complete(request("hi", model="embedded/nope"))
    with pytest.raises(LMError, match="allowed models"):
        make_embedded_lm("nope")


def test_finetuned_artifact_dispatch(engine, tmp_path):
    (tmp_path / "model.gguf").symlink_to(catalog.gguf_path(KEY))
    (tmp_path / "meta.json").write_text(json.dumps({"base": KEY, "kind": "merged", "file": "model.gguf"}))
    register_finetuned("embedded/smollm2-135m:ft-test", tmp_path)
    assert artifact_dir("embedded/smollm2-135m:ft-test") == tmp_path
    assert artifact_dir(MODEL) is None
    response = engine.complete(request("What is 2 + 2?", model="embedded/smollm2-135m:ft-test", max_tokens=6))
    assert response.model == "embedded/smollm2-135m:ft-test" and response.usage.output_tokens <= 6
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "meta.json").write_text(json.dumps({"base": KEY, "kind": "pickle", "file": "x"}))
    with pytest.raises(LMError, match="merged, lora"):
        register_finetuned("bad", bad)


def test_threads_get_the_same_answers_as_sequential_calls(engine):
    prompts = ["Name a colour.", "Name a fruit.", "Name an animal.", "Name a country."]
    sequential = [engine.complete(request(p, max_tokens=10)).message.text for p in prompts]
    results: dict[int, str] = {}

    def call(i: int) -> None:
        results[i] = engine.complete(request(prompts[i], max_tokens=10)).message.text

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(4)] == sequential


def _cancel_latency(engine, start_cancel, run) -> float:
    timer_fired: list[float] = []

    def fire() -> None:
        timer_fired.append(time.monotonic())
        start_cancel()

    timer = threading.Timer(0.5, fire)
    timer.start()
    with pytest.raises(RunCancelled):
        run()
    return time.monotonic() - timer_fired[0]


def test_cancel_scope_stops_a_long_generation(engine):
    event = threading.Event()

    def run() -> None:
        with cancel_scope(event):
            engine.complete(request(STORY, max_tokens=1500))

    assert _cancel_latency(engine, event.set, run) < 1.0
    with pytest.raises(RunCancelled):  # the event stays set: later calls of the run stop at once
        with cancel_scope(event):
            engine.complete(request("hi"))
    assert engine.complete(request("hi", max_tokens=2)).usage.output_tokens <= 2  # outside the scope


def test_cancel_reaches_dspy_worker_threads(lm):
    event = threading.Event()
    examples = [dspy.Example(ticket=row["ticket"]).with_inputs("ticket") for row in sample_tickets(4)]
    story = dspy.Predict("topic -> story")

    def run() -> None:
        with cancel_scope(event), dspy.context(lm=lm.copy(max_tokens=1500)):
            dspy.Parallel(num_threads=2)([(story, {"topic": STORY}) for _ in examples])

    assert _cancel_latency(lm, event.set, run) < 1.0


def test_engine_cancel_event(engine):
    engine.cancel_event = threading.Event()
    try:
        assert _cancel_latency(engine, engine.cancel_event.set, lambda: engine.complete(request(STORY, max_tokens=1500))) < 1.0
    finally:
        engine.cancel_event = None


def test_released_models_leave_memory_and_load_again_on_the_next_call(engine):
    """What the weight step does before it trains: every loaded model closes; a call that had resolved one before
    resolves it again, and answers as before."""
    from core.lms.llama_models import loaded_models
    from core.lms.lora.device import current_rss_mb

    before = engine.complete(request("Name a colour.", max_tokens=10)).message.text
    held = engine.resolve(MODEL)  # as a call in flight holds it
    rss = current_rss_mb()
    assert str(catalog.gguf_path(KEY)) in engine.release_models()
    assert held.closed and held.llama is None and loaded_models() == []
    assert current_rss_mb() < rss - 100, (rss, current_rss_mb())  # weights, KV cache, logits buffer
    assert engine._generate(held, "Name a colour.", grammar_text=None, max_tokens=4, temperature=0.0, stop=[]) is None
    assert engine.complete(request("Name a colour.", max_tokens=10)).message.text == before
    assert engine.resolve(MODEL) is not held and not engine.resolve(MODEL).closed
    assert engine.release_models() and engine.release_models() == []  # nothing left to release
