"""Building the optimizers, adapter and prices of a prepared run."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import dspy

from core.config.schema import LiteLLMSpec, RunConfig
from core.lms.adapter import StudioChatAdapter
from core.lms.hosted import base_model_of, price_per_token
from core.lms.runtime import LMRuntimes
from core.optimizers.entry import BuildContext, Events, no_events
from core.optimizers.table import get_optimizer
from core.optimizers.weights import WeightStepHooks
from core.plan.prepare import PreparedRun

logger = logging.getLogger(__name__)


def build_optimizers(prepared: PreparedRun, weight_hooks: WeightStepHooks, adapter: dspy.Adapter, *,
                     events: Events = no_events) -> dict[str, Any]:
    """One optimizer instance per strategy key, built by its row of the table of optimizers; weight steps
    report through ``weight_hooks``, and any step may write the run's ``events`` (a prompt step's progress)."""
    config = prepared.config
    context = BuildContext(
        metric=prepared.metric,
        threads=effective_threads(prepared),
        seed=config.seed,
        adapter=adapter,
        context_lm=prepared.context_lm,
        small_predictors=prepared.small_predictors,
        weight_hooks=inheriting_runtimes(weight_hooks, prepared.runtimes),  # a fine-tune keeps its base's limit
        teacher=lambda name: teacher_lm(prepared, name),
        events=events,
        valset=tuple(prepared.split.val),
    )
    return {key: get_optimizer(spec.type).build(spec.settings, context) for key, spec in config.optimizers.items()}


def teacher_lm(prepared: PreparedRun, name: str | None) -> Any:
    """The weight step's teacher: the named LM, else the first large-role LM (None without one)."""
    if name:
        return prepared.lms[name]
    return next((prepared.lms[a.lm] for a in prepared.config.predictors.values() if a.role == "large"), None)


def effective_threads(prepared: PreparedRun) -> int:
    """Evaluation threads: 1 whenever a CPU model is involved (it serves one call at a time); otherwise
    enough for the most parallel LM (each LM is capped by its own limit in ``RunObserver``)."""
    if prepared.uses_local_cpu:
        return 1
    return max([prepared.config.limits.num_threads] + [c.parallel_calls for c in prepared.capabilities.values()])


def inheriting_runtimes(hooks: WeightStepHooks, runtimes: LMRuntimes) -> WeightStepHooks:
    """``hooks`` that, when a fine-tuned LM replaces its base LM, first give it the base LM's runtime options
    (parallel-call limit, grammar): a hosted fine-tune has a new model name the runtimes do not know."""
    def on_finetuned(old_model: str, new_lm: Any) -> None:
        runtimes.inherit(new_lm, old_model)
        hooks.on_finetuned(old_model, new_lm)

    return dataclasses.replace(hooks, on_finetuned=on_finetuned)


def make_adapter(runtimes: LMRuntimes) -> dspy.Adapter:
    """The run's adapter: it sends an output grammar to the LMs whose runtime options ask for one."""
    return StudioChatAdapter(runtimes)


def model_prices(config: RunConfig) -> dict[str, tuple[float, float]]:
    """USD per (input, output) token of each hosted LM whose price is known."""
    prices = {}
    for spec in config.lms.values():
        if isinstance(spec, LiteLLMSpec):
            price = price_per_token(spec.model, spec.price_per_1m_input, spec.price_per_1m_output)
            if price is not None:
                prices[spec.model] = price
    return prices


def with_costs(usage: dict[str, dict[str, Any]], prices: dict[str, tuple[float, float]]) -> dict[str, dict[str, Any]]:
    """Adds ``cost`` (USD, or None when the price is unknown) to each model's usage."""
    out = {}
    for model, counts in usage.items():
        price = prices.get(model) or prices.get(base_model_of(model))
        cost = None
        if price is not None:
            cost = round(counts.get("input_tokens", 0) * price[0] + counts.get("output_tokens", 0) * price[1], 6)
        out[model] = {**counts, "cost": cost}
    return out
