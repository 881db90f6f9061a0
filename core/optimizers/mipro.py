"""The ``mipro`` prompt step: DSPy's MIPROv2 with instruction proposals, sized for small validation
sets (``SmallValsetMIPRO``, see ``prompt.py``)."""

from __future__ import annotations

from typing import Any

from core.config.steps import STEP_TYPES, MiproSettings
from core.optimizers.entry import BuildContext, EstimateContext, Optimizer, StepCost


def build(s: MiproSettings, ctx: BuildContext) -> Any:
    from core.optimizers.prompt import SmallValsetMIPRO

    return SmallValsetMIPRO(
        metric=ctx.metric,
        prompt_model=ctx.context_lm,
        task_model=ctx.context_lm,
        auto=None,
        num_candidates=s.num_candidates,
        max_bootstrapped_demos=s.max_bootstrapped_demos,
        max_labeled_demos=s.max_labeled_demos,
        num_threads=ctx.threads,
        seed=ctx.seed,
        num_trials=s.num_trials,
        minibatch=s.minibatch,
    )


def estimate(s: MiproSettings, ctx: EstimateContext) -> StepCost:
    """One validation per trial (minibatches of 35 plus a full one every 10 trials) and the proposals."""
    p, n, v = ctx.predictors, ctx.train, ctx.val
    if s.minibatch:
        trials = s.num_trials * p * min(v, 35) + (s.num_trials // 10 + 1) * p * v
    else:
        trials = s.num_trials * p * v
    proposals = p * s.num_candidates * (9 + 0.18 * n)
    return StepCost(int(trials + proposals) + p * v)


OPTIMIZER = Optimizer(STEP_TYPES["mipro"], build=build, estimate=estimate)
