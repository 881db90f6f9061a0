"""The prompt prefix the rows of a step share, computed once: its keys and values serve every row of the step.

A predictor's chat rows start with the same tokens: the system message (field descriptions, the format, the
instructions) and the user turn's first field marker. On the support-ticket sample's classify rows that is 246 of
~410 tokens (60 %). Without this module every row computes them again, in the forward pass and in the backward
pass. With it, a training step runs the shared prefix once (batch 1), hands its keys and values (each layer's
cache) to the forward passes of the rows' own tokens (the suffixes), and, after the last pass, sends the gradients
those passes left on the keys and values back through the prefix's forward pass: the LoRA's gradient is the one of
whole rows (causal attention: prefix tokens never see the suffix), to float rounding
(``tests/lms/test_prefix.py``). ``bench/finetune_memory.py --matrix levers`` measures the step with and without it.

The prefix's activations are not kept while the passes run: its forward pass runs without a graph, and again, with
one, for the backward pass after the step's last pass (the random state of the first run restored: a LoRA dropout
draws the same masks). So a step holds the activations of the prefix or of one pass's own tokens, not both. A
pass attends over the prefix and its rows (``pass_tokens``, which ``train.micro_batches`` keeps under the device's
budget, ``device.pass_token_budget``). Measured on the default run's rows (``bench/finetune_memory.py``'s levers
rows, float32, passes of one row, 2 AVX2 cores: ``bench/results/finetune_levers_recompute.json``): 1286 MB of
training memory at 10.2 s a step, against ~1500 MB at ~9.1 s when the first run's graph is kept through the passes
(``RECOMPUTE = False``), and 1557 MB at 12.6 s for whole rows.

Not shared (whole rows, as before): fewer than ``MIN_SHARED`` common tokens, gradient checkpointing (which turns
the model's cache off), a model with a sliding attention window shorter than the rows (its cache keeps only the
window), or a model whose layers share their keys and values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

MIN_SHARED = 16
"""Common prompt tokens below which a step runs whole rows (the prefix's own pass would cost more than it saves)."""

RECOMPUTE = True
"""Run the prefix again for its backward pass rather than keep its activations through the step's passes (see the
module); off only to measure it."""


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
    """Tokens a forward pass attends over: the shared prefix once, each row padded to the longest. It holds the
    activations of its rows' own tokens (and their attention over the prefix), the prefix's own being recomputed
    for the backward pass (``RECOMPUTE``): a bound on the pass's memory that holds either way."""
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
    step's last pass), which runs again for it (``RECOMPUTE``)."""

    def __init__(self, causal_lm: Any, tokens: Sequence[int], device: Any, *, grad: bool) -> None:
        import torch

        self.length = len(tokens)
        self._lm, self._device = causal_lm, device
        self._ids = torch.tensor([list(tokens)], dtype=torch.long, device=device.kind)
        self._grad, self._recompute = grad, grad and RECOMPUTE
        self._rng = _rng_state(device.kind) if self._recompute else None
        with torch.no_grad() if self._recompute else contextlib.nullcontext():
            self._states = self._forward()
        if grad:
            self._leaves = [(k.detach().requires_grad_(), v.detach().requires_grad_()) for k, v in self._states]
        else:
            self._leaves = [(k.detach(), v.detach()) for k, v in self._states]
        if self._recompute:
            self._states = []  # no graph: ``backward`` runs the prefix again

    def _forward(self) -> list[tuple[Any, Any]]:
        import torch

        device = self._device
        with torch.autocast(device_type=device.kind, dtype=getattr(torch, device.autocast_dtype),
                            enabled=device.autocast):
            out = self._lm.model(input_ids=self._ids, use_cache=True)
        return [(layer.keys, layer.values) for layer in out.past_key_values.layers]

    def cache(self, rows: int) -> Any:
        """A fresh cache holding the prefix for ``rows`` rows (a view of one copy: no memory per row)."""
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1))
                                            for k, v in self._leaves], config=self._lm.config)

    def backward(self) -> None:
        """The gradients the passes left on the prefix's keys and values, through the prefix's forward pass (run
        again here, with the random state of its first run, unless ``RECOMPUTE`` was off)."""
        import torch

        if not self._grad:
            return
        if self._recompute and any(leaf.grad is not None for pair in self._leaves for leaf in pair):
            now = _rng_state(self._device.kind)
            _set_rng_state(self._rng)
            try:
                with torch.enable_grad():
                    self._states = self._forward()
            finally:
                _set_rng_state(now)
        outputs, grads = [], []
        for (k, v), (k_leaf, v_leaf) in zip(self._states, self._leaves, strict=False):
            for state, leaf in ((k, k_leaf), (v, v_leaf)):
                if leaf.grad is not None and state.requires_grad:
                    outputs.append(state)
                    grads.append(leaf.grad)
        if outputs:
            torch.autograd.backward(outputs, grads)
        self._states, self._leaves = [], []


def _rng_state(kind: str) -> dict[str, Any]:
    """The random states a forward pass draws from (a LoRA dropout's masks): the CPU's and the device's."""
    import torch

    states = {"cpu": torch.get_rng_state()}
    if kind == "cuda":
        states["cuda"] = torch.cuda.get_rng_state()
    elif kind == "mps":
        states["mps"] = torch.mps.get_rng_state()
    return states


def _set_rng_state(states: Mapping[str, Any]) -> None:
    import torch

    torch.set_rng_state(states["cpu"])
    if "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"])
    if "mps" in states:
        torch.mps.set_rng_state(states["mps"])
