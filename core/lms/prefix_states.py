"""Saved KV states of recent prompts on one loaded model, so prompts that alternate keep their prefixes.

Why: llama-cpp-python reuses the KV cache of the longest common token prefix with the *previous* call
on the same instance only. A program whose predictors share one model (the default run: ``extract``
and ``classify`` on SmolLM2) alternates between their prompts, and evaluation threads interleave the
examples, so the previous call is almost always the other predictor's: every call evaluated its whole
prompt (measured on the default run: the base model's ``classify`` calls took 2.0 s for a 388-token
prompt; the fine-tuned model's, which only ``classify`` uses and whose calls therefore follow each other,
0.6 s for the same prompt and a slightly shorter answer).

``PrefixStates`` keeps the llama.cpp state (the KV cells in use, a few MB for a few hundred tokens of
SmolLM2) after each call, one per prompt family: a new state replaces a saved one that shares half its
tokens with it (the same system message and template), else the least recently used of ``capacity``.
Before a call, the saved state sharing the longest prefix with the new prompt is restored when it shares
at least ``min_prefix`` tokens more than what the instance holds; ``Llama.generate`` then evaluates only
the suffix. The restored KV cells are the ones the same model computed for the same tokens, so answers
do not change (tests/lms/test_prefix_states.py compares them with a model that never restores).
"""

from __future__ import annotations

import ctypes
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

CAPACITY = 4
MIN_PREFIX = 32  # tokens; below this, restoring (a few ms of copying) is not worth it


@dataclass(frozen=True)
class SavedState:
    ids: np.ndarray  # the tokens whose KV cells the state holds
    data: bytes  # llama_state_get_data


def common_prefix(a: Any, b: Any) -> int:
    """Length of the common prefix of two token sequences."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


class PrefixStates:
    """A small LRU of llama.cpp states by token prefix; the caller holds the model's lock."""

    def __init__(self, capacity: int = CAPACITY, min_prefix: int = MIN_PREFIX) -> None:
        self.capacity = capacity
        self.min_prefix = min_prefix
        self._states: OrderedDict[int, SavedState] = OrderedDict()
        self._next = 0
        self.restored = 0  # calls that started from a saved state
        self.reused_tokens = 0  # prompt tokens those calls did not evaluate again

    def restore(self, llama: Any, tokens: list[int]) -> int:
        """Load the saved state sharing the longest prefix with ``tokens`` when it beats what ``llama``
        holds by ``min_prefix`` tokens; returns the prefix length now reusable (0 when nothing loaded)."""
        held = common_prefix(llama.input_ids[: llama.n_tokens], tokens) if llama.n_tokens else 0
        best_key, best = None, held + self.min_prefix - 1
        for key, state in self._states.items():
            shared = common_prefix(state.ids, tokens)
            if shared > best:
                best_key, best = key, shared
        if best_key is None:
            return 0
        state = self._states[best_key]
        self._states.move_to_end(best_key)
        import llama_cpp

        buffer = (ctypes.c_uint8 * len(state.data)).from_buffer_copy(state.data)
        if llama_cpp.llama_state_set_data(llama._ctx.ctx, buffer, len(state.data)) != len(state.data):
            logger.warning("could not restore a saved llama.cpp state; evaluating the whole prompt")
            llama.n_tokens = 0
            return 0
        n = len(state.ids)
        llama.input_ids[:n] = state.ids
        llama.n_tokens = n
        llama._requires_eval = True  # the logits are not the state's: generate() re-evaluates a token
        self.restored += 1
        self.reused_tokens += best
        return best

    def remember(self, llama: Any) -> None:
        """Save ``llama``'s current state (its prompt and answer), replacing the same family's state."""
        n = int(llama.n_tokens)
        if n < self.min_prefix:
            return
        ids = np.array(llama.input_ids[:n], copy=True)
        import llama_cpp

        size = llama_cpp.llama_state_get_size(llama._ctx.ctx)
        buffer = (ctypes.c_uint8 * int(size))()
        written = int(llama_cpp.llama_state_get_data(llama._ctx.ctx, buffer, size))
        if written <= 0 or written > int(size):
            return
        same_family = [k for k, s in self._states.items()
                       if common_prefix(s.ids, ids) >= max(self.min_prefix, min(len(s.ids), n) // 2)]
        for key in same_family:
            del self._states[key]
        while len(self._states) >= self.capacity:
            self._states.popitem(last=False)
        self._states[self._next] = SavedState(ids, bytes(memoryview(buffer)[:written]))
        self._next += 1

    def __len__(self) -> int:
        return len(self._states)
