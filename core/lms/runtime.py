"""How a run calls each of its LMs: a parallel-call limit and an output grammar, found from the LM itself.

Why a record looked up by endpoint, and not attributes stuck onto ``dspy.LM`` objects nor a table
keyed by object identity: DSPy copies LMs all the time (``Module.deepcopy`` during optimization,
``lm.copy(model=...)`` for a fine-tune, ``Module.load`` rebuilds them from a saved file). An
``id()`` finds nothing after a copy, and an attribute is untyped, invisible in the configuration and
lost on reload. What every copy, save and reload keeps is the LM's endpoint: its model name and its
``api_base``. So a run holds one ``LMRuntimes``, endpoint -> ``LMRuntime``:

* built once by ``core.plan.prepare.build_run`` from the configured LMs (``for_lms``);
* read by ``core.run.observer.RunObserver`` (one semaphore per configured LM) and by
  ``core.lms.adapter.StudioChatAdapter`` (the GBNF grammar in ``extra_body``);
* a fine-tuned model keeps the options of the LM it was trained from: an embedded fine-tune
  (``embedded/<key>:ft-...``) through ``catalog.base_model_name``; a hosted fine-tune gets a new
  name from its provider (``openai/ft:...``), which the weight step registers as an alias when it
  swaps the fine-tuned LM in (``inherit``). A model name it does not know has no options: no cap,
  no grammar.

Two configured LMs with the same model name at the same ``api_base`` are one endpoint, so they share
one record: named after the first of them, with the smaller parallel-call limit (their calls add up
at that one server) and the grammar on if either asks for it (a server that takes a grammar for one
takes it for the other). The same model name at two different ``api_base`` URLs stays two records.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.config.schema import LiteLLMSpec
from core.errors import LMError, shown
from core.lms import catalog

Endpoint = tuple[str, str | None]  # (model name, api_base or None)


@dataclass(frozen=True)
class LMRuntime:
    """The runtime options of one configured LM."""

    name: str  # its name in the run configuration (``lms.<name>``): the parallel-call limit is per name
    parallel_calls: int  # at most this many calls in flight at once; 0: no cap
    grammar: bool  # send the GBNF grammar of the expected answer with each request (llama.cpp servers)

    def shared_with(self, other: LMRuntime) -> LMRuntime:
        """One record for two LMs at the same endpoint (see the module docstring)."""
        limits = [n for n in (self.parallel_calls, other.parallel_calls) if n > 0]
        return LMRuntime(self.name, min(limits) if limits else 0, self.grammar or other.grammar)


def runtime_for_spec(name: str, spec: Any, parallel_calls: int) -> LMRuntime:
    """The options of the LM spec named ``name``: only a LiteLLM spec with ``grammar: gbnf`` sends a grammar
    (the embedded engine constrains its output itself)."""
    return LMRuntime(name, parallel_calls, isinstance(spec, LiteLLMSpec) and spec.grammar == "gbnf")


def endpoint_of(lm: Any) -> Endpoint | None:
    """(model name, api_base) of a ``dspy.LM`` or anything with a ``model``; None without a model name."""
    model = getattr(lm, "model", None)
    if not isinstance(model, str) or not model:
        return None
    kwargs = getattr(lm, "kwargs", None)
    base = kwargs.get("api_base") if isinstance(kwargs, dict) else None
    return model, (base or None)


class LMRuntimes:
    """The runtime options of a run's LMs, looked up by endpoint; safe to share between threads.

    Deep copies return the same object: DSPy deep-copies adapters and programs, and a copy must see the
    aliases the weight step registers later.
    """

    def __init__(self) -> None:
        self._by_endpoint: dict[Endpoint, LMRuntime] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_lms(cls, lms: Mapping[str, Any], runtimes: Mapping[str, LMRuntime]) -> LMRuntimes:
        """The options of ``lms`` (name -> ``dspy.LM``), ``runtimes`` giving each name's record."""
        table = cls()
        for name, lm in lms.items():
            table.add(lm, runtimes[name])
        return table

    def add(self, lm: Any, runtime: LMRuntime) -> None:
        """Record ``runtime`` for ``lm``'s endpoint (shared with an LM already there)."""
        key = endpoint_of(lm)
        if key is None:
            raise LMError(f"LM {shown(runtime.name)} has no model name; a run finds each LM's options by its model name")
        with self._lock:
            known = self._by_endpoint.get(key)
            self._by_endpoint[key] = runtime if known is None else known.shared_with(runtime)

    def of(self, lm: Any) -> LMRuntime | None:
        """The options of ``lm`` (or of the LM it was fine-tuned from); None for an LM this run does not know."""
        key = endpoint_of(lm)
        return None if key is None else self._find(key)

    def inherit(self, new_lm: Any, base_model: str) -> LMRuntime | None:
        """Give the fine-tuned ``new_lm`` the options of ``base_model`` (same ``api_base``), which it replaces."""
        key = endpoint_of(new_lm)
        if key is None:
            return None
        runtime = self._find((base_model, key[1]))
        if runtime is not None:
            with self._lock:
                self._by_endpoint.setdefault(key, runtime)
        return runtime

    def _find(self, key: Endpoint) -> LMRuntime | None:
        model, base = key
        with self._lock:
            found = self._by_endpoint.get(key)
            if found is None and catalog.base_model_name(model) != model:
                found = self._by_endpoint.get((catalog.base_model_name(model), base))
        return found

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_endpoint)

    def __repr__(self) -> str:
        with self._lock:
            names = sorted({r.name for r in self._by_endpoint.values()})
        return f"LMRuntimes({names})"

    def __copy__(self) -> LMRuntimes:
        return self

    def __deepcopy__(self, memo: dict) -> LMRuntimes:
        return self
