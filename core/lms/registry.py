"""Build ``dspy.LM`` objects from the LM specs of a run configuration, and tell their capabilities."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.clients.provider import Provider

from core.config.schema import EmbeddedLMSpec, FactoryLMSpec, LiteLLMSpec, LocalLMSpec
from core.errors import LMError, shown
from core.lms import catalog
from core.lms.hosted import StudioOpenAIProvider

# Default key variables of common LiteLLM providers, used when a spec names none.
DEFAULT_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "groq": "GROQ_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "together_ai": "TOGETHERAI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
}


@dataclass(frozen=True)
class LMCapabilities:
    finetunable: bool
    local_cpu: bool  # runs on this machine's CPU: such runs are queued one at a time
    parallel_calls: int
    reason: str  # why it cannot be fine-tuned, or how it is


def capabilities(spec: Any, *, allow_user_code: bool = False) -> LMCapabilities:
    """What an LM spec can do, without building it.

    Factory LMs are built to find out, and a factory that is not built in runs only with
    ``allow_user_code`` (``LMError`` otherwise): the pages ask before any of your code runs.
    """
    if isinstance(spec, EmbeddedLMSpec):
        return LMCapabilities(True, True, 1, "LoRA fine-tuning on this CPU")
    if isinstance(spec, LocalLMSpec):  # from the spec alone: the files are checked when the LM is built
        if not spec.finetunable:
            return LMCapabilities(False, True, 1, "a .gguf file is inference only; to fine-tune it, give the Hugging "
                                                  "Face folder it was made from as 'weights', or the folder as 'path'")
        return LMCapabilities(True, True, 1, "LoRA fine-tuning of its Hugging Face folder on this machine")
    if isinstance(spec, LiteLLMSpec):
        if spec.finetune == "openai":
            if not spec.model.startswith("openai/"):
                return LMCapabilities(False, False, spec.num_threads, "OpenAI fine-tuning needs an openai/ model")
            return LMCapabilities(True, False, spec.num_threads, "OpenAI fine-tuning job")
        return LMCapabilities(
            False, False, spec.num_threads, "no fine-tuning path: set finetune to 'openai' for OpenAI models"
        )
    if isinstance(spec, FactoryLMSpec):
        lm = build_lm("factory", spec, allow_user_code=allow_user_code)
        provider = getattr(lm, "provider", None)
        ok = bool(getattr(provider, "finetunable", False))
        local = bool(spec.options.get("local_cpu", False))
        return LMCapabilities(ok, local, 1, "its provider fine-tunes" if ok else "its provider cannot fine-tune")
    raise LMError(f"unknown LM spec {shown(spec)}")


def resolve_api_key(spec: LiteLLMSpec) -> str | None:
    """The key for a LiteLLM spec: typed in this session, else its env variable, else the provider's default."""
    if spec.api_key is not None and spec.api_key.get_secret_value():
        return spec.api_key.get_secret_value()
    env_name = spec.api_key_env or DEFAULT_KEY_ENV.get(spec.model.split("/", 1)[0])
    if env_name:
        return os.environ.get(env_name) or None
    return None


def make_local_lm(spec: LocalLMSpec, *, training: bool = False) -> dspy.LM:
    """A ``dspy.LM`` for a local model: its files checked (``core.lms.local.inspect_local``; ``training``: it is
    fine-tuned, which the memory check counts) and registered in this process, then served like an embedded one
    (converted to GGUF on first use)."""
    from core.lms import local

    model = local.inspect_local(spec.path, spec.weights, spec.quant, training=training)
    key = local.register_local(model)
    return make_embedded_lm(key, temperature=spec.temperature, max_tokens=spec.max_tokens)


def make_embedded_lm(key: str, *, temperature: float = 0.0, max_tokens: int = 512) -> dspy.LM:
    """A ``dspy.LM`` for the embedded (or registered local) model ``key``: served by the shared llama.cpp engine, fine-tuned by
    the LoRA provider, which registers each fine-tune with that engine. No cache."""
    from core.lms.embedded import LlamaEngine
    from core.lms.lora import LocalLoRAProvider

    catalog.check_key(key)  # a shipped or a registered local model
    engine = LlamaEngine.shared()
    return dspy.LM(
        catalog.model_name(key),
        engine=engine,
        provider=LocalLoRAProvider(register=engine.register_finetuned, release=engine.release_models),
        cache=False,
        temperature=temperature,
        max_tokens=max_tokens,
    )


def build_lm(name: str, spec: Any, *, allow_user_code: bool = False, training: bool = False) -> dspy.LM:
    """A fresh ``dspy.LM`` for the spec named ``name`` in the configuration (``training``: a ``small`` role's LM,
    for the memory check of a local model)."""
    if isinstance(spec, EmbeddedLMSpec):
        return make_embedded_lm(spec.model, temperature=spec.temperature, max_tokens=spec.max_tokens)
    if isinstance(spec, LocalLMSpec):
        try:
            return make_local_lm(spec, training=training)
        except LMError as e:
            raise LMError(f"LM {shown(name)}: {e}") from e
    if isinstance(spec, LiteLLMSpec):
        return _build_litellm(spec)
    if isinstance(spec, FactoryLMSpec):
        return _build_factory(name, spec, allow_user_code=allow_user_code)
    raise LMError(f"LM {shown(name)}: unknown kind; allowed kinds: embedded, local, litellm, factory")


def _build_litellm(spec: LiteLLMSpec) -> dspy.LM:
    kwargs: dict[str, Any] = {
        "temperature": spec.temperature,
        "max_tokens": spec.max_tokens,
        "cache": False,
        "num_retries": 3,
    }
    if spec.api_base:
        kwargs["api_base"] = spec.api_base
    key = resolve_api_key(spec)
    if key:
        kwargs["api_key"] = key
    # An explicit provider: DSPy would infer OpenAIProvider for openai/ models and could start a paid
    # fine-tuning job; fine-tuning happens only when the spec asks for it.
    if spec.finetune == "openai":
        kwargs["provider"] = StudioOpenAIProvider(api_key=key, base_url=spec.api_base)
    else:
        kwargs["provider"] = Provider()
    try:
        lm = dspy.LM(spec.model, **kwargs)
    except Exception as e:  # noqa: BLE001 - any construction failure becomes a user message
        raise LMError(f"cannot set up LM {shown(spec.model)}: {e}") from e
    return lm  # its grammar option travels in the run's LMRuntimes (core.lms.runtime), not on the LM


def _build_factory(name: str, spec: FactoryLMSpec, *, allow_user_code: bool) -> dspy.LM:
    if not spec.is_builtin and not allow_user_code:
        raise LMError(f"LM {shown(name)}: the factory {shown(spec.factory)} runs your code and was not run; "
                      "allow user code for this configuration to use it")
    module_name, func_name = spec.factory.split(":")
    try:
        module = importlib.import_module(module_name)
        factory = getattr(module, func_name)
    except (ImportError, AttributeError) as e:
        raise LMError(f"LM {shown(name)}: cannot import factory {shown(spec.factory)}: {e}") from e
    options = {k: v for k, v in spec.options.items() if k != "local_cpu"}
    try:
        lm = factory(**options)
    except TypeError as e:
        raise LMError(f"LM {shown(name)}: factory {shown(spec.factory)} rejected its options {shown(sorted(options))}: {e}") from e
    if not isinstance(lm, dspy.BaseLM):
        raise LMError(f"LM {shown(name)}: factory {shown(spec.factory)} returned {type(lm).__name__}, not a dspy.LM")
    return lm


def engine_of(lm: Any) -> Any:
    """The custom engine object of an LM, or None for LiteLLM/lm15 LMs."""
    engine = getattr(lm, "engine", None)
    return None if isinstance(engine, str) or engine is None else engine
