"""Hosted LMs without a network: error messages, prices, parallel-call limits, OpenAI fine-tuning
against a local stand-in of OpenAI's API."""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path

import dspy
import pytest
from dspy.utils import exceptions as dspy_errors

from core.config.defaults import scripted_config_dict
from core.config.schema import LiteLLMSpec, parse_config
from core.errors import LMError, StepCancelled
from core.lms.hosted import StudioOpenAIProvider, base_model_of, check_endpoint, explain_lm_error, price_per_token
from core.lms.lora.params import PARAMS
from core.lms.registry import build_lm, capabilities
from core.lms.runtime import LMRuntimes, runtime_for_spec
from core.run import RunManager, RunObserver, with_costs
from core.store import Store
from tests.fake_openai import FakeOpenAI

ROWS = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}] * 3


def test_error_messages_say_what_to_do() -> None:
    auth = dspy_errors.LMAuthError("401 invalid key", model="openai/x") if _takes_model() else dspy_errors.LMAuthError(
        "401 invalid key")
    assert "API key was rejected" in explain_lm_error(auth, "openai/x", "http://h/v1")
    assert "rate limited" in explain_lm_error(dspy_errors.LMRateLimitError("429"), "openai/x")
    assert "cannot reach the server at http://h/v1" in explain_lm_error(
        dspy_errors.LMTransportError("connection refused"), "openai/x", "http://h/v1")
    assert "unknown model" in explain_lm_error(dspy_errors.LMUnsupportedModelError("model not found"), "openai/x")
    assert explain_lm_error(ValueError("boom")) == "ValueError: boom"


def _takes_model() -> bool:
    try:
        dspy_errors.LMAuthError("x", model="m")
        return True
    except TypeError:
        return False


def test_prices_from_spec_or_litellm_map_and_costs_per_model() -> None:
    assert price_per_token("my/model", 1.0, 2.0) == (1e-6, 2e-6)
    known = price_per_token("openai/gpt-4o-mini")
    assert known is not None and known[0] > 0  # from LiteLLM's bundled (offline) price map
    assert price_per_token("embedded/smollm2-135m") is None
    assert base_model_of("openai/ft:gpt-4o-mini-2024-07-18:org::abc") == "openai/gpt-4o-mini-2024-07-18"
    usage = {"openai/m": {"calls": 2, "input_tokens": 1000, "output_tokens": 500},
             "embedded/x": {"calls": 1, "input_tokens": 10, "output_tokens": 1}}
    costs = with_costs(usage, {"openai/m": (1e-6, 2e-6)})
    assert costs["openai/m"]["cost"] == pytest.approx(0.002)
    assert costs["embedded/x"]["cost"] is None  # unknown price: None, not 0


def test_finetune_capability_only_when_asked() -> None:
    plain = LiteLLMSpec(kind="litellm", model="openai/gpt-4o-mini")
    assert not capabilities(plain).finetunable
    assert not build_lm("x", plain).provider.finetunable  # no accidental paid job
    tuned = LiteLLMSpec(kind="litellm", model="openai/gpt-4o-mini", finetune="openai")
    assert capabilities(tuned).finetunable
    assert isinstance(build_lm("x", tuned).provider, StudioOpenAIProvider)
    other = LiteLLMSpec(kind="litellm", model="anthropic/claude-x", finetune="openai")
    assert not capabilities(other).finetunable


def test_small_role_on_a_hosted_lm_without_finetuning_is_refused_before_the_run(tmp_path: Path) -> None:
    doc = scripted_config_dict("classifier")
    doc["lms"]["hosted"] = {"kind": "litellm", "model": "openai/gpt-4o-mini"}
    doc["predictors"]["classify"]["lm"] = "hosted"
    manager = RunManager(Store(tmp_path / "db.sqlite"))
    with pytest.raises(LMError, match="role 'small' but LM 'hosted' cannot be fine-tuned"):
        manager.start(parse_config(doc))
    assert manager.store.list_runs() == []  # nothing was started


def test_openai_finetuning_reports_progress_and_returns_the_model_id() -> None:
    with FakeOpenAI(total_steps=3) as server:
        provider = StudioOpenAIProvider(api_key="sk-fake", base_url=server.base_url, poll_seconds=0.01)
        progress: list[tuple[int, int, float]] = []
        job = provider.TrainingJob(model="openai/gpt-4o-mini")
        name = provider.finetune(job, "openai/gpt-4o-mini", ROWS, None,
                                 {"epochs": 2, "progress": lambda *a: progress.append(a)})
        assert name == "openai/ft:gpt-4o-mini:studio::ftjob-1"
        assert [p[0] for p in progress] == [1, 2, 3] and progress[-1][1] == 3
        assert server.jobs["ftjob-1"]["hyperparameters"] == {"n_epochs": 2, "batch_size": PARAMS["batch_size"].default}
        body = server.uploads[0]
        first_row = body[body.index(b'{"messages"'):].split(b"\n")[0]
        assert json.loads(first_row)["messages"][1]["content"] == "ok"  # the chat rows were uploaded as JSONL


def test_openai_finetuning_takes_omitted_hyper_parameters_from_the_one_table() -> None:
    with FakeOpenAI(total_steps=1) as server:
        provider = StudioOpenAIProvider(api_key="sk-fake", base_url=server.base_url, poll_seconds=0.01)
        provider.finetune(provider.TrainingJob(), "openai/gpt-4o-mini", ROWS, None, {})
        provider.finetune(provider.TrainingJob(), "openai/gpt-4o-mini", ROWS, None, {"epochs": 5, "batch_size": 2})
        assert server.jobs["ftjob-1"]["hyperparameters"] == {"n_epochs": PARAMS["epochs"].default,
                                                             "batch_size": PARAMS["batch_size"].default}
        assert server.jobs["ftjob-2"]["hyperparameters"] == {"n_epochs": 5, "batch_size": 2}
        with pytest.raises(LMError, match=r"train_kwargs\['epochs'\].* out of range"):
            provider.finetune(provider.TrainingJob(), "openai/gpt-4o-mini", ROWS, None, {"epochs": 0})
        assert len(server.uploads) == 2  # refused before its rows were uploaded


def test_openai_finetuning_cancel_cancels_the_remote_job() -> None:
    with FakeOpenAI(total_steps=100) as server:
        provider = StudioOpenAIProvider(api_key="sk-fake", base_url=server.base_url, poll_seconds=0.01)
        stop = threading.Event()
        seen: list[int] = []

        def progress(step: int, total: int, loss: float) -> None:
            seen.append(step)
            if step == 2:
                stop.set()

        with pytest.raises(StepCancelled, match="OpenAI job ftjob-1 was cancelled"):
            provider.finetune(provider.TrainingJob(), "openai/gpt-4o-mini", ROWS, None,
                              {"progress": progress, "should_stop": stop.is_set})
        assert server.cancelled == ["ftjob-1"]


def test_openai_finetuning_failures_are_messages() -> None:
    with FakeOpenAI(total_steps=1, fail=True) as server:
        provider = StudioOpenAIProvider(api_key="sk-fake", base_url=server.base_url, poll_seconds=0.01)
        with pytest.raises(LMError, match="ended as failed: training data rejected"):
            provider.finetune(provider.TrainingJob(), "openai/gpt-4o-mini", ROWS, None, {})
        bad_key = StudioOpenAIProvider(api_key="sk-wrong", base_url=server.base_url, poll_seconds=0.01)
        with pytest.raises(LMError, match="API key was rejected"):
            bad_key.finetune(bad_key.TrainingJob(), "openai/gpt-4o-mini", ROWS, None, {})
    assert "sk-fake" not in repr(provider)


def test_endpoint_check_names_unreachable_servers() -> None:
    with pytest.raises(LMError, match="cannot reach the server at http://127.0.0.1:9/v1"):
        check_endpoint("openai/x", "http://127.0.0.1:9/v1", None, timeout=2)


def test_parallel_calls_per_lm_are_capped() -> None:
    """RunObserver holds each LM to its own parallel-call limit, whatever the evaluation threads; the limit
    is found from the LM's model name, so the deep copies DSPy makes of an LM share it."""
    spec = LiteLLMSpec(kind="litellm", model="openai/x", num_threads=2)
    lm = build_lm("hosted", spec)
    runtime = runtime_for_spec("hosted", spec, capabilities(spec).parallel_calls)
    runtimes = LMRuntimes.for_lms({"hosted": lm}, {"hosted": runtime})
    observer = RunObserver(threading.Event(), runtimes)

    active, peak = 0, 0
    lock = threading.Lock()

    def call(i: int) -> None:
        nonlocal active, peak
        observer.on_lm_start(str(i), copy.deepcopy(lm), {})
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        observer.on_lm_end(str(i), None, None)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert peak == 2
    assert observer.snapshot()["openai/x"]["calls"] == 8
    assert not [k for k in vars(lm) if k.startswith("studio_")]  # nothing rides on the LM object


def test_hosted_lm_state_in_a_saved_program_has_no_key(tmp_path: Path) -> None:
    lm = build_lm("x", LiteLLMSpec(kind="litellm", model="openai/gpt-4o-mini", api_key="sk-CANARY-save"))
    program = dspy.Predict("question -> answer")
    program.lm = lm
    program.save(str(tmp_path / "p.json"))
    assert "CANARY" not in (tmp_path / "p.json").read_text()
