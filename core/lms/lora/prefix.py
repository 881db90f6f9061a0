"""The prompt prefix the rows of a step share, computed once: its keys and values serve every row of the step.

A predictor's chat rows start with the same tokens: the system message (field descriptions, the format, the
instructions) and the user turn's first field marker. On the support-ticket sample's classify rows that is 246 of
~410 tokens (60 %). Without this module every row computes them again, in the forward pass and in the backward
pass. With it, a training step runs the shared prefix once (batch 1), hands its keys and values (each layer's
cache) to the forward passes of the rows' own tokens (the suffixes), and, after the last pass, sends the gradients
those passes left on the keys and values back through the prefix's forward pass: the LoRA's gradient is the one of
whole rows (causal attention: prefix tokens never see the suffix), to float rounding
(``tests/lms/test_prefix.py``). ``bench/finetune_memory.py --matrix levers`` measures the step with and without it.

The prefix's activations are kept once per step, the suffixes' once per pass: the memory of a pass is the prefix's
tokens plus its rows' suffix tokens (``pass_tokens``), which ``train.micro_batches`` keeps under the device's
budget (``device.pass_token_budget``).

Not shared (whole rows, as before): fewer than ``MIN_SHARED`` common tokens, gradient checkpointing (which turns
the model's cache off), a model with a sliding attention window shorter than the rows (its cache keeps only the
window), or a model whose layers share their keys and values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MIN_SHARED = 16
"""Common prompt tokens below which a step runs whole rows (the prefix's own pass would cost more than it saves)."""


def shared_length(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with, at most the shortest prompt's length minus one (the position that predicts a
    row's first answer token stays in the row's own part); 0 below ``MIN_SHARED`` or for a single row."""
    if len(prompts) < 2:
        return 0
    first, limit = prompts[0], min(len(p) for p in prompts) - 1
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompts[1:]):
        n += 1
    return n if n >= MIN_SHARED else 0


def pass_tokens(lengths: Sequence[int], shared: int) -> int:
    """Tokens a forward pass holds activations for: the shared prefix once, each row padded to the longest."""
    return shared + len(lengths) * (max(lengths) - shared)


def can_share(config: Mapping[str, Any], longest: int, *, gradient_checkpointing: bool = False) -> bool:
    """Whether a model of ``config`` (its config.json) can serve rows of up to ``longest`` tokens from a cached
    prefix (see the module)."""
    if gradient_checkpointing:
        return False
    text = config.get("text_config") or config
    window = text.get("sliding_window")
    if window and longest > window:
        return False
    return not text.get("num_kv_shared_layers")


def step_shared(prompts: Sequence[Sequence[int]], config: Mapping[str, Any], longest: int, *,
                gradient_checkpointing: bool = False) -> int:
    """The prefix tokens a step (or a scoring pass) of rows with ``prompts`` shares: 0 where it cannot."""
    if not can_share(config, longest, gradient_checkpointing=gradient_checkpointing):
        return 0
    return shared_length(prompts)


class SharedPrefix:
    """The prefix ``tokens``' forward pass (batch 1, under the device's autocast) and its per-layer keys and values.

    ``cache(n)`` gives a cache of them for a pass of ``n`` rows; with ``grad``, those passes' gradients gather on
    leaf copies of the keys and values, and ``backward()`` sends them through the prefix's pass (once, after the
    step's last pass)."""

    def __init__(self, causal_lm: Any, tokens: Sequence[int], device: Any, *, grad: bool) -> None:
        import torch

        self.length = len(tokens)
        self._config = causal_lm.config
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=device.kind)
        with torch.autocast(device_type=device.kind, dtype=getattr(torch, device.autocast_dtype),
                            enabled=device.autocast):
            out = causal_lm.model(input_ids=ids, use_cache=True)
        layers = out.past_key_values.layers
        self._states = [(layer.keys, layer.values) for layer in layers]
        if grad:
            self._leaves = [(k.detach().requires_grad_(), v.detach().requires_grad_()) for k, v in self._states]
        else:
            self._leaves = [(k.detach(), v.detach()) for k, v in self._states]
        self._grad = grad

    def cache(self, rows: int) -> Any:
        """A fresh cache holding the prefix for ``rows`` rows (a view of one copy: no memory per row)."""
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
                                            for k, v in self._leaves], config=self._config)

    def backward(self) -> None:
        """The gradients the passes left on the prefix's keys and values, through the prefix's forward pass."""
        import torch

        if not self._grad:
            return
        outputs, grads = [], []
        for (k, v), (k_leaf, v_leaf) in zip(self._states, self._leaves, strict=True):
            for state, leaf in ((k, k_leaf), (v, v_leaf)):
                if leaf.grad is not None and state.requires_grad:
                    outputs.append(state)
                    grads.append(leaf.grad)
        if outputs:
            torch.autograd.backward(outputs, grads)
        self._states, self._leaves = [], []
