"""The step types a strategy can use: each one's key, kind (prompt or weight) and settings model.

These are pure declarations (pydantic models with defaults and bounds, no behaviour), so the run
configuration can build its union of step types from them without importing any optimizer. How a
step is built for a run and how its cost is estimated lives in ``core.optimizers`` (one module per
step type, tied to its declaration by ``core.optimizers.table``), which imports this module, never
the other way round.

Adding a step type: its settings model and one ``StepType`` row here, then its module and row in
``core.optimizers.table`` (a test checks that both tables hold the same keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.errors import shown
from core.lms.lora.params import FLAGS as TRAIN_FLAGS
from core.lms.lora.params import PARAMS as TRAIN_PARAMS

Kind = Literal["prompt", "weight"]
TraceSource = Literal["auto", "self", "teacher", "gold", "hinted"]


class Settings(BaseModel):
    """Base of every step type's settings model: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class RandomSearchSettings(Settings):
    max_bootstrapped_demos: int = Field(2, ge=0, le=16)
    max_labeled_demos: int = Field(2, ge=0, le=16)
    num_candidate_programs: int = Field(2, ge=1, le=32)
    max_rounds: int = Field(1, ge=1, le=5)
    stratify: bool = Field(
        True, description="candidates are labeled demo sets covering every label value (else DSPy's random search)"
    )
    max_prompt_tokens: int | None = Field(
        None, ge=64, le=1_000_000, description="bound on a prompt's tokens; default: what fits the model's context"
    )


class MiproSettings(Settings):
    num_candidates: int = Field(3, ge=3, le=30, description=">= 3 is needed for any bootstrapped set")
    num_trials: int = Field(4, ge=1, le=100)
    max_bootstrapped_demos: int = Field(2, ge=0, le=16)
    max_labeled_demos: int = Field(2, ge=0, le=16)
    minibatch: bool = Field(False, description="True needs a validation set of at least 35")


GepaAuto = Literal["light", "medium", "heavy"]
GEPA_DEFAULT_AUTO: GepaAuto = "light"


class GepaSettings(Settings):
    auto: GepaAuto | None = Field(
        None, description="budget preset (GEPA's auto: light, medium, heavy); not set with max_metric_calls",
        json_schema_extra={"unset": f"{GEPA_DEFAULT_AUTO} unless max_metric_calls"},
    )
    max_metric_calls: int | None = Field(
        None, ge=1, le=100_000, description="budget: program runs GEPA may make (instead of auto)",
        json_schema_extra={"unset": "from auto"},
    )
    reflection_lm: str | None = Field(
        None, description="LM that reads the feedback and proposes instructions (default: large role)",
        json_schema_extra={"choices": "lms", "unset": "large role"},  # one of the run's LM names
    )
    reflection_minibatch_size: int = Field(3, ge=1, le=64, description="training examples per reflection")
    use_merge: bool = Field(True, description="also try merging two good candidates (GEPA's merge)")

    @model_validator(mode="after")
    def _one_budget(self) -> GepaSettings:
        if self.auto is not None and self.max_metric_calls is not None:
            raise ValueError(f"set one budget, auto ({self.auto!r}) or max_metric_calls ({self.max_metric_calls}), "
                             "not both; with neither, auto is 'light'")
        return self

    @property
    def budget(self) -> tuple[str, GepaAuto | int]:
        """``("auto", preset)`` or ``("max_metric_calls", n)``: the one budget these settings give."""
        if self.max_metric_calls is not None:
            return "max_metric_calls", self.max_metric_calls
        return "auto", self.auto or GEPA_DEFAULT_AUTO


def _train_param(name: str) -> Any:
    """The field of the fine-tuning hyper-parameter ``name``: default, range and description from the
    one table of fine-tuning defaults (``core.lms.lora.params.PARAMS``)."""
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
    micro_batch_tokens: int = _train_param("micro_batch_tokens")
    # the budget chosen on held-out rows: epochs and max_steps bound it
    validation_fraction: float = _train_param("validation_fraction")
    patience: int = _train_param("patience")
    eval_every: int | None = _train_param("eval_every")
    max_minutes: float | None = _train_param("max_minutes")
    gradient_checkpointing: bool = Field(
        TRAIN_FLAGS["gradient_checkpointing"],
        description="recompute activations in the backward pass instead of keeping them (less memory, slower steps)")
    release_served_models: bool = Field(
        TRAIN_FLAGS["release_served_models"],
        description="close the llama.cpp models this process serves while the weights train (less memory; the "
                    "first call after the step loads its model again)")
    share_prefix: bool = Field(
        TRAIN_FLAGS["share_prefix"],
        description="run the prompt prefix the rows of a step share once, not once per row (the same gradients, "
                    "fewer tokens: faster steps, less memory)")
    serve: Literal["lora", "merged"] = _train_param("serve")
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
        return {name: getattr(self, name) for name in type(self).model_fields
                if name in TRAIN_PARAMS or name in TRAIN_FLAGS}


def lm_settings(settings: Settings) -> dict[str, Any]:
    """The settings that name one of the run's LMs (marked ``json_schema_extra={"choices": "lms"}``) and
    their values (None: the setting's default LM), by setting name."""
    out = {}
    for name, info in type(settings).model_fields.items():
        mark = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if mark.get("choices") == "lms":
            out[name] = getattr(settings, name)
    return out


@dataclass(frozen=True)
class StepType:
    """The declaration of one step type: what the configuration and the Strategy page need."""

    key: str  # the ``type`` of a step in the configuration
    kind: Kind
    summary: str  # one line for the Strategy page
    settings: type[Settings]

    @property
    def label(self) -> str:
        return f"{self.kind} · {self.key}"


STEP_TYPES: dict[str, StepType] = {
    row.key: row
    for row in (
        StepType("random_search", "prompt",
                 "demo sets (stratified by label for small models) searched on the validation set",
                 RandomSearchSettings),
        StepType("mipro", "prompt", "DSPy's MIPROv2: proposed instructions and demo sets, searched by trials",
                 MiproSettings),
        StepType("gepa", "prompt", "DSPy's GEPA: a reflection LM reads the metric's feedback and evolves instructions",
                 GepaSettings),
        StepType("finetune", "weight", "fine-tunes the small predictors' LM on rows from their trace source",
                 FinetuneSettings),
    )
}


def step_type(key: str) -> StepType:
    """The declaration of ``key``; ``KeyError`` naming the allowed keys otherwise."""
    try:
        return STEP_TYPES[key]
    except KeyError:
        raise KeyError(f"step type {shown(key)} is unknown; allowed: {', '.join(STEP_TYPES)}") from None


def step_kind(key: str) -> Kind:
    """'prompt' or 'weight' for a step type (configurations only hold keys of the table)."""
    return step_type(key).kind


@dataclass(frozen=True)
class StrategyStep:
    """One step of a run's strategy: its key (``"p"``), the step type it names, that type's kind and
    the step's settings (``RunDraft.steps``)."""

    key: str
    type: str
    kind: Kind
    settings: Settings
