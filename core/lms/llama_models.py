"""The GGUF models llama.cpp serves in this process: loading them once, and the fine-tuned artifacts.

Why a module of its own: a loaded model is a process-wide resource (hundreds of MB, seconds to
load, a llama.cpp context that is not thread-safe), whereas the engine (``core.lms.embedded``) is
the DSPy contract that dispatches requests onto these models.

- **One loaded model per file per process.** ``load_model(key, path, lora_path)`` keeps a
  module-level registry of ``llama_cpp.Llama`` objects (guarded by a lock); each has its own lock
  because a llama.cpp context is not thread-safe, and an abort flag that llama.cpp's abort
  callback reads, so that a cancel also interrupts a prompt evaluation (``llama_decode``).
  ``release_models()`` closes them all (the weight step does, before it trains: see there); the
  next call loads its model again.
- **Settings from the environment**, read at load time: ``STUDIO_LLAMA_THREADS`` (see
  ``core.lms.cpu``) and ``STUDIO_LLAMA_CTX``.
- **Fine-tuned artifacts**: a folder with ``meta.json`` (``base``: a catalogue key, or a local model's key,
  registered in this process first; ``kind``
  ``merged``: a GGUF loaded as its own model, or ``lora``: a GGUF adapter applied to the base
  model; ``file``: the GGUF in that folder). ``add_finetuned`` validates and records one under
  its model name; the engine looks names up with ``finetuned``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import LMError, shown
from core.lms import catalog
from core.lms.cpu import return_freed_memory, threads_for_native_code
from core.lms.native_log import first_error, native_errors
from core.lms.prefix_states import PrefixStates

logger = logging.getLogger(__name__)

DEFAULT_SEED = 1234
DEFAULT_N_CTX = 2048
ARTIFACT_KINDS = ("merged", "lora")


# --- settings from the environment --------------------------------------------------------------


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError as e:
        raise LMError(f"{name}={shown(value)} must be an integer") from e


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
    prefix_states: PrefixStates = field(default_factory=PrefixStates)  # KV states of recent prompt families
    closed: bool = False
    """Set (under ``lock``) by ``release_models``: whoever resolved it before must resolve it again."""
    _abort_callback: Any = None  # keeps the ctypes callback alive


_loaded: dict[tuple[str, str], LoadedModel] = {}
_loaded_lock = threading.Lock()


def load_model(key: str, path: Path, lora_path: Path | None = None) -> LoadedModel:
    """The process-wide loaded model for (path, lora_path); loads it on first use."""
    registry_key = (str(path), str(lora_path or ""))
    with _loaded_lock:
        loaded = _loaded.get(registry_key)
        if loaded is not None:
            return loaded
        import llama_cpp

        started = time.monotonic()
        try:
            with native_errors() as errors:  # llama.cpp's lines: the "llama.cpp" logger (a run's log file)
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
            raise LMError(f"cannot load the GGUF model {path} (lora {lora_path}): "
                          f"{first_error(errors, str(e))}") from e
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


def release_models() -> list[str]:
    """Close every loaded model and forget it: its weights, KV cache, logits buffer and saved prefix states
    leave memory (the default run's worker held 790 MB before its weight step with SmolLM2 loaded, 487 MB with it
    released: ``bench/default_run.py``, docs/benchmarks.md). A call in flight finishes first (each model's lock);
    a later call loads the model again (about half a second for the shipped ones). Returns the files released."""
    with _loaded_lock:
        models = list(_loaded.values())
        _loaded.clear()
    for loaded in models:
        with loaded.lock:
            loaded.closed = True
            loaded.prefix_states = PrefixStates()
            loaded.llama.close()
            loaded.llama = None
    return_freed_memory()
    if models:
        logger.info("released %s", ", ".join(m.path.name + (f" + {m.lora_path.name}" if m.lora_path else "")
                                             for m in models))
    return [str(m.path) for m in models]


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


def read_artifact(model_name: str, artifact_dir: Path) -> FinetunedArtifact:
    """The artifact described by ``artifact_dir/meta.json``; LMError naming what is wrong and what is allowed."""
    meta_path = Path(artifact_dir) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LMError(f"cannot read {meta_path} for fine-tuned model {shown(model_name)}: {e}") from e
    base, kind, file = meta.get("base"), meta.get("kind"), meta.get("file")
    catalog.check_key(base)  # a shipped or registered local key; LMError naming the allowed ones
    if kind not in ARTIFACT_KINDS:
        raise LMError(f"{meta_path}: kind {shown(kind)} is not one of {', '.join(ARTIFACT_KINDS)}")
    if not isinstance(file, str) or not (Path(artifact_dir) / file).is_file():
        raise LMError(f"{meta_path}: file {shown(file)} does not exist in {artifact_dir}")
    return FinetunedArtifact(model_name, Path(artifact_dir), base, kind, file)


def add_finetuned(artifact: FinetunedArtifact) -> None:
    """Record ``artifact`` under its model name for this process (replacing an earlier one)."""
    with _finetuned_lock:
        _finetuned[artifact.name] = artifact


def finetuned(model_name: str) -> FinetunedArtifact | None:
    """The recorded fine-tuned artifact named ``model_name``, else None."""
    with _finetuned_lock:
        return _finetuned.get(model_name)


def finetuned_names() -> list[str]:
    """The names of the recorded fine-tuned models, sorted."""
    with _finetuned_lock:
        return sorted(_finetuned)


def load_finetuned(artifact: FinetunedArtifact) -> LoadedModel:
    """The loaded model serving ``artifact``: its merged GGUF, or its base with the LoRA adapter."""
    file = artifact.directory / artifact.file
    if artifact.kind == "merged":
        return load_model(artifact.base, file)
    return load_model(artifact.base, catalog.gguf_path(artifact.base), lora_path=file)


__all__ = [
    "ARTIFACT_KINDS",
    "DEFAULT_N_CTX",
    "DEFAULT_SEED",
    "FinetunedArtifact",
    "LoadedModel",
    "add_finetuned",
    "finetuned",
    "finetuned_names",
    "load_finetuned",
    "load_model",
    "loaded_models",
    "n_ctx",
    "n_threads",
    "read_artifact",
    "release_models",
]
