"""DSPy 3.4 engine serving the embedded GGUF models with llama-cpp-python, on the CPU.

This module is the engine only: the DSPy engine contract (``complete``, ``stream``, state,
copies) and the dispatch of a request onto a loaded model. Loading models and fine-tuned
artifacts live in ``core.lms.llama_models``; the cancellable token loop and ``cancel_scope`` in
``core.lms.generation``. The few of their names other modules reach through here are re-exported (``__all__``).

Design, in short:

- **One engine per process.** ``LlamaEngine.shared()`` is a process-wide singleton;
  ``__deepcopy__`` returns self, ``dump_state()`` is ``{}`` and ``load_state`` returns the shared
  instance, so programs can be copied and saved freely. Loaded models are shared the same way
  (one per file per process, see ``llama_models``).
- **Dispatch on ``request.model``**: ``embedded/<catalog key>`` serves a shipped base model and
  ``local/<key>`` a registered local one (``core.lms.local``: its GGUF converted once); names
  registered with ``register_finetuned(name, artifact_dir)`` serve the fine-tuned artifact
  described by ``artifact_dir/meta.json`` (``kind`` ``merged``: a GGUF loaded as its own model;
  ``lora``: a GGUF adapter applied to the base model).
- **Prompts** are rendered by ``catalog.render_prompt`` (the function the fine-tuning provider
  uses for training rows). **Output** is constrained by a grammar built from the ChatAdapter
  system message (``core.lms.grammar``), so zero-shot answers parse.
- **Cancel.** Besides a run's ``cancel_scope`` event, ``LlamaEngine.cancel_event`` (an attribute
  of the engine) is a process-wide switch, and ``cancel_checks`` are extra callables; any of them
  makes the running calls raise ``core.errors.RunCancelled`` (see ``core.lms.generation``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dspy.clients.engines.base import validate_request
from dspy.lm15 import Message, Request, Response, TextPart, Usage, response_to_events

from core.errors import LMError, RunCancelled, shown
from core.lms import catalog, grammar, local
from core.lms.call_cache import active_cache
from core.lms.generation import (
    CancelWatcher,
    Generation,
    cancel_scope,
    run_generation,
    scoped_cancel_event,
)
from core.lms.llama_models import (
    DEFAULT_SEED,
    LoadedModel,
    add_finetuned,
    finetuned,
    finetuned_names,
    load_finetuned,
    load_model,
    n_ctx,
    n_threads,
    read_artifact,
    release_models,
)

# llama_models' names, not the module: with ``from core.lms import llama_models`` here the loaded models lived into the
# interpreter's teardown, where llama_cpp's ``__del__`` ran after its bindings were cleared (a TypeError at exit).

logger = logging.getLogger(__name__)


class LlamaEngine:
    """DSPy engine for the embedded models (see the module docstring)."""

    _shared: LlamaEngine | None = None
    _shared_lock = threading.Lock()

    def __init__(self) -> None:
        self.cancel_event: threading.Event | None = None
        """Process-wide cancel switch, checked besides the ``cancel_scope`` event."""
        self.cancel_checks: list[Callable[[], bool]] = []
        """Extra callables; any returning True cancels the running calls."""

    @classmethod
    def shared(cls) -> LlamaEngine:
        """The process-wide engine."""
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
            return cls._shared

    # -- DSPy plumbing
    def __deepcopy__(self, memo: dict) -> LlamaEngine:
        return self

    def __copy__(self) -> LlamaEngine:
        return self

    def dump_state(self) -> dict:
        return {}

    @classmethod
    def load_state(cls, state: dict) -> LlamaEngine:
        return cls.shared()

    def close(self) -> None:
        """Nothing to release per LM: loaded models live for the process (or until ``release_models``)."""

    def release_models(self) -> list[str]:
        """Close every model this process has loaded (``llama_models.release_models``); calls load them again."""
        return release_models()

    # -- fine-tuned models
    def register_finetuned(self, model_name: str, artifact_dir: Path) -> None:
        """Serve ``model_name`` from the artifact in ``artifact_dir`` (``meta.json`` + GGUF)."""
        if catalog.base_key(model_name) is not None:
            raise LMError(f"fine-tuned model name {shown(model_name)} is the name of a base model")
        artifact = read_artifact(model_name, Path(artifact_dir))
        add_finetuned(artifact)
        logger.info("registered fine-tuned model %s (%s on %s)", model_name, artifact.kind, artifact.base)

    def artifact_dir(self, model_name: str) -> Path | None:
        """Folder of a registered fine-tuned model; None for base models and unknown names."""
        artifact = finetuned(model_name)
        return artifact.directory if artifact else None

    def known_models(self) -> list[str]:
        """Every model name this engine serves."""
        local_names = [catalog.model_name(k) for k in local.local_keys()]
        return catalog.shipped_model_names() + local_names + finetuned_names()

    def resolve(self, model_name: str) -> LoadedModel:
        """The loaded model serving ``model_name`` (loading it on first use)."""
        key = catalog.base_key(model_name)
        if key is not None:
            return load_model(key, catalog.gguf_path(key))
        artifact = finetuned(model_name)
        if artifact is None:
            raise ValueError(
                f"the embedded engine does not serve model {shown(model_name)}; known models are: "
                f"{', '.join(self.known_models())}"
            )
        return load_finetuned(artifact)

    # -- cancel
    def cancelled(self) -> bool:
        """Whether the current call should stop now."""
        scoped = scoped_cancel_event()
        if scoped is not None and scoped.is_set():
            return True
        return self._cancelled_process_wide()

    def _cancelled_process_wide(self) -> bool:
        """The engine's own switches: ``cancel_event`` and ``cancel_checks`` (any thread)."""
        if self.cancel_event is not None and self.cancel_event.is_set():
            return True
        return any(check() for check in self.cancel_checks)

    # -- generation
    def complete(self, request: Request) -> Response:
        """Generate one answer for ``request`` (see the engine contract in docs/architecture.md)."""
        validate_request(request)
        loaded = self.resolve(request.model)
        messages = request_messages(request)
        prompt = catalog.render_prompt(loaded.key, messages)
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
        grammar_text = grammar.grammar_for_system(system)
        config = request.config
        stop = list(config.stop) + catalog.stop_strings(loaded.key)
        cache = active_cache() if not config.temperature else None  # per-run cache of deterministic calls
        key = (request.model, prompt, grammar_text, config.max_tokens or 512, tuple(stop))
        result = cache.get(key) if cache is not None else None
        while result is None:
            result = self._generate(
                loaded,
                prompt,
                grammar_text=grammar_text,
                max_tokens=config.max_tokens or 512,
                temperature=config.temperature or 0.0,
                stop=stop,
                seed=config.seed,
            )
            if result is None:  # released meanwhile (a weight step frees memory): load it again
                loaded = self.resolve(request.model)
            elif cache is not None:
                cache.put(key, result)
        return Response(
            id=None,
            model=request.model,
            message=Message.assistant([TextPart(result.text)]),
            finish_reason=result.finish_reason,
            usage=Usage(
                input_tokens=result.input_tokens,
                output_tokens=result.output_tokens,
                total_tokens=result.input_tokens + result.output_tokens,
            ),
        )

    def stream(self, request: Request) -> Iterator[Any]:
        """Stream events of one completion (the answer arrives as a whole)."""
        return response_to_events(self.complete(request))

    def _generate(
        self,
        loaded: LoadedModel,
        prompt: str,
        *,
        grammar_text: str | None,
        max_tokens: int,
        temperature: float,
        stop: list[str],
        seed: int | None = None,
    ) -> Generation | None:
        """The generation, or None where ``loaded`` was released before its lock was free."""
        with loaded.lock:
            if loaded.closed:
                return None
            llama = loaded.llama
            compiled = grammar.compile_grammar(grammar_text, llama) if grammar_text else None
            if self.cancelled():
                raise RunCancelled("the run was cancelled")
            tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
            if len(tokens) + max_tokens > llama.n_ctx():
                max_tokens = llama.n_ctx() - len(tokens)
                if max_tokens <= 0:
                    raise LMError(
                        f"the prompt has {len(tokens)} tokens, more than the context of {llama.n_ctx()} "
                        "(set STUDIO_LLAMA_CTX to raise it)"
                    )
            loaded.calls += 1
            if temperature > 0:
                llama.set_seed(seed if seed is not None else DEFAULT_SEED + loaded.calls)
            watcher = CancelWatcher(loaded.abort_flag, self._cancelled_process_wide)
            loaded.prefix_states.restore(llama, tokens)  # another prompt family's call may have come between
            try:
                with watcher:
                    result = run_generation(llama, tokens, grammar=compiled, max_tokens=max_tokens,
                                            temperature=temperature, stop=stop, watcher=watcher)
                loaded.prefix_states.remember(llama)
                return result
            except RuntimeError as e:
                if watcher.fired:  # llama_decode aborted by the cancel
                    raise RunCancelled("the run was cancelled") from e
                raise


def request_messages(request: Request) -> list[dict]:
    """The request as chat messages: the system message, then the turns (demos included)."""
    messages = []
    system = request.system
    if system is not None:
        text = system if isinstance(system, str) else "".join(getattr(p, "text", "") or "" for p in system)
        messages.append({"role": "system", "content": text})
    for message in request.messages:
        role = "assistant" if message.role == "assistant" else "user"
        messages.append({"role": role, "content": message.text or ""})
    return messages


# --- module-level helpers ----------------------------------------------------------------------------


def register_finetuned(model_name: str, artifact_dir: Path) -> None:
    """Serve ``model_name`` from ``artifact_dir`` with the shared engine."""
    LlamaEngine.shared().register_finetuned(model_name, artifact_dir)


def artifact_dir(model_name: str) -> Path | None:
    """Folder of a registered fine-tuned model (what the export copies), else None."""
    return LlamaEngine.shared().artifact_dir(model_name)


__all__ = [
    # the engine
    "LlamaEngine",
    "artifact_dir",
    "register_finetuned",
    "request_messages",
    # re-exported because callers reach them through the engine's module: cancel_scope (tests/lms/test_embedded.py),
    # n_ctx (core.optimizers.stratify), n_threads (tests/lms/test_cpu.py, bench/inference.py)
    "cancel_scope",
    "n_ctx",
    "n_threads",
]
