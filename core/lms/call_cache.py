"""A per-run cache of deterministic LM calls (temperature 0).

Why: a run repeats many identical calls. The baseline evaluation and a prompt search's "current
program" candidate send the same prompts; the program a step returns is evaluated again on the
same validation set; an upstream predictor no step changed answers the same validation and test
inputs in every round. On a 2-core CPU each call costs about a second.

The cache lives in the run's DSPy context (``dspy.context(studio_call_cache=CallCache())``), so it
reaches the evaluation threads of that run only and ends with it: a new run starts cold and a
benchmark's seeds do not share answers. An engine that supports it (the embedded llama.cpp engine)
looks up ``(model, prompt, grammar, max_tokens, stop)`` before generating, only at temperature 0.

``STUDIO_CALL_CACHE=0`` in the environment switches it off for a run (every call generates; the
counts still say how many calls there were): ``bench/default_run.py --no-call-cache`` measures what
the cache saves that way.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import dspy

CACHE_SETTING = "studio_call_cache"
ENV_SWITCH = "STUDIO_CALL_CACHE"


class CallCache:
    """Thread-safe answers by call key, with hit/miss counts (``enabled=False``: counts only, never answers)."""

    def __init__(self, enabled: bool = True) -> None:
        self._answers: dict[Any, Any] = {}
        self._lock = threading.Lock()
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def get(self, key: Any) -> Any | None:
        with self._lock:
            answer = self._answers.get(key) if self.enabled else None
            if answer is None:
                self.misses += 1
            else:
                self.hits += 1
            return answer

    def put(self, key: Any, answer: Any) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._answers[key] = answer

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "entries": len(self._answers), "enabled": self.enabled}


def run_cache() -> CallCache:
    """A new run's cache: on, unless ``STUDIO_CALL_CACHE`` is ``0``/``off``/``false``/``no``."""
    return CallCache(enabled=os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "off", "false", "no"))


def active_cache() -> CallCache | None:
    """The cache of the run whose DSPy context the caller is in, or None."""
    cache = dspy.settings.get(CACHE_SETTING)
    return cache if isinstance(cache, CallCache) else None
