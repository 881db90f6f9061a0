"""llama.cpp's own log lines as Python log records, at their real level.

llama-cpp-python installs a log callback that ``print``s llama.cpp's lines to ``sys.stderr``, and
it reads their level with the numbers of an older ggml: ggml now numbers them 1 debug, 2 info,
3 warning, 4 error, 5 continuation, so that table shows every warning as an error and, once a model
was loaded with ``verbose=False``, hides every error. Measured (tests/lms/test_native_log.py):
quantizing the shipped SmolLM2 to Q4_K_M printed its ~180 "falling back" warnings on the console
and hid the one line that said why it failed ("requantizing from type q4_1 is disabled").

``route_native_logs`` replaces that callback, once per process: each whole line becomes a record of
the logger ``llama.cpp`` (``NATIVE_LOGGER``) at its level, and logging's handlers decide where it
goes: a run's worker sends warnings and errors to the run's log file, never to the console
(``core.run.worker``); elsewhere the logger passes errors only, as ``verbose=False`` meant.
``native_errors`` collects the error lines written during a native call, so that the ``LMError``
raised when the call fails says why in one line (``first_error``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections.abc import Iterator
from typing import Any

NATIVE_LOGGER = "llama.cpp"
"""The logger that carries llama.cpp's (and ggml's) own lines."""

_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_CONTINUATION = 5
_native = logging.getLogger(NATIVE_LOGGER)
if _native.level == logging.NOTSET:  # as llama-cpp-python's verbose=False meant: errors only, unless a
    _native.setLevel(logging.ERROR)  # process asks for more (a run's worker logs warnings to the run's log)
_lock = threading.Lock()
_callback: Any = None  # the installed ctypes callback (kept alive while llama.cpp may call it)
_pending: list[str] = []  # the fragments of the line being written
_pending_level = logging.INFO
_collectors: list[list[str]] = []


def route_native_logs() -> None:
    """Send llama.cpp's lines to the ``llama.cpp`` logger from now on (idempotent, cheap after the first call)."""
    global _callback
    with _lock:
        if _callback is not None:
            return
        import llama_cpp  # importing it installs llama-cpp-python's callback, which this one replaces

        _callback = llama_cpp.llama_log_callback(_on_log)
        llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))


def _on_log(level: int, text: bytes, _user_data: Any) -> None:
    try:
        take(level, text.decode("utf-8", errors="replace"))
    except Exception:  # noqa: BLE001 - a log line must never break the native call that writes it
        pass


def take(level: int, text: str) -> None:
    """One fragment from llama.cpp: lines are logged once whole (llama.cpp writes some in pieces; a
    fragment of another level ends the unfinished line before it, as an error cutting a progress line)."""
    global _pending_level
    out: list[tuple[int, str]] = []
    with _lock:
        if level != _CONTINUATION:
            new_level = _LEVELS.get(level, logging.INFO)
            if _pending and new_level != _pending_level:
                out.append((_pending_level, "".join(_pending)))
                _pending.clear()
            if not _pending:
                _pending_level = new_level
        _pending.append(text)
        if "\n" in text:
            *lines, rest = "".join(_pending).split("\n")
            _pending[:] = [rest] if rest else []
            out.extend((_pending_level, line) for line in lines)
        out = [(lvl, line.rstrip()) for lvl, line in out if line.strip()]
        for collector in _collectors:
            collector.extend(line for lvl, line in out if lvl >= logging.ERROR)
    for lvl, line in out:
        _native.log(lvl, "%s", line)


@contextlib.contextmanager
def native_errors() -> Iterator[list[str]]:
    """The error lines llama.cpp writes while the block runs (from any thread: keep the block to one call)."""
    route_native_logs()
    errors: list[str] = []
    with _lock:
        _collectors.append(errors)
    try:
        yield errors
    finally:
        with _lock:
            _collectors.remove(errors)


def first_error(errors: list[str], fallback: str) -> str:
    """The first (most specific) error line of a failed native call, else ``fallback``; one short line."""
    line = errors[0] if errors else fallback
    return line if len(line) <= 300 else line[:297] + "..."
