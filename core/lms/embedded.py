"""DSPy 3.4 engine serving the embedded GGUF models with llama-cpp-python, on the CPU.

Design, in short:

- **One loaded model per file per process.** ``_load(path, lora)`` keeps a module-level registry
  of ``llama_cpp.Llama`` objects (guarded by a lock); each has its own lock because a llama.cpp
  context is not thread-safe. The engine itself is a process-wide singleton
  (``LlamaEngine.shared()``); ``__deepcopy__`` returns self, ``dump_state()`` is ``{}`` and
  ``load_state`` returns the shared instance, so programs can be copied and saved freely.
- **Dispatch on ``request.model``**: ``embedded/<catalog key>`` serves a base model; names
  registered with ``register_finetuned(name, artifact_dir)`` serve the fine-tuned artifact
  described by ``artifact_dir/meta.json`` (``kind`` ``merged``: a GGUF loaded as its own model;
  ``lora``: a GGUF adapter applied to the base model).
- **Prompts** are rendered by ``catalog.render_prompt`` (the function the fine-tuning provider
  uses for training rows). **Output** is constrained by a grammar built from the ChatAdapter
  system message (``core.lms.grammar``), so zero-shot answers parse.
- **Prefix reuse**: generation goes through ``Llama.generate`` on the same instance, which keeps
  the KV cache of the longest common token prefix with the previous call: consecutive calls that
  share the system message and demos only evaluate the new suffix.
- **Cancel.** A run passes its ``threading.Event`` with ``with cancel_scope(event): ...``. The
  scope stores the event in DSPy's context (``dspy.context(studio_cancel_event=event)``), because
  DSPy's ParallelExecutor copies DSPy's context overrides into its worker threads but not other
  contextvars: the event therefore reaches every evaluation thread of the run, and only that
  run's calls. ``LlamaEngine.cancel_event`` (an attribute of the engine) is a process-wide
  switch as well. The engine checks both between generated tokens and, through llama.cpp's abort
  callback, between prompt-evaluation steps, and raises ``core.errors.RunCancelled`` (a
  BaseException that passes DSPy's ``except Exception`` layers).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
from dspy.clients.engines.base import validate_request
from dspy.lm15 import Message, Request, Response, TextPart, Usage, response_to_events

from core.errors import LMError, RunCancelled
from core.lms import catalog, grammar
from core.lms.call_cache import active_cache
from core.lms.cpu import threads_for_native_code

logger = logging.getLogger(__name__)

MODEL_PREFIX = catalog.MODEL_PREFIX
CANCEL_SETTING = "studio_cancel_event"
DEFAULT_SEED = 1234
DEFAULT_N_CTX = 2048
# create_completion's sampling defaults (used when temperature > 0)
TOP_K, TOP_P, MIN_P = 40, 0.95, 0.05


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError as e:
        raise LMError(f"{name}={value!r} must be an integer") from e


def n_threads() -> int:
    """Threads per llama.cpp context: env ``STUDIO_LLAMA_THREADS``, else 2, or 1 when the CPU is already
    busy at load time (see ``core.lms.cpu``: spinning OpenMP threads on a busy CPU are 60x slower)."""
    return threads_for_native_code("STUDIO_LLAMA_THREADS")


def n_ctx() -> int:
    """Context length of a loaded model: env ``STUDIO_LLAMA_CTX`` (default 2048)."""
    return _env_int("STUDIO_LLAMA_CTX", DEFAULT_N_CTX)


# --- loaded models --------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A ``llama_cpp.Llama`` with its lock and the catalogue key whose prompt format it uses."""

    key: str
    path: Path
    lora_path: Path | None
    llama: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: int = 0
    abort_flag: threading.Event = field(default_factory=threading.Event)
    _abort_callback: Any = None  # keeps the ctypes callback alive


_loaded: dict[tuple[str, str], LoadedModel] = {}
_loaded_lock = threading.Lock()


def _load(key: str, path: Path, lora_path: Path | None = None) -> LoadedModel:
    """The process-wide loaded model for (path, lora_path); loads it on first use."""
    registry_key = (str(path), str(lora_path or ""))
    with _loaded_lock:
        loaded = _loaded.get(registry_key)
        if loaded is not None:
            return loaded
        import llama_cpp

        started = time.monotonic()
        try:
            llama = llama_cpp.Llama(
                model_path=str(path),
                lora_path=str(lora_path) if lora_path else None,
                n_ctx=n_ctx(),
                n_threads=n_threads(),
                n_threads_batch=n_threads(),
                seed=DEFAULT_SEED,
                verbose=False,
            )
        except Exception as e:
            raise LMError(f"cannot load the GGUF model {path} (lora {lora_path}): {e}") from e
        loaded = LoadedModel(key=key, path=path, lora_path=lora_path, llama=llama)
        _install_abort_callback(loaded)
        _loaded[registry_key] = loaded
        logger.info("loaded %s%s in %.1f s", path.name, f" + {lora_path.name}" if lora_path else "",
                    time.monotonic() - started)
        return loaded


def _install_abort_callback(loaded: LoadedModel) -> None:
    """Let a cancel interrupt llama.cpp's prompt evaluation (``llama_decode``) as well."""
    import llama_cpp

    flag = loaded.abort_flag

    @llama_cpp.ggml_abort_callback
    def should_abort(_data: Any) -> bool:
        return flag.is_set()

    llama_cpp.llama_set_abort_callback(loaded.llama._ctx.ctx, should_abort, None)
    loaded._abort_callback = should_abort


def loaded_models() -> list[LoadedModel]:
    """Models loaded in this process (for diagnostics and tests)."""
    with _loaded_lock:
        return list(_loaded.values())


# --- fine-tuned artifacts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FinetunedArtifact:
    """A fine-tuned model as described by ``meta.json`` in its artifact folder."""

    name: str
    directory: Path
    base: str
    kind: str
    file: str


_finetuned: dict[str, FinetunedArtifact] = {}
_finetuned_lock = threading.Lock()
ARTIFACT_KINDS = ("merged", "lora")


def _read_artifact(model_name: str, artifact_dir: Path) -> FinetunedArtifact:
    meta_path = Path(artifact_dir) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LMError(f"cannot read {meta_path} for fine-tuned model {model_name!r}: {e}") from e
    base, kind, file = meta.get("base"), meta.get("kind"), meta.get("file")
    catalog.get_model(base)  # LMError naming the allowed keys
    if kind not in ARTIFACT_KINDS:
        raise LMError(f"{meta_path}: kind {kind!r} is not one of {', '.join(ARTIFACT_KINDS)}")
    if not isinstance(file, str) or not (Path(artifact_dir) / file).is_file():
        raise LMError(f"{meta_path}: file {file!r} does not exist in {artifact_dir}")
    return FinetunedArtifact(model_name, Path(artifact_dir), base, kind, file)


# --- cancel -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def cancel_scope(event: threading.Event) -> Iterator[threading.Event]:
    """Make every embedded call inside the block (and in DSPy worker threads it starts) cancellable.

    Setting ``event`` makes the running and the following calls raise ``RunCancelled``.
    """
    with dspy.context(**{CANCEL_SETTING: event}):
        yield event


def _scoped_cancel_event() -> threading.Event | None:
    event = dspy.settings.get(CANCEL_SETTING)
    return event if isinstance(event, threading.Event) else None


# --- the engine -------------------------------------------------------------------------------------


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
        """Nothing to release per LM: loaded models live for the process."""

    # -- fine-tuned models
    def register_finetuned(self, model_name: str, artifact_dir: Path) -> None:
        """Serve ``model_name`` from the artifact in ``artifact_dir`` (``meta.json`` + GGUF)."""
        if model_name in {MODEL_PREFIX + key for key in catalog.MODELS}:
            raise LMError(f"fine-tuned model name {model_name!r} is the name of a base model")
        artifact = _read_artifact(model_name, Path(artifact_dir))
        with _finetuned_lock:
            _finetuned[model_name] = artifact
        logger.info("registered fine-tuned model %s (%s on %s)", model_name, artifact.kind, artifact.base)

    def artifact_dir(self, model_name: str) -> Path | None:
        """Folder of a registered fine-tuned model; None for base models and unknown names."""
        with _finetuned_lock:
            artifact = _finetuned.get(model_name)
        return artifact.directory if artifact else None

    def known_models(self) -> list[str]:
        """Every model name this engine serves."""
        with _finetuned_lock:
            tuned = sorted(_finetuned)
        return [MODEL_PREFIX + key for key in catalog.MODELS] + tuned

    def resolve(self, model_name: str) -> LoadedModel:
        """The loaded model serving ``model_name`` (loading it on first use)."""
        if model_name.startswith(MODEL_PREFIX) and model_name[len(MODEL_PREFIX) :] in catalog.MODELS:
            key = model_name[len(MODEL_PREFIX) :]
            return _load(key, catalog.gguf_path(key))
        with _finetuned_lock:
            artifact = _finetuned.get(model_name)
        if artifact is None:
            raise ValueError(
                f"the embedded engine does not serve model {model_name!r}; known models are: "
                f"{', '.join(self.known_models())}"
            )
        file = artifact.directory / artifact.file
        if artifact.kind == "merged":
            return _load(artifact.base, file)
        return _load(artifact.base, catalog.gguf_path(artifact.base), lora_path=file)

    # -- cancel
    def cancelled(self) -> bool:
        """Whether the current call should stop now."""
        scoped = _scoped_cancel_event()
        if scoped is not None and scoped.is_set():
            return True
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
        if result is None:
            result = self._generate(
                loaded,
                prompt,
                grammar_text=grammar_text,
                max_tokens=config.max_tokens or 512,
                temperature=config.temperature or 0.0,
                stop=stop,
                seed=config.seed,
            )
            if cache is not None:
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
    ) -> Generation:
        llama = loaded.llama
        compiled = grammar.compile_grammar(grammar_text, llama) if grammar_text else None
        with loaded.lock:
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
            watcher = _CancelWatcher(self, loaded.abort_flag)
            try:
                with watcher:
                    return _run_generation(llama, tokens, compiled, max_tokens, temperature, stop, watcher)
            except RuntimeError as e:
                if watcher.fired:  # llama_decode aborted by the cancel
                    raise RunCancelled("the run was cancelled") from e
                raise


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str
    input_tokens: int
    output_tokens: int


class _CancelWatcher:
    """Watches the cancel state while one call runs; raises llama.cpp's abort flag when set.

    A small thread polls every ``interval`` seconds so that a cancel also interrupts a long
    prompt evaluation (inside ``llama_decode``, where no Python code runs between tokens).
    """

    def __init__(self, engine: LlamaEngine, abort_flag: threading.Event, interval: float = 0.05) -> None:
        self.engine = engine
        self.abort_flag = abort_flag
        self.interval = interval
        self.fired = False
        self._scoped = _scoped_cancel_event()  # read in the caller's thread (DSPy context)
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def _requested(self) -> bool:
        engine = self.engine
        return (
            (self._scoped is not None and self._scoped.is_set())
            or (engine.cancel_event is not None and engine.cancel_event.is_set())
            or any(check() for check in engine.cancel_checks)
        )

    def check(self) -> bool:
        """Whether the call must stop (sets the abort flag the first time it is true)."""
        if not self.fired and self._requested():
            self.fired = True
            self.abort_flag.set()
        return self.fired

    def _poll(self) -> None:
        while not self._done.wait(self.interval):
            if self.check():
                return

    def __enter__(self) -> _CancelWatcher:
        self.abort_flag.clear()
        self._thread = threading.Thread(target=self._poll, name="llama-cancel-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        self.abort_flag.clear()


def _run_generation(
    llama: Any,
    tokens: list[int],
    compiled: Any,
    max_tokens: int,
    temperature: float,
    stop: list[str],
    watcher: _CancelWatcher,
) -> Generation:
    """Token-by-token generation on ``llama`` (prefix-cached), stopping on EOG, stop strings, limits."""
    import llama_cpp

    vocab = llama._model.vocab
    out_tokens: list[int] = []
    text = b""
    stop_bytes = [s.encode("utf-8") for s in stop if s]
    finish_reason = "length"
    greedy = temperature <= 0
    generator = llama.generate(
        tokens,
        top_k=1 if greedy else TOP_K,
        top_p=1.0 if greedy else TOP_P,
        min_p=0.0 if greedy else MIN_P,
        temp=0.0 if greedy else temperature,
        repeat_penalty=1.0,
        grammar=compiled,
    )
    try:
        for token in generator:
            if watcher.check():
                raise RunCancelled("the run was cancelled")
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                finish_reason = "stop"
                break
            out_tokens.append(token)
            text += llama.detokenize([token], prev_tokens=tokens + out_tokens[:-1], special=True)
            cut = _first_stop(text, stop_bytes)
            if cut is not None:
                text = text[:cut]
                finish_reason = "stop"
                break
            if len(out_tokens) >= max_tokens:
                break
    finally:
        generator.close()
    return Generation(text.decode("utf-8", errors="ignore"), finish_reason, len(tokens), len(out_tokens))


def _first_stop(text: bytes, stops: list[bytes]) -> int | None:
    positions = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(positions) if positions else None


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
