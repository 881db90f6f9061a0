"""Programs: built-in templates, staged pipelines, user-file programs and predictor listing.

A program is described by a ``ProgramSpec`` (part of the run config) of one of three kinds:

- ``template``: one of the bundled ``TEMPLATES`` (a fixed list of stages plus a sample dataset);
- ``stages``: a pipeline the user composed from stages (``Predict``/``ChainOfThought`` + signature);
- ``user_file``: a ``dspy.Module`` subclass defined in a Python file (runs its code: opt-in only).

Templates and composed pipelines both become a ``StagedPipeline``; its predictors are attributes
named after the stages, so predictor names are DSPy's ``named_predictors()`` names
(``classify``; ``analyze.predict`` for a ``ChainOfThought`` stage).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import itertools
import keyword
import logging
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal

import dspy
from dspy.utils import magicattr
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import ProgramError

logger = logging.getLogger(__name__)

SIGNATURE_FORM = '"in1, in2 -> out1: type, out2"'
MAX_STAGES = 10
STAGE_MODULES = ("Predict", "ChainOfThought")
_REASONING = "reasoning"  # the output field ChainOfThought prepends to its signature
_user_module_counter = itertools.count(1)


# --------------------------------------------------------------------------------------------
# Specs (pydantic; embedded in the run config)
# --------------------------------------------------------------------------------------------


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


class TemplateProgram(BaseModel):
    """A built-in template, by key (see ``TEMPLATES``)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["template"] = "template"
    name: str

    @field_validator("name")
    @classmethod
    def _check_template(cls, name: str) -> str:
        if name not in TEMPLATES:
            raise ValueError(f"unknown template {name!r}; available templates: {', '.join(TEMPLATES)}")
        return name


class StagesProgram(BaseModel):
    """A pipeline composed by the user from 1 to 10 stages, run in order."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["stages"] = "stages"
    stages: list[Stage] = Field(min_length=1, max_length=MAX_STAGES)

    @model_validator(mode="after")
    def _check_stages(self) -> StagesProgram:
        try:
            validate_stages(self.stages)
        except ProgramError as e:
            raise ValueError(str(e)) from e
        return self


class UserFileProgram(BaseModel):
    """A ``dspy.Module`` subclass defined in a Python file; ``class_name`` picks one of several."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["user_file"] = "user_file"
    path: str
    class_name: str | None = None


ProgramSpec = Annotated[TemplateProgram | StagesProgram | UserFileProgram, Field(discriminator="kind")]


@dataclass(frozen=True)
class ProgramFields:
    """The fields of a program.

    ``inputs`` are the fields a caller must supply (in first-use order), ``outputs`` every field
    a stage/predictor produces, ``final_outputs`` the fields of the last stage/predictor.
    """

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    final_outputs: tuple[str, ...]


@dataclass(frozen=True)
class PredictorInfo:
    """One predictor of a program, as shown to the user.

    ``inputs``/``outputs`` are ``"name: type"`` strings; ``signature`` lists the bare names
    (``"document -> reasoning, analysis, key_findings"``).
    """

    name: str
    module_type: str
    signature: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    instructions: str
    demos: int


@dataclass(frozen=True)
class Template:
    """A built-in program with the sample dataset it comes with.

    ``default_mapping`` maps each program field (inputs and labels) to a column of ``sample``.
    """

    key: str
    title: str
    description: str
    stages: list[Stage]
    sample: str
    input_fields: tuple[str, ...]
    label_fields: tuple[str, ...]
    default_mapping: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Signatures and stage validation
# --------------------------------------------------------------------------------------------


def stage_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a stage, or ``None`` when it can."""
    if not name.isidentifier() or keyword.iskeyword(name):
        return f"stage name {name!r} is not a Python identifier (letters, digits, '_'; not a keyword)"
    if name.startswith("__") and name.endswith("__"):
        return f"stage name {name!r} is a dunder name; pick a plain name such as 'classify'"
    if name in _reserved_stage_names():
        return (
            f"stage name {name!r} is taken by dspy.Module (like 'forward', 'predictors', 'history'); "
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
            f"Invalid signature {sig!r}: it must contain exactly one '->'. Write it as {SIGNATURE_FORM}."
        )
    left, right = text.split("->")
    in_names, out_names = _field_names(left), _field_names(right)
    if not in_names or not out_names:
        side = "input" if not in_names else "output"
        raise ProgramError(
            f"Invalid signature {sig!r}: it needs at least one {side} field. Write it as {SIGNATURE_FORM}."
        )
    for names, side in ((in_names, "input"), (out_names, "output")):
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ProgramError(
                f"Invalid signature {sig!r}: {side} field {dupes[0]!r} is listed twice. "
                f"Write it as {SIGNATURE_FORM} with distinct names."
            )
    both = [n for n in out_names if n in in_names]
    if both:
        raise ProgramError(
            f"Invalid signature {sig!r}: field {both[0]!r} is both an input and an output; a step "
            f"cannot output a field it takes as input. Write it as {SIGNATURE_FORM}."
        )
    try:
        return dspy.Signature(text)
    except Exception as e:  # DSPy raises ValueError, SyntaxError, TypeError, NameError ...
        raise ProgramError(f"Invalid signature {sig!r}: {e}. Write it as {SIGNATURE_FORM}.") from e


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
                    f"Stage {stage.name!r} takes {name!r} as input, but {name!r} is only produced by "
                    f"the later stage {parsed[made_at].name!r}, so it is unresolvable. Fields available "
                    f"at stage {stage.name!r}: {', '.join(available) or '(none yet)'}, or a new program "
                    f"input. Move {parsed[made_at].name!r} before {stage.name!r}."
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
                f"Stage {label!r} is invalid: {reasons}. A stage has a name, a module "
                f"({' or '.join(STAGE_MODULES)}), a signature {SIGNATURE_FORM} and optional instructions."
            ) from e
    return parsed


def _check_unique_names(stages: list[Stage]) -> None:
    seen: dict[str, int] = {}
    for index, stage in enumerate(stages, start=1):
        if stage.name in seen:
            raise ProgramError(
                f"Stage name {stage.name!r} is used by stages {seen[stage.name]} and {index}; "
                "stage names must be unique."
            )
        seen[stage.name] = index


def _stage_signature(stage: Stage) -> type[dspy.Signature]:
    """Parse one stage's signature; errors name the stage."""
    try:
        signature = _parse_signature(stage.signature)
    except ProgramError as e:
        raise ProgramError(f"Stage {stage.name!r}: {e}") from e
    if stage.module == "ChainOfThought" and _REASONING in {*signature.input_fields, *signature.output_fields}:
        raise ProgramError(
            f"Stage {stage.name!r} is a ChainOfThought stage, which adds its own {_REASONING!r} "
            f"field; rename the field {_REASONING!r} in {stage.signature!r}."
        )
    return signature


def _producers(stages: list[Stage], signatures: list[type[dspy.Signature]]) -> dict[str, int]:
    """Map each output field to the index of the one stage that produces it."""
    producer: dict[str, int] = {}
    for index, signature in enumerate(signatures):
        for name in signature.output_fields:
            if name in producer:
                raise ProgramError(
                    f"Field {name!r} is produced by stage {stages[producer[name]].name!r} and again by "
                    f"stage {stages[index].name!r}; each output field must be produced by one stage only."
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
                f"Missing program input(s) {', '.join(missing)}; this program takes "
                f"{', '.join(self._fields.inputs)}."
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
        names.discard(_REASONING)
    return names


# --------------------------------------------------------------------------------------------
# Templates (defined after StagedPipeline: stage names are checked against it)
# --------------------------------------------------------------------------------------------

TEMPLATES: dict[str, Template] = {
    "analyze_classify": Template(
        key="analyze_classify",
        title="Analyze, then classify",
        description=(
            "A reasoning step analyses a document and lists key findings; a classification step "
            "turns them into a category and a risk level."
        ),
        stages=[
            Stage(
                name="analyze",
                module="ChainOfThought",
                signature="document -> analysis: str, key_findings: list[str]",
                instructions=(
                    "Read the document carefully and write a concise analysis together with its "
                    "most important findings."
                ),
            ),
            Stage(
                name="classify",
                module="Predict",
                signature="analysis, key_findings -> category: str, risk_level: str",
                instructions=(
                    "From the analysis and key findings, assign the document's category and its "
                    "risk level (low, medium or high)."
                ),
            ),
        ],
        sample="documents.csv",
        input_fields=("document",),
        label_fields=("category", "risk_level"),
        default_mapping={"document": "document", "category": "category", "risk_level": "risk_level"},
    ),
    "classifier": Template(
        key="classifier",
        title="Text classifier",
        description="A single step that assigns a label to a piece of text.",
        stages=[
            Stage(
                name="classify",
                module="Predict",
                signature="text -> label: str",
                instructions="Classify the text and answer with the single label that fits it best.",
            ),
        ],
        sample="sentiment.json",
        input_fields=("text",),
        label_fields=("label",),
        default_mapping={"text": "text", "label": "label"},
    ),
    "support_triage": Template(
        key="support_triage",
        title="Support ticket triage",
        description=(
            "An extraction step summarises a support ticket and names the product area; a "
            "classification step decides the customer's intent and the ticket's urgency."
        ),
        stages=[
            Stage(
                name="extract",
                module="Predict",
                signature="ticket -> summary: str, product_area: str",
                instructions=(
                    "Summarise the support ticket in one sentence and name the product area it concerns."
                ),
            ),
            Stage(
                name="classify",
                module="Predict",
                signature="ticket, summary -> intent: str, urgency: str",
                instructions=(
                    "Decide what the customer wants (intent) and how urgently the ticket must be "
                    "handled (urgency)."
                ),
            ),
        ],
        sample="support_tickets.jsonl",
        input_fields=("ticket",),
        label_fields=("intent", "urgency"),
        default_mapping={"ticket": "ticket", "intent": "intent", "urgency": "urgency"},
    ),
}


# --------------------------------------------------------------------------------------------
# Building programs
# --------------------------------------------------------------------------------------------


def build_program(
    spec: TemplateProgram | StagesProgram | UserFileProgram,
    *,
    allow_user_code: bool = False,
    base_dir: Path | None = None,
) -> dspy.Module:
    """Build a fresh program for ``spec``. User files load only with ``allow_user_code``."""
    if isinstance(spec, TemplateProgram):
        return StagedPipeline(_template(spec.name).stages)
    if isinstance(spec, StagesProgram):
        return StagedPipeline(spec.stages)
    if isinstance(spec, UserFileProgram):
        path = _resolve_path(spec.path, base_dir)
        return _load_user_program(path, spec.class_name, allow_user_code=allow_user_code)
    raise ProgramError(
        f"Unknown program spec {type(spec).__name__}; expected a template, stages or user_file program."
    )


def program_fields(
    spec: TemplateProgram | StagesProgram | UserFileProgram,
    *,
    allow_user_code: bool = False,
    base_dir: Path | None = None,
) -> ProgramFields:
    """The input/output fields of the program ``spec`` describes (a user file is loaded to see them)."""
    if isinstance(spec, TemplateProgram):
        return validate_stages(_template(spec.name).stages)
    if isinstance(spec, StagesProgram):
        return validate_stages(spec.stages)
    program = build_program(spec, allow_user_code=allow_user_code, base_dir=base_dir)
    return module_fields(program)


def module_fields(program: dspy.Module) -> ProgramFields:
    """The fields of a built program.

    A ``StagedPipeline`` knows its own. For any other module: inputs are the named parameters of
    ``forward`` (or, for ``forward(**kwargs)``, the predictor inputs no predictor produces);
    outputs are the union of its predictors' outputs (without ChainOfThought's ``reasoning``);
    final outputs are the last predictor's.
    """
    if isinstance(program, StagedPipeline):
        return program.fields
    predictors = _predictor_fields(program)
    if not predictors:
        raise ProgramError(f"{type(program).__name__} has no predictors (dspy.Predict or ChainOfThought).")
    outputs = list(dict.fromkeys(name for _, outs in predictors for name in outs))
    inputs = _forward_parameters(program)
    if not inputs:
        produced = set(outputs)
        inputs = [n for ins, _ in predictors for n in ins if n not in produced]
    return ProgramFields(
        inputs=tuple(dict.fromkeys(inputs)), outputs=tuple(outputs), final_outputs=tuple(predictors[-1][1])
    )


def _predictor_fields(program: dspy.Module) -> list[tuple[list[str], list[str]]]:
    """(inputs, declared outputs) per predictor, in ``named_predictors()`` order."""
    result = []
    for name, predictor in program.named_predictors():
        outputs = list(predictor.signature.output_fields)
        if isinstance(_owner(program, name), dspy.ChainOfThought) and outputs[:1] == [_REASONING]:
            outputs = outputs[1:]
        result.append((list(predictor.signature.input_fields), outputs))
    return result


def _forward_parameters(program: dspy.Module) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    try:
        parameters = inspect.signature(program.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters if p.kind in kinds]


def _template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ProgramError(
            f"Unknown template {name!r}; available templates: {', '.join(TEMPLATES)}."
        ) from None


# --------------------------------------------------------------------------------------------
# User files
# --------------------------------------------------------------------------------------------


def _resolve_path(path: str, base_dir: Path | None) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.is_absolute() and base_dir is not None:
        resolved = Path(base_dir) / resolved
    return resolved


def _load_user_program(path: Path, class_name: str | None, *, allow_user_code: bool) -> dspy.Module:
    """Import ``path`` (opt-in only), pick the ``dspy.Module`` subclass and instantiate it."""
    if not allow_user_code:
        raise ProgramError(f"Loading a Python file runs its code; enable 'allow user code' to load {path}")
    _check_user_file(path)
    module = _import_user_file(path)
    program_class = _pick_module_class(module, path, class_name)
    try:
        program = program_class()
    except Exception as e:
        raise ProgramError(
            f"Creating {program_class.__name__}() from {path} failed: {type(e).__name__}: {e}. "
            "The class must be constructible with no arguments."
        ) from e
    if not program.named_predictors():
        raise ProgramError(
            f"{program_class.__name__} in {path} has no predictors; give it at least one "
            "dspy.Predict or dspy.ChainOfThought attribute in __init__."
        )
    return program


def _check_user_file(path: Path) -> None:
    if not path.exists():
        raise ProgramError(f"Program file not found: {path}")
    if not path.is_file():
        raise ProgramError(f"Program path {path} is not a file; give the path of a .py file.")
    if path.suffix != ".py":
        raise ProgramError(f"Program file {path} is not a Python file; only .py files can be loaded.")


def _import_user_file(path: Path) -> ModuleType:
    """Run the file as a fresh module under a unique name (two loads never share state)."""
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]
    module_name = f"studio_user_program_{digest}_{next(_user_module_counter)}"
    import_spec = importlib.util.spec_from_file_location(module_name, path)
    if import_spec is None or import_spec.loader is None:
        raise ProgramError(f"Cannot import {path}; only .py files can be loaded.")
    module = importlib.util.module_from_spec(import_spec)
    sys.modules[module_name] = module  # dataclasses, pickling and typing look classes up here
    logger.info("Loading user program file %s as %s", path, module_name)
    try:
        import_spec.loader.exec_module(module)
    except SyntaxError as e:
        del sys.modules[module_name]
        raise ProgramError(f"Syntax error in {e.filename or path}:{e.lineno}: {e.msg}") from e
    except ImportError as e:
        del sys.modules[module_name]
        raise ProgramError(f"Import error while loading {path}: {e}") from e
    except Exception as e:
        del sys.modules[module_name]
        raise ProgramError(f"Running {path} raised {type(e).__name__}: {e}") from e
    return module


def _pick_module_class(module: ModuleType, path: Path, class_name: str | None) -> type[dspy.Module]:
    """``class_name`` if given, else the single ``dspy.Module`` subclass defined in the file."""
    defined = [
        obj for obj in vars(module).values() if inspect.isclass(obj) and obj.__module__ == module.__name__
    ]
    candidates = [cls for cls in defined if issubclass(cls, dspy.Module)]
    if class_name is not None:
        chosen = getattr(module, class_name, None)
        if not (inspect.isclass(chosen) and issubclass(chosen, dspy.Module)):
            available = ", ".join(cls.__name__ for cls in candidates) or "(none)"
            raise ProgramError(
                f"Class {class_name!r} is not a dspy.Module subclass defined in {path}; "
                f"available: {available}."
            )
        return chosen
    if not candidates:
        found = ", ".join(cls.__name__ for cls in defined) or "(none)"
        raise ProgramError(f"No dspy.Module subclass is defined in {path}; classes found: {found}.")
    if len(candidates) > 1:
        names = ", ".join(cls.__name__ for cls in candidates)
        raise ProgramError(
            f"{path} defines several dspy.Module subclasses ({names}); set class_name to one of them."
        )
    return candidates[0]


# --------------------------------------------------------------------------------------------
# Describing programs
# --------------------------------------------------------------------------------------------


def describe_predictors(program: dspy.Module) -> list[PredictorInfo]:
    """List the program's predictors in ``named_predictors()`` order."""
    infos = []
    for name, predictor in program.named_predictors():
        signature = predictor.signature
        owner = _owner(program, name)
        infos.append(
            PredictorInfo(
                name=name,
                module_type=type(owner if owner is not None else predictor).__name__,
                signature=f"{', '.join(signature.input_fields)} -> {', '.join(signature.output_fields)}",
                inputs=tuple(f"{n}: {_type_name(f.annotation)}" for n, f in signature.input_fields.items()),
                outputs=tuple(f"{n}: {_type_name(f.annotation)}" for n, f in signature.output_fields.items()),
                instructions=signature.instructions,
                demos=len(predictor.demos),
            )
        )
    return infos


def _owner(program: dspy.Module, predictor_name: str) -> dspy.Module | None:
    """The module holding predictor ``a.b.predict`` (``a.b``), or ``None`` for a top-level one."""
    if "." not in predictor_name:
        return None
    try:
        return magicattr.get(program, predictor_name.rsplit(".", 1)[0])
    except Exception:  # an unusual path: fall back to the predictor's own type
        return None


def _type_name(annotation: Any) -> str:
    """``str``, ``list[str]``, ``Optional[int]`` ... as the user would write it."""
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


# --------------------------------------------------------------------------------------------
# Definitions (export manifest)
# --------------------------------------------------------------------------------------------


def program_definition(
    spec: TemplateProgram | StagesProgram | UserFileProgram, *, base_dir: Path | None = None
) -> dict[str, Any]:
    """A JSON-able definition of the program for an export manifest.

    Templates carry their resolved stages (so a later change to the template cannot break the
    export); user files carry the path, class name, SHA-256 and source text. Reads files only;
    runs no user code.
    """
    if isinstance(spec, TemplateProgram):
        stages = _template(spec.name).stages
        return {"kind": "template", "name": spec.name, "stages": [s.model_dump() for s in stages]}
    if isinstance(spec, StagesProgram):
        return {"kind": "stages", "stages": [s.model_dump() for s in spec.stages]}
    if isinstance(spec, UserFileProgram):
        path = _resolve_path(spec.path, base_dir)
        _check_user_file(path)
        data = path.read_bytes()
        return {
            "kind": "user_file",
            "path": str(path),
            "file_name": path.name,
            "class_name": spec.class_name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "source": data.decode("utf-8"),
        }
    raise ProgramError(f"Unknown program spec {type(spec).__name__}; expected template, stages or user_file.")


def build_program_from_definition(
    defn: dict[str, Any], *, allow_user_code: bool = False, source_dir: Path | None = None
) -> dspy.Module:
    """Rebuild a program from ``program_definition``'s output.

    For a user file, ``source_dir`` is where the export put the source (``source_dir/file_name``);
    without it the original path is used. The file must match the recorded SHA-256.
    """
    kind = defn.get("kind") if isinstance(defn, dict) else None
    if kind in ("template", "stages"):
        stages = defn.get("stages")
        if stages is None and kind == "template":
            stages = _template(str(defn.get("name"))).stages
        if stages is None:
            raise ProgramError("Program definition of kind 'stages' has no 'stages' list.")
        return StagedPipeline(stages)
    if kind == "user_file":
        missing = [key for key in ("path", "file_name", "sha256") if key not in defn]
        if missing:
            raise ProgramError(f"User-file program definition lacks {', '.join(missing)}.")
        path = Path(source_dir) / defn["file_name"] if source_dir is not None else Path(defn["path"])
        _check_user_file(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != defn["sha256"]:
            raise ProgramError(
                f"{path} has changed since the program was exported (SHA-256 {digest[:12]}..., expected "
                f"{defn['sha256'][:12]}...); restore the exported source."
            )
        return _load_user_program(path, defn.get("class_name"), allow_user_code=allow_user_code)
    raise ProgramError(
        f"Unknown program definition kind {kind!r}; expected 'template', 'stages' or 'user_file'."
    )


# --------------------------------------------------------------------------------------------
# Label choices: output fields constrained to the values a dataset uses
# --------------------------------------------------------------------------------------------


def apply_label_choices(program: dspy.Module, choices: dict[str, list[str]]) -> None:
    """Make each listed output field a ``Literal`` of its values, in every predictor producing it.

    The embedded engine turns Literal outputs into an enum in its output grammar, and the
    ChatAdapter tells hosted models the allowed values: a label is then always one of the
    dataset's labels, which gives a prompt step correct traces to start from.
    """
    for _, predictor in program.named_predictors():
        signature = predictor.signature
        for name, values in choices.items():
            if name in signature.output_fields and values:
                signature = signature.with_updated_fields(name, type_=Literal[tuple(values)])
        predictor.signature = signature
