"""The ``finetune`` weight step: LoRA (or a hosted fine-tuning job) for the small predictors only,
on rows from their trace source (``RoleAwareFinetune``, see ``weights.py``).

Its hyper-parameters come from the provider's one table (``core.lms.lora.params.PARAMS``), so the
configuration, the Strategy page and the provider agree on defaults and ranges.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from core.lms.lora.params import PARAMS as TRAIN_PARAMS
from core.optimizers.entry import BuildContext, EstimateContext, Optimizer, Settings, StepCost

TraceSource = Literal["auto", "self", "teacher", "gold", "hinted"]


def _train_param(name: str) -> Any:
    """The field of the fine-tuning hyper-parameter ``name``: default, range and description from the
    provider's one table (``core.lms.lora.params.PARAMS``)."""
    spec = TRAIN_PARAMS[name]
    return Field(spec.default, **spec.bounds(), description=spec.description or None)


class FinetuneSettings(Settings):
    # hyper-parameters passed to the provider as train_kwargs (see train_kwargs())
    epochs: int = _train_param("epochs")
    max_steps: int | None = _train_param("max_steps")
    learning_rate: float = _train_param("learning_rate")
    lora_rank: int = _train_param("lora_rank")
    lora_alpha: int = _train_param("lora_alpha")
    batch_size: int = _train_param("batch_size")
    max_length: int = _train_param("max_length")
    # how the weight step picks its training rows
    min_score: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="keep traces whose metric score is at least this (1.0 = only fully correct)",
    )
    exclude_demos: bool = False
    trace_source: TraceSource = Field(
        "auto", description="training rows: self, teacher, gold, hinted, or auto (gold for label predictors, else teacher, hinted or self)"
    )
    teacher_lm: str | None = Field(
        None, description="LM serving the small predictors for 'teacher' (default: large role)",
        json_schema_extra={"choices": "lms", "unset": "large role"},  # one of the run's LM names
    )
    balance: Literal["cap", "upsample", "off"] = Field("cap", description="rows per label value balanced")

    def train_kwargs(self) -> dict[str, Any]:
        """The provider's hyper-parameters among these settings, by name (for ``lm.finetune``)."""
        return {name: getattr(self, name) for name in type(self).model_fields if name in TRAIN_PARAMS}


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
    if s.max_steps:
        return int(s.max_steps)
    return int(s.epochs * max(1, math.ceil(rows / s.batch_size)))


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
    steps = training_steps(s, n * max(1, ctx.small))
    return StepCost(int(calls), int(cached), steps, steps * s.batch_size, ctx.export_seconds)


OPTIMIZER = Optimizer(
    key="finetune",
    kind="weight",
    summary="fine-tunes the small predictors' LM on rows from their trace source",
    settings=FinetuneSettings,
    build=build,
    estimate=estimate,
)
