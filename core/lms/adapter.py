"""The adapter every run uses: DSPy's ChatAdapter, plus grammar-constrained output for servers that take one.

The embedded engine constrains its output itself (``core.lms.grammar``). An LM served by an
OpenAI-compatible llama.cpp server gets the same GBNF grammar through the request's
``extra_body={"grammar": ...}`` when its spec says ``grammar: "gbnf"``, so that small self-hosted
models answer in a parseable format. Which LMs those are the adapter learns from the run's
``LMRuntimes`` (``core.lms.runtime``), looked up by each call's model name: that survives the copies
DSPy makes of LMs, and a fine-tuned model keeps its base LM's setting. Without runtimes (or for an
LM they do not know) it is DSPy's ChatAdapter without the JSON fallback.
"""

from __future__ import annotations

from typing import Any

import dspy

from core.lms.grammar import grammar_for_system
from core.lms.runtime import LMRuntimes


class StudioChatAdapter(dspy.ChatAdapter):
    def __init__(self, runtimes: LMRuntimes | None = None) -> None:
        # No JSON fallback: a failed parse would cost a second call that small models fail as well.
        super().__init__(use_json_adapter_fallback=False)
        self.runtimes = runtimes if runtimes is not None else LMRuntimes()

    def _with_grammar(self, lm: Any, lm_kwargs: dict[str, Any], signature: Any, demos: list, inputs: dict) -> dict:
        runtime = self.runtimes.of(lm)
        if runtime is None or not runtime.grammar:
            return lm_kwargs
        messages = self.format(signature, demos, inputs)
        system = next((m["content"] for m in messages if m["role"] == "system"), None)
        grammar = grammar_for_system(system)
        if grammar is None:
            return lm_kwargs
        extra = dict(lm_kwargs.get("extra_body") or {})
        extra["grammar"] = grammar
        return {**lm_kwargs, "extra_body": extra}

    def __call__(self, lm: Any, lm_kwargs: dict[str, Any], signature: Any, demos: list, inputs: dict) -> Any:
        return super().__call__(lm, self._with_grammar(lm, lm_kwargs, signature, demos, inputs), signature, demos,
                                inputs)

    async def acall(self, lm: Any, lm_kwargs: dict[str, Any], signature: Any, demos: list, inputs: dict) -> Any:
        return await super().acall(lm, self._with_grammar(lm, lm_kwargs, signature, demos, inputs), signature,
                                   demos, inputs)
