"""What an optimizer declares in the table of optimizers (``core.optimizers.table``).

One optimizer = one module that defines its settings model (defaults and bounds, shown by the
Strategy page and validated by the run configuration), how to build it for a run and how to
estimate its cost, and one ``Optimizer`` row that ties them together under its key.

The contexts below are plain records so that the optimizer modules never import the run
configuration or the runner: the configuration imports the table (its union of step types is built
from it), so anything the table reaches must not reach back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Kind = Literal["prompt", "weight"]


class Settings(BaseModel):
    """Base of every optimizer's settings model: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class BuildContext:
    """What a run gives an optimizer to build itself from."""

    metric: Callable[..., Any]
    threads: int
    seed: int
    adapter: Any  # the run's dspy.Adapter
    context_lm: Any  # the LM a prompt optimizer proposes instructions with
    small_predictors: Sequence[str]  # predictors whose role is small (fine-tuned)
    weight_hooks: Any  # core.optimizers.weights.WeightStepHooks: how the run observes a weight step
    teacher: Callable[[str | None], Any]  # LM name (None: the default) -> the teacher LM, or None


@dataclass(frozen=True)
class EstimateContext:
    """What the pre-run estimate knows about a run when it prices one step."""

    predictors: int  # P: predictors of the program
    train: int  # N: train examples
    val: int  # V: validation examples
    labelled: int  # predictors whose outputs are all label fields
    cached: bool  # the run's call cache answers repeated deterministic calls (embedded models)
    prompted: bool  # a prompt step ran before this one
    export_seconds: float  # merging and loading a fine-tuned model, per weight step
    served: int = 0  # label predictors fine-tuned without demos before this step (served as trained)
    served_upstream: int = 0  # the same among the upstream predictors (their demos are not searched either)
    small: int = 1  # predictors with the small role (each gives the weight step up to one row per example)
    small_upstream: int = 0  # small predictors that are not label predictors (the 'hinted' source's)

    @property
    def upstream(self) -> int:
        """Predictors that are not label predictors (their outputs feed the label predictors)."""
        return self.predictors - self.labelled


@dataclass(frozen=True)
class StepCost:
    """An optimizer's estimate of one step, including the evaluation of its program."""

    calls: int
    cached: int = 0  # calls the call cache answers (counted in calls, not in time)
    train_steps: int = 0
    train_rows: int = 0  # rows passed through the model while training (steps x batch size)
    extra_seconds: float = 0.0


@dataclass(frozen=True)
class Optimizer:
    """One row of the table of optimizers."""

    key: str  # the ``type`` of a step in the configuration
    kind: Kind
    summary: str  # one line for the Strategy page
    settings: type[Settings]
    build: Callable[[Any, BuildContext], Any]  # (settings, context) -> a DSPy teleprompter
    estimate: Callable[[Any, EstimateContext], StepCost]  # (settings, context) -> the step's cost

    @property
    def label(self) -> str:
        return f"{self.kind} · {self.key}"
