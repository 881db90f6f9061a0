"""The ``finetune`` weight step: LoRA (or a hosted fine-tuning job) for the small predictors only,
on rows from their trace source (``RoleAwareFinetune``, see ``weights.py``).

Its hyper-parameters come from the provider's one table (``core.lms.lora.params.PARAMS``), so the
configuration, the Strategy page and the provider agree on defaults and ranges.
"""

from __future__ import annotations

import math
from typing import Any

from core.config.steps import STEP_TYPES, FinetuneSettings
from core.lms.lora.validation import FORWARD_SHARE, held_out_count
from core.optimizers.entry import BuildContext, EstimateContext, Optimizer, StepCost


def build(s: FinetuneSettings, ctx: BuildContext) -> Any:
    from core.optimizers.weights import RoleAwareFinetune

    return RoleAwareFinetune(
        metric=ctx.metric,
        small_predictors=ctx.small_predictors,
        settings=s,
        hooks=ctx.weight_hooks,
        num_threads=ctx.threads,
        adapter=ctx.adapter,
        seed=ctx.seed,
        teacher_lm=ctx.teacher(s.teacher_lm),
    )


def training_steps(s: FinetuneSettings, rows: int) -> int:
    """The most optimizer steps the weight step takes on ``rows`` rows (it may stop earlier: the budget is chosen on
    the rows it holds out, which it does not train on)."""
    trained = rows - held_out_count(rows, s.validation_fraction)
    steps = int(s.epochs * max(1, math.ceil(trained / s.batch_size)))
    return min(steps, int(s.max_steps)) if s.max_steps else steps


def scoring_rows(s: FinetuneSettings, rows: int) -> int:
    """Training rows' worth of time spent scoring checkpoints on the held-out rows (forward passes only)."""
    held = held_out_count(rows, s.validation_fraction)
    if not held:
        return 0
    steps = training_steps(s, rows)
    every = s.eval_every or max(1, math.ceil((rows - held) / s.batch_size))
    checkpoints = 1 + math.ceil(steps / every)
    return math.ceil(checkpoints * held * FORWARD_SHARE)


def estimate(s: FinetuneSettings, ctx: EstimateContext) -> StepCost:
    """Trace collection over the train set, training, the export, and the evaluation of the fine-tuned
    program. Collection calls every predictor once per example, except when the label predictors learn
    from gold rows: then only the upstream predictors (teacher-forced labels), and with ``hinted``
    upstream predictors every predictor once (the hinted run; the gold rows replay it). Each small
    predictor gives up to one row per example."""
    p, n, v = ctx.predictors, ctx.train, ctx.val
    gold = s.trace_source in ("auto", "gold", "hinted") and ctx.labelled
    hinted = s.trace_source in ("auto", "hinted") and ctx.labelled and ctx.small_upstream
    calls = (ctx.upstream if gold and not hinted else p) * n + p * v
    cached = ctx.upstream * v if ctx.cached else 0
    rows = n * max(1, ctx.small)
    steps = training_steps(s, rows)
    return StepCost(int(calls), int(cached), steps, steps * s.batch_size + scoring_rows(s, rows), ctx.export_seconds)


OPTIMIZER = Optimizer(STEP_TYPES["finetune"], build=build, estimate=estimate)
