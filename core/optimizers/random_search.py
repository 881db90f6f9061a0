"""The ``random_search`` prompt step: stratified labeled demo sets for tiny models, else DSPy's
``BootstrapFewShotWithRandomSearch`` (both through ``KeepLMsRandomSearch``, see ``prompt.py``)."""

from __future__ import annotations

import math
from typing import Any

from core.config.steps import STEP_TYPES, RandomSearchSettings
from core.optimizers.entry import BuildContext, EstimateContext, Optimizer, StepCost

DEMO_EXAMPLES = 4
"""Examples a stratified demo set needs (one per value of the main label)."""


def build(s: RandomSearchSettings, ctx: BuildContext) -> Any:
    from core.optimizers.prompt import KeepLMsRandomSearch

    return KeepLMsRandomSearch(
        metric=ctx.metric,
        max_bootstrapped_demos=s.max_bootstrapped_demos,
        max_labeled_demos=s.max_labeled_demos,
        num_candidate_programs=s.num_candidate_programs,
        max_rounds=s.max_rounds,
        num_threads=ctx.threads,
        stratify=s.stratify,
        max_prompt_tokens=s.max_prompt_tokens,
        seed=ctx.seed,
    )


def search_calls(s: RandomSearchSettings, p: int, n: int, v: int) -> int:
    """DSPy's random search: C candidates plus three fixed seeds evaluated, demos bootstrapped on train."""
    evaluations = (s.num_candidate_programs + 3) * p * v
    bootstrap = p * (s.num_candidate_programs + 1) * s.max_bootstrapped_demos * (1.5 + n / 8) * s.max_rounds
    return int(evaluations + min(bootstrap, p * n * (s.num_candidate_programs + 1) * s.max_rounds))


def estimate(s: RandomSearchSettings, ctx: EstimateContext) -> StepCost:
    p, n, v = ctx.predictors, ctx.train, ctx.val
    if s.stratify and ctx.labelled and ctx.served >= ctx.labelled:
        # every label predictor was fine-tuned without demos: C sets of bootstrapped demos for the upstream
        # predictors, from the training examples run until k x (C + 1) passed (~1.5 runs per pass), and the
        # current program, whose evaluation the cache answers (the weight step evaluated it)
        if ctx.upstream <= ctx.served_upstream or not s.max_bootstrapped_demos:  # nothing left prompted
            return StepCost(p * v, p * v if ctx.cached else 0)
        boot = min(n, math.ceil(1.5 * s.max_bootstrapped_demos * (s.num_candidate_programs + 1)))
        calls = boot * p + (s.num_candidate_programs + 2) * p * v
        cached = 2 * p * v + ctx.upstream * boot
        return StepCost(calls, cached if ctx.cached else 0)
    if s.stratify and ctx.labelled:
        # the current program, the same without demos (after a first prompt step) and C stratified sets;
        # the cache answers the unchanged upstream predictors once
        candidates = s.num_candidate_programs + (1 if ctx.prompted else 0)
        calls = (candidates + 1) * p * v + s.num_candidate_programs * DEMO_EXAMPLES * ctx.upstream + p * v
        cached = p * v + (candidates * ctx.upstream * v + p * v if ctx.cached else 0)
        return StepCost(int(calls), int(cached))
    return StepCost(search_calls(s, p, n, v) + p * v)


OPTIMIZER = Optimizer(STEP_TYPES["random_search"], build=build, estimate=estimate)
