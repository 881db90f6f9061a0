"""Stage signatures and their validation, and ``StagedPipeline``: the program templates and composed
pipelines become (one predictor per stage, named after it)."""

from __future__ import annotations

import keyword
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dspy
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from core.errors import ProgramError, shown

logger = logging.getLogger(__name__)


SIGNATURE_FORM = '"in1, in2 -> out1: type, out2"'
MAX_STAGES = 10
STAGE_MODULES = ("Predict", "ChainOfThought")

REASONING = "reasoning"  # the output field ChainOfThought prepends to its signature


class Stage(BaseModel):
    """One step of a staged pipeline: a DSPy module type, its signature and optional instructions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    module: Literal["Predict", "ChainOfThought"]
    signature: str
    instructions: str | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        problem = stage_name_problem(name)
        if problem:
            raise ValueError(problem)
        return name

    @field_validator("instructions")
    @classmethod
    def _blank_instructions_are_none(cls, text: str | None) -> str | None:
        return text if text is None or text.strip() else None



@dataclass(frozen=True)
class ProgramFields:
    """The fields of a program.

    ``inputs`` are the fields a caller must supply (in first-use order), ``outputs`` every field
    a stage/predictor produces, ``final_outputs`` the fields of the last stage/predictor.
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    final_outputs: tuple[str, ...]



def stage_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a stage, or ``None`` when it can."""
    if not name.isidentifier() or keyword.iskeyword(name):
        return f"stage name {shown(name)} is not a Python identifier (letters, digits, '_'; not a keyword)"
    if name.startswith("__") and name.endswith("__"):
        return f"stage name {shown(name)} is a dunder name; pick a plain name such as 'classify'"
    if name in _reserved_stage_names():
        return (
            f"stage name {shown(name)} is taken by dspy.Module (like 'forward', 'predictors', 'history'); "
            "pick another name such as 'classify'"
        )
    return None


def _reserved_stage_names() -> frozenset[str]:
    """Attribute names a stage cannot use: those of ``StagedPipeline`` and its instances."""
    instance_attrs = {"callbacks", "history", "_compiled", "_stages", "_fields"}
    return frozenset(dir(StagedPipeline)) | instance_attrs


def parse_stage_signature(sig: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Parse a DSPy signature string into its input and output field names.

    Raises ``ProgramError`` naming the text, DSPy's reason and the allowed form. The UI calls this
    while the user types.
    """
    signature = _parse_signature(sig)
    return tuple(signature.input_fields), tuple(signature.output_fields)


def _parse_signature(sig: str) -> type[dspy.Signature]:
    """Parse and check ``sig``; every failure is a ``ProgramError`` that shows the allowed form."""
    text = sig.strip() if isinstance(sig, str) else sig
    if not isinstance(text, str) or text.count("->") != 1:
        raise ProgramError(
            f"Invalid signature {shown(sig)}: it must contain exactly one '->'. Write it as {SIGNATURE_FORM}."
        )
    left, right = text.split("->")
    in_names, out_names = _field_names(left), _field_names(right)
    if not in_names or not out_names:
        side = "input" if not in_names else "output"
        raise ProgramError(
            f"Invalid signature {shown(sig)}: it needs at least one {side} field. Write it as {SIGNATURE_FORM}."
        )
    for names, side in ((in_names, "input"), (out_names, "output")):
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ProgramError(
                f"Invalid signature {shown(sig)}: {side} field {shown(dupes[0])} is listed twice. "
                f"Write it as {SIGNATURE_FORM} with distinct names."
            )
    both = [n for n in out_names if n in in_names]
    if both:
        raise ProgramError(
            f"Invalid signature {shown(sig)}: field {shown(both[0])} is both an input and an output; a step "
            f"cannot output a field it takes as input. Write it as {SIGNATURE_FORM}."
        )
    try:
        return dspy.Signature(text)
    except Exception as e:  # DSPy raises ValueError, SyntaxError, TypeError, NameError ...
        raise ProgramError(f"Invalid signature {shown(sig)}: {e}. Write it as {SIGNATURE_FORM}.") from e


def _field_names(side: str) -> list[str]:
    """The field names of one side of a signature (``"a: list[str], b"`` -> ``["a", "b"]``)."""
    names, depth, current = [], 0, ""
    for char in side:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            names.append(current)
            current = ""
        else:
            current += char
    names.append(current)
    return [part.split(":", 1)[0].strip() for part in names if part.strip()]


def validate_stages(stages: Sequence[Stage] | Sequence[dict[str, Any]]) -> ProgramFields:
    """Check a staged pipeline and return its fields.

    Checks: every signature parses; stage names are unique; each output field is produced by
    one stage only; each stage input is either a program input (no stage produces it) or the
    output of an earlier stage.
    """
    parsed = _coerce_stages(stages)
    _check_unique_names(parsed)
    signatures = [_stage_signature(stage) for stage in parsed]
    producer = _producers(parsed, signatures)

    inputs: list[str] = []
    available: list[str] = []
    for index, (stage, signature) in enumerate(zip(parsed, signatures, strict=True)):
        for name in signature.input_fields:
            made_at = producer.get(name)
            if made_at is None:
                if name not in inputs:
                    inputs.append(name)
                    available.append(name)
            elif made_at > index:
                raise ProgramError(
                    f"Stage {shown(stage.name)} takes {shown(name)} as input, but {shown(name)} is only produced by "
                    f"the later stage {shown(parsed[made_at].name)}, so it is unresolvable. Fields available "
                    f"at stage {shown(stage.name)}: {shown(available, quotes=False, brackets=False) or '(none yet)'}, or a new program "
                    f"input. Move {shown(parsed[made_at].name)} before {shown(stage.name)}."
                )
        available.extend(signature.output_fields)

    outputs = tuple(name for signature in signatures for name in signature.output_fields)
    return ProgramFields(
        inputs=tuple(inputs), outputs=outputs, final_outputs=tuple(signatures[-1].output_fields)
    )


def _coerce_stages(stages: Sequence[Stage] | Sequence[dict[str, Any]]) -> list[Stage]:
    """Turn dicts into ``Stage``s; 1 to ``MAX_STAGES`` stages."""
    if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence):
        raise ProgramError(f"Stages must be a list of stages, got {type(stages).__name__}.")
    if not 1 <= len(stages) <= MAX_STAGES:
        raise ProgramError(f"A pipeline needs 1 to {MAX_STAGES} stages, got {len(stages)}.")
    parsed = []
    for index, stage in enumerate(stages, start=1):
        if isinstance(stage, Stage):
            parsed.append(stage)
            continue
        try:
            parsed.append(Stage.model_validate(stage))
        except ValidationError as e:
            label = stage.get("name", index) if isinstance(stage, dict) else index
            reasons = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise ProgramError(
                f"Stage {shown(label)} is invalid: {reasons}. A stage has a name, a module "
                f"({' or '.join(STAGE_MODULES)}), a signature {SIGNATURE_FORM} and optional instructions."
            ) from e
    return parsed


def _check_unique_names(stages: list[Stage]) -> None:
    seen: dict[str, int] = {}
    for index, stage in enumerate(stages, start=1):
        if stage.name in seen:
            raise ProgramError(
                f"Stage name {shown(stage.name)} is used by stages {seen[stage.name]} and {index}; "
                "stage names must be unique."
            )
        seen[stage.name] = index


def _stage_signature(stage: Stage) -> type[dspy.Signature]:
    """Parse one stage's signature; errors name the stage."""
    try:
        signature = _parse_signature(stage.signature)
    except ProgramError as e:
        raise ProgramError(f"Stage {shown(stage.name)}: {e}") from e
    if stage.module == "ChainOfThought" and REASONING in {*signature.input_fields, *signature.output_fields}:
        raise ProgramError(
            f"Stage {shown(stage.name)} is a ChainOfThought stage, which adds its own {REASONING!r} "
            f"field; rename the field {REASONING!r} in {shown(stage.signature)}."
        )
    return signature


def _producers(stages: list[Stage], signatures: list[type[dspy.Signature]]) -> dict[str, int]:
    """Map each output field to the index of the one stage that produces it."""
    producer: dict[str, int] = {}
    for index, signature in enumerate(signatures):
        for name in signature.output_fields:
            if name in producer:
                raise ProgramError(
                    f"Field {shown(name)} is produced by stage {shown(stages[producer[name]].name)} and again by "
                    f"stage {shown(stages[index].name)}; each output field must be produced by one stage only."
                )
            producer[name] = index
    return producer


# --------------------------------------------------------------------------------------------
# Staged pipeline
# --------------------------------------------------------------------------------------------


class StagedPipeline(dspy.Module):
    """Runs stages in order; each stage reads program inputs or outputs of earlier stages.

    Each stage's module is an attribute named after the stage. ``forward`` returns a
    ``dspy.Prediction`` with every stage's outputs (and the ``reasoning`` of the last
    ``ChainOfThought`` stage).
    """

    def __init__(self, stages: Sequence[Stage] | Sequence[dict[str, Any]]):
        super().__init__()
        parsed = _coerce_stages(stages)
        self._fields = validate_stages(parsed)
        self._stages = tuple(parsed)
        for stage in parsed:
            setattr(self, stage.name, _build_stage_module(stage))

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The stages, in run order."""
        return self._stages

    @property
    def fields(self) -> ProgramFields:
        """The program's input and output fields."""
        return self._fields

    def forward(self, **inputs: Any) -> dspy.Prediction:
        """Run every stage in order and return all their outputs."""
        values, outputs = self._check_inputs(inputs), {}
        for stage in self._stages:
            module = getattr(self, stage.name)
            result = module(**{name: values[name] for name in _stage_inputs(module)})
            self._collect(module, result, values, outputs)
        return dspy.Prediction(**outputs)

    async def aforward(self, **inputs: Any) -> dspy.Prediction:
        """Async ``forward``."""
        values, outputs = self._check_inputs(inputs), {}
        for stage in self._stages:
            module = getattr(self, stage.name)
            result = await module.acall(**{name: values[name] for name in _stage_inputs(module)})
            self._collect(module, result, values, outputs)
        return dspy.Prediction(**outputs)

    def _check_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        missing = [name for name in self._fields.inputs if name not in inputs]
        if missing:
            raise ProgramError(
                f"Missing program input(s) {shown(missing, quotes=False, brackets=False)}; this program takes "
                f"{shown(self._fields.inputs, quotes=False, brackets=False)}."
            )
        return dict(inputs)

    @staticmethod
    def _collect(module: dspy.Module, result: dspy.Prediction, values: dict, outputs: dict) -> None:
        """Feed a stage's declared outputs forward; keep all its fields in the program's output."""
        declared = _stage_outputs(module)
        for name, value in result.items():
            outputs[name] = value
            if name in declared:
                values[name] = value


def _build_stage_module(stage: Stage) -> dspy.Module:
    """A ``Predict`` or ``ChainOfThought`` for ``stage``, with its instructions applied."""
    module_class = dspy.ChainOfThought if stage.module == "ChainOfThought" else dspy.Predict
    module = module_class(dspy.Signature(stage.signature))
    if stage.instructions:
        for _, predictor in module.named_predictors():
            predictor.signature = predictor.signature.with_instructions(stage.instructions)
    return module


def _stage_predictor(module: dspy.Module) -> dspy.Predict:
    return module if isinstance(module, dspy.Predict) else module.predict


def _stage_inputs(module: dspy.Module) -> list[str]:
    return list(_stage_predictor(module).signature.input_fields)


def _stage_outputs(module: dspy.Module) -> set[str]:
    names = set(_stage_predictor(module).signature.output_fields)
    if isinstance(module, dspy.ChainOfThought):
        names.discard(REASONING)
    return names

