"""Per-LM runtime options (parallel-call limit, grammar): found from an LM's endpoint, kept by copies and fine-tunes.

No network: hosted LMs are built but never called, and the adapter test calls an LM that records
the keyword arguments of each request.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import dspy

from core.bundles.export import export_run, load_bundle, predict
from core.config.defaults import scripted_config_dict
from core.config.schema import LiteLLMSpec, parse_config
from core.lms.adapter import StudioChatAdapter
from core.lms.grammar import grammar_for_system, output_fields_from_system
from core.lms.runtime import LMRuntime, LMRuntimes, endpoint_of, runtime_for_spec
from core.optimizers.weights import RoleAwareFinetune, WeightStepHooks
from core.plan.prepare import prepare_run
from core.run.build import build_optimizers, inheriting_runtimes, make_adapter
from core.run.observer import RunObserver
from tests.security_helpers import finished_run

LARGE = LMRuntime("large", 2, True)
SMALL = LMRuntime("small", 1, False)


def fake_lm(model: str, api_base: str | None = None) -> SimpleNamespace:
    """What the runtimes read of an LM: its model name and its keyword arguments."""
    return SimpleNamespace(model=model, kwargs={"api_base": api_base} if api_base else {})


def peak_parallel(observer: RunObserver, lms: list, hold_s: float = 0.05) -> int:
    """The most calls in flight at once when each LM of ``lms`` is called from its own thread."""
    active, peak = 0, 0
    lock = threading.Lock()

    def call(i: int, lm: object) -> None:
        nonlocal active, peak
        observer.on_lm_start(str(i), lm, {})
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(hold_s)
        with lock:
            active -= 1
        observer.on_lm_end(str(i), None, None)

    threads = [threading.Thread(target=call, args=(i, lm)) for i, lm in enumerate(lms)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "calls still waiting for the limit after 30 s"
    return peak


def test_prepare_run_gives_each_configured_lm_its_runtime_without_touching_the_lm() -> None:
    doc = scripted_config_dict("analyze_classify", tag="runtime")
    doc["lms"]["large"] = {"kind": "litellm", "model": "openai/gpt-4o-mini", "grammar": "gbnf", "num_threads": 3}
    prepared = prepare_run(parse_config(doc))
    assert prepared.runtimes.of(prepared.lms["large"]) == LMRuntime("large", 3, True)
    assert prepared.runtimes.of(prepared.lms["small"]) == LMRuntime("small", 1, False)
    for _, predictor in prepared.program.deepcopy().named_predictors():  # DSPy's copies find theirs too
        assert prepared.runtimes.of(predictor.lm) in (LMRuntime("large", 3, True), LMRuntime("small", 1, False))
    for lm in prepared.lms.values():
        assert not [k for k in vars(lm) if k.startswith("studio_")]


def test_an_unknown_lm_has_no_options_and_copies_of_the_table_are_the_table() -> None:
    runtimes = LMRuntimes()
    runtimes.add(fake_lm("openai/gpt-4o-mini"), LARGE)
    assert runtimes.of(fake_lm("openai/gpt-4o")) is None
    assert runtimes.of(fake_lm("openai/gpt-4o-mini", "http://127.0.0.1:8080/v1")) is None  # another endpoint
    assert runtimes.of(SimpleNamespace()) is None
    assert copy.deepcopy(runtimes) is runtimes and copy.copy(runtimes) is runtimes


def test_two_lms_at_one_endpoint_share_one_record_and_two_servers_keep_two() -> None:
    same = LMRuntimes.for_lms({"large": fake_lm("openai/smol"), "small": fake_lm("openai/smol")},
                              {"large": LMRuntime("large", 4, False), "small": LMRuntime("small", 2, True)})
    assert same.of(fake_lm("openai/smol")) == LMRuntime("large", 2, True)
    apart = LMRuntimes.for_lms({"large": fake_lm("openai/smol", "http://a/v1"),
                                "small": fake_lm("openai/smol", "http://b/v1")},
                               {"large": LMRuntime("large", 4, False), "small": LMRuntime("small", 2, True)})
    assert apart.of(fake_lm("openai/smol", "http://a/v1")) == LMRuntime("large", 4, False)
    assert apart.of(fake_lm("openai/smol", "http://b/v1")) == LMRuntime("small", 2, True)


def test_an_embedded_fine_tune_inherits_its_base_lms_options() -> None:
    runtimes = LMRuntimes.for_lms({"small": fake_lm("embedded/smollm2-135m")}, {"small": SMALL})
    assert runtimes.of(fake_lm("embedded/smollm2-135m:ft-1a2b3c4d")) == SMALL
    assert runtimes.of(fake_lm("embedded/gemma3-270m:ft-1a2b3c4d")) is None


def test_a_hosted_fine_tune_inherits_its_base_lms_limit_through_the_weight_steps_hook(tmp_path: Path) -> None:
    base = dspy.LM("openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1", cache=False)
    runtimes = LMRuntimes.for_lms({"large": base}, {"large": LARGE})
    tuned = base.copy(model="openai/ft:gpt-4o-mini-2024-07-18:org::abc123")  # how DSPy makes a fine-tuned LM
    assert runtimes.of(tuned) is None  # a name the run has not seen yet
    seen = []
    hooks = inheriting_runtimes(WeightStepHooks(output_dir=tmp_path, on_finetuned=lambda old, new: seen.append(old)),
                                runtimes)
    hooks.on_finetuned("openai/gpt-4o-mini", tuned)
    assert seen == ["openai/gpt-4o-mini"]  # the recorder's hook still runs
    assert runtimes.of(tuned) == LARGE and runtimes.of(copy.deepcopy(tuned)) == LARGE

    observer = RunObserver(threading.Event(), runtimes)
    assert peak_parallel(observer, [base, tuned] * 4) == 2  # base and fine-tune share the one limit
    assert observer.snapshot()[tuned.model]["calls"] == 4


def test_the_runs_weight_step_registers_its_fine_tunes_with_the_runs_runtimes(tmp_path: Path) -> None:
    """The wiring, not just the helper: the weight step ``build_optimizers`` makes reports through hooks
    that give a fine-tuned LM (under a name of the provider's choosing) its base LM's options."""
    prepared = prepare_run(parse_config(scripted_config_dict("analyze_classify", tag="runtime-hooks")))
    seen = []
    optimizers = build_optimizers(prepared, WeightStepHooks(output_dir=tmp_path,
                                                            on_finetuned=lambda old, new: seen.append(new.model)),
                                  make_adapter(prepared.runtimes))
    weight_step = next(o for o in optimizers.values() if isinstance(o, RoleAwareFinetune))
    small = prepared.lms["small"]
    tuned = small.copy(model="provider-chosen-name-7")
    weight_step.hooks.on_finetuned(small.model, tuned)
    assert prepared.runtimes.of(tuned) == prepared.runtimes.of(small) == LMRuntime("small", 1, False)
    assert seen == ["provider-chosen-name-7"]


def test_the_observer_caps_each_configured_lm_by_its_own_limit() -> None:
    runtimes = LMRuntimes.for_lms({"large": fake_lm("openai/a"), "small": fake_lm("embedded/smollm2-135m")},
                                  {"large": LMRuntime("large", 3, False), "small": SMALL})
    observer = RunObserver(threading.Event(), runtimes)
    assert peak_parallel(observer, [fake_lm("openai/a") for _ in range(9)]) == 3
    assert peak_parallel(observer, [fake_lm("embedded/smollm2-135m:ft-00ff00ff") for _ in range(4)]) == 1

    everyone_in = threading.Barrier(4, timeout=10)  # four calls can be in flight at once: no cap
    uncapped = RunObserver(threading.Event(), runtimes)

    def call(i: int) -> None:
        uncapped.on_lm_start(str(i), fake_lm("openai/unknown"), {})
        everyone_in.wait()
        uncapped.on_lm_end(str(i), None, None)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not everyone_in.broken and uncapped.snapshot()["openai/unknown"]["calls"] == 4


class RecordingLM(dspy.BaseLM):
    """A hosted-looking LM that records each request's keyword arguments and answers in ChatAdapter format."""

    def __init__(self, model: str, **kwargs: object) -> None:
        super().__init__(model=model, cache=False, **kwargs)
        self.requests: list[dict] = []

    def forward(self, prompt=None, messages=None, **kwargs):
        self.requests.append(kwargs)
        text = "[[ ## label ## ]]\nbilling\n\n[[ ## completed ## ]]"
        message = SimpleNamespace(content=text, tool_calls=None, reasoning_content=None)
        return SimpleNamespace(choices=[SimpleNamespace(message=message, finish_reason="stop", logprobs=None)],
                               usage={"prompt_tokens": 1, "completion_tokens": 1}, model=self.model)


class Triage(dspy.Signature):
    """Route the ticket."""

    ticket: str = dspy.InputField()
    label: Literal["billing", "bug"] = dspy.OutputField()


def test_the_adapter_sends_a_grammar_only_to_lms_whose_runtime_asks_for_one() -> None:
    with_grammar = RecordingLM("openai/smol", api_base="http://127.0.0.1:9/v1")
    without = RecordingLM("openai/big", api_base="http://127.0.0.1:9/v1")
    unknown = RecordingLM("openai/other", api_base="http://127.0.0.1:9/v1")
    specs = {"gbnf": LiteLLMSpec(kind="litellm", model="openai/smol", grammar="gbnf"),
             "plain": LiteLLMSpec(kind="litellm", model="openai/big")}
    runtimes = LMRuntimes.for_lms({"gbnf": with_grammar, "plain": without},
                                  {name: runtime_for_spec(name, spec, 1) for name, spec in specs.items()})
    adapter = make_adapter(runtimes)
    inputs = {"ticket": "I was charged twice"}
    for lm in (with_grammar, without, unknown):
        assert adapter(lm, {"temperature": 0.0}, Triage, [], inputs) == [{"label": "billing"}]

    system = next(m["content"] for m in StudioChatAdapter().format(Triage, [], inputs) if m["role"] == "system")
    expected = grammar_for_system(system)
    assert expected and '"billing"' in expected
    assert with_grammar.requests[0]["extra_body"] == {"grammar": expected}
    assert with_grammar.requests[0]["temperature"] == 0.0
    assert "extra_body" not in without.requests[0] and "extra_body" not in unknown.requests[0]

    tuned = copy.deepcopy(with_grammar).copy(model="openai/smol:ft-0a1b2c3d")  # a fine-tune keeps its base's grammar
    adapter(tuned, {}, Triage, [], inputs)
    assert tuned.requests[-1]["extra_body"] == {"grammar": expected}
    assert endpoint_of(tuned) == ("openai/smol:ft-0a1b2c3d", "http://127.0.0.1:9/v1")


VALUES = {"bool": "true", "int": "1", "float": "1.0", "list_str": '["text"]', "list_int": "[1]", "list_float": "[1.0]",
          "json": "{}"}


class ChatServer:
    """A loopback OpenAI-style chat server: records each request body and answers every output field the
    ChatAdapter system message asks for (a literal field with its first value, others by kind)."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                bodies.append(body)
                system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
                text = "".join(f"[[ ## {f.name} ## ]]\n{f.choices[0] if f.choices else VALUES.get(f.kind, 'text')}\n\n"
                               for f in output_fields_from_system(system)) + "[[ ## completed ## ]]"
                data = json.dumps({
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_a_bundle_sends_the_grammar_its_hosted_lms_spec_asks_for(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("STUDIO_RUNTIME_TEST_KEY", "sk-local")
    hosted = "analyze.predict"  # the large predictor of the analyze_classify template
    with ChatServer() as server:
        for grammar in ("gbnf", "none"):
            doc = scripted_config_dict("analyze_classify", tag="bundle-grammar")
            doc["lms"]["hosted"] = {"kind": "litellm", "model": "openai/smol", "api_base": server.url,
                                    "api_key_env": "STUDIO_RUNTIME_TEST_KEY", "grammar": grammar}
            doc["predictors"][hosted]["lm"] = "hosted"
            store, run_id = finished_run(tmp_path / grammar, doc)
            program = load_bundle(export_run(store, run_id, tmp_path / grammar / "bundle"),
                                  trusted_endpoints=[server.url])
            store.close()
            outputs = predict(program, {"document": "The invoice was charged twice."})
            assert outputs, outputs
            body = server.bodies[-1]
            system = next(m["content"] for m in body["messages"] if m["role"] == "system")
            if grammar == "gbnf":
                assert body["grammar"] == grammar_for_system(system)  # extra_body is merged into the JSON body
            else:
                assert "grammar" not in body
    assert len(server.bodies) == 2
