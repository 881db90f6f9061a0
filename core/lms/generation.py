"""One cancellable generation on a loaded llama.cpp model, and the scope that makes a run's calls cancellable.

Why a module of its own: cancelling is the delicate part of serving a local model (a llama.cpp
call runs native code for seconds, in DSPy worker threads the run does not own), and the
token loop is where it is honoured; the engine (``core.lms.embedded``) only wires them up.

- **Prefix reuse**: ``run_generation`` goes through ``Llama.generate`` on the same instance, which
  keeps the KV cache of the longest common token prefix with the previous call: consecutive
  calls that share the system message and demos only evaluate the new suffix.
- **Cancel.** A run passes its ``threading.Event`` with ``with cancel_scope(event): ...``. The
  scope stores the event in DSPy's context (``dspy.context(studio_cancel_event=event)``), because
  DSPy's ParallelExecutor copies DSPy's context overrides into its worker threads but not other
  contextvars: the event therefore reaches every evaluation thread of the run, and only that
  run's calls. The engine adds its process-wide switches (``LlamaEngine.cancel_event`` and
  ``cancel_checks``). A ``CancelWatcher`` checks both between generated tokens and, through
  llama.cpp's abort callback (the loaded model's abort flag), between prompt-evaluation steps;
  the call then raises ``core.errors.RunCancelled`` (a BaseException that passes DSPy's
  ``except Exception`` layers).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import dspy

from core.errors import RunCancelled

CANCEL_SETTING = "studio_cancel_event"
# create_completion's sampling defaults (used when temperature > 0)
TOP_K, TOP_P, MIN_P = 40, 0.95, 0.05


# --- cancel -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def cancel_scope(event: threading.Event) -> Iterator[threading.Event]:
    """Make every embedded call inside the block (and in DSPy worker threads it starts) cancellable.

    Setting ``event`` makes the running and the following calls raise ``RunCancelled``.
    """
    with dspy.context(**{CANCEL_SETTING: event}):
        yield event


def scoped_cancel_event() -> threading.Event | None:
    """The event of the enclosing ``cancel_scope`` in this thread's DSPy context, else None."""
    event = dspy.settings.get(CANCEL_SETTING)
    return event if isinstance(event, threading.Event) else None


class CancelWatcher:
    """Watches the cancel state while one call runs; raises llama.cpp's abort flag when set.

    The cancel state is the ``cancel_scope`` event (read when the watcher is made, in the caller's
    thread, where DSPy's context is) or ``process_wide()``. A small thread polls every ``interval``
    seconds so that a cancel also interrupts a long prompt evaluation (inside ``llama_decode``,
    where no Python code runs between tokens).
    """

    def __init__(self, abort_flag: threading.Event, process_wide: Callable[[], bool], interval: float = 0.05) -> None:
        self.abort_flag = abort_flag
        self.process_wide = process_wide
        self.interval = interval
        self.fired = False
        self._scoped = scoped_cancel_event()  # read in the caller's thread (DSPy context)
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def _requested(self) -> bool:
        return (self._scoped is not None and self._scoped.is_set()) or self.process_wide()

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

    def __enter__(self) -> CancelWatcher:
        self.abort_flag.clear()
        self._thread = threading.Thread(target=self._poll, name="llama-cancel-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        self.abort_flag.clear()


# --- the generation loop --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Generation:
    """What one call produced: the text, why it stopped and the token counts."""

    text: str
    finish_reason: str
    input_tokens: int
    output_tokens: int


def run_generation(
    llama: Any,
    tokens: list[int],
    *,
    grammar: Any,
    max_tokens: int,
    temperature: float,
    stop: list[str],
    watcher: CancelWatcher,
) -> Generation:
    """Token-by-token generation on ``llama`` (prefix-cached), stopping on EOG, stop strings, limits.

    ``grammar`` is a compiled ``LlamaGrammar`` or None; the caller holds the model's lock."""
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
        grammar=grammar,
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


__all__ = ["CANCEL_SETTING", "CancelWatcher", "Generation", "cancel_scope", "run_generation", "scoped_cancel_event"]
