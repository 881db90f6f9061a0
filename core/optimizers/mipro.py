"""The ``mipro`` prompt step: DSPy's MIPROv2 with instruction proposals, sized for small validation
sets (``SmallValsetMIPRO``, see ``prompt.py``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from core.optimizers.entry import BuildContext, EstimateContext, Optimizer, Settings, StepCost


class MiproSettings(Settings):
    num_candidates: int = Field(3, ge=3, le=30, description=">= 3 is needed for any bootstrapped set")
    num_trials: int = Field(4, ge=1, le=100)
    max_bootstrapped_demos: int = Field(2, ge=0, le=16)
    max_labeled_demos: int = Field(2, ge=0, le=16)
    minibatch: bool = Field(False, description="True needs a validation set of at least 35")


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


OPTIMIZER = Optimizer(
    key="mipro",
    kind="prompt",
    summary="DSPy's MIPROv2: proposed instructions and demo sets, searched by trials",
    settings=MiproSettings,
    build=build,
    estimate=estimate,
)
