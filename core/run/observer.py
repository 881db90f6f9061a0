"""Observing LM calls: calls, errors and tokens per model, a parallel-call limit per LM, and cooperative cancel.

The limit is the configured LM's ``parallel_calls`` (its ``LMRuntime``, found from the called LM's
endpoint in the run's ``LMRuntimes``): one semaphore per runtime record, keyed by the record's name.
That is one per configured LM, except that LMs at one endpoint (same model name and ``api_base``)
share one record, named after the first of them with the smaller limit, and so share one semaphore
(their calls reach the same server). A fine-tuned copy of an LM counts against the same limit as the
LM it was trained from.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dspy.utils.callback import BaseCallback

from core.errors import RunCancelled
from core.lms.hosted import explain_lm_error
from core.lms.runtime import LMRuntimes

logger = logging.getLogger(__name__)


@dataclass
class ModelUsage:
    calls: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "calls": self.calls,
            "errors": self.errors,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }


class RunObserver(BaseCallback):
    """Counts LM calls, errors and tokens per model; raises ``RunCancelled`` once cancel is set.

    It is also installed as DSPy's usage tracker (``__deepcopy__`` returns itself so threaded
    evaluations do not lose tokens).
    """

    def __init__(self, cancel: threading.Event, runtimes: LMRuntimes | None = None,
                 on_call: Callable[[], None] = lambda: None):
        self.cancel = cancel
        self.runtimes = runtimes if runtimes is not None else LMRuntimes()  # none: no LM is capped
        self.on_call = on_call
        self.usage: dict[str, ModelUsage] = {}
        self.last_error: str | None = None
        self._calls: dict[str, tuple[str, threading.Semaphore | None]] = {}
        self._limits: dict[str, threading.Semaphore] = {}
        self._lock = threading.Lock()

    def _limit_for(self, instance: Any) -> threading.Semaphore | None:
        """The semaphore capping parallel calls to this LM's configured name; None when it has no cap."""
        runtime = self.runtimes.of(instance)
        if runtime is None or runtime.parallel_calls <= 0:
            return None
        with self._lock:
            if runtime.name not in self._limits:
                self._limits[runtime.name] = threading.BoundedSemaphore(runtime.parallel_calls)
            return self._limits[runtime.name]

    def __deepcopy__(self, memo: dict) -> RunObserver:
        return self

    # callbacks
    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if self.cancel.is_set():
            raise RunCancelled()
        model = getattr(instance, "model", "?")
        limit = self._limit_for(instance)
        if limit is not None:
            while not limit.acquire(timeout=0.1):
                if self.cancel.is_set():
                    raise RunCancelled()
        with self._lock:
            self._calls[call_id] = (model, limit)
            self.usage.setdefault(model, ModelUsage()).calls += 1
        self.on_call()

    def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        with self._lock:
            model, limit = self._calls.pop(call_id, ("?", None))
            if exception is not None and not isinstance(exception, RunCancelled):
                self.usage.setdefault(model, ModelUsage()).errors += 1
                self.last_error = explain_lm_error(exception, model)
        if limit is not None:
            limit.release()

    # usage tracker protocol
    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        entry = dict(usage_entry or {})
        tokens_in = entry.get("prompt_tokens", entry.get("input_tokens")) or 0
        tokens_out = entry.get("completion_tokens", entry.get("output_tokens")) or 0
        with self._lock:
            usage = self.usage.setdefault(lm, ModelUsage())
            usage.input_tokens += int(tokens_in)
            usage.output_tokens += int(tokens_out)

    def get_total_tokens(self) -> dict[str, dict[str, int]]:
        return self.snapshot()

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {model: usage.as_dict() for model, usage in self.usage.items()}

    def total_errors(self) -> int:
        with self._lock:
            return sum(u.errors for u in self.usage.values())


def usage_delta(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    delta = {}
    for model, counts in after.items():
        base = before.get(model, {})
        diff = {k: v - base.get(k, 0) for k, v in counts.items()}
        if any(diff.values()):
            delta[model] = diff
    return delta
