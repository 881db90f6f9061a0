"""What an optimizer adds to its step type's declaration in the table of optimizers.

A step type's key, kind and settings model are declared in ``core.config.steps`` (pure settings
models, which the run configuration reads). One optimizer = one module here that says how to build
that step for a run and how to estimate its cost, and one ``Optimizer`` row that ties the behaviour
to its declaration.

The contexts below are plain records so that the optimizer modules never import the runner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core.config.steps import Kind, Settings, StepType

Events = Callable[[str, str, dict[str, Any]], None]
"""A run's event log: ``events(kind, message, data)``."""


def no_events(kind: str, message: str, data: dict[str, Any]) -> None:
    """The event log of a context that records none (an optimizer built outside a run)."""


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
    # LM name (None: the first large-role LM) -> that LM, or None: the weight step's teacher, GEPA's reflection LM
    teacher: Callable[[str | None], Any]
    # the run's event log for the step in progress: (kind, message, data); the run adds the step's strategy
    events: Events = no_events
    # the run's validation examples: a weight step scores its checkpoints on their rows (never trains on them)
    valset: Sequence[Any] = ()


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
    """One row of the table of optimizers: a step type's declaration and its behaviour."""

    declaration: StepType
    build: Callable[[Any, BuildContext], Any]  # (settings, context) -> a DSPy teleprompter
    estimate: Callable[[Any, EstimateContext], StepCost]  # (settings, context) -> the step's cost
    # (settings, the run document) -> what the Strategy page warns about this step (none by default)
    warnings: Callable[[Any, Any], list[str]] = lambda settings, doc: []

    @property
    def key(self) -> str:
        return self.declaration.key

    @property
    def kind(self) -> Kind:
        return self.declaration.kind

    @property
    def summary(self) -> str:
        return self.declaration.summary

    @property
    def settings(self) -> type[Settings]:
        return self.declaration.settings

    @property
    def label(self) -> str:
        return self.declaration.label
