"""Building a program from its spec, listing its fields and predictors, export definitions, label choices,
label predictors."""

from __future__ import annotations

import hashlib
import inspect
import logging
import typing
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any, Literal

import dspy
from dspy.utils import magicattr

from core.errors import ProgramError, shown
from core.programs.specs import PredictorInfo, StagesProgram, TemplateProgram, UserFileProgram
from core.programs.stages import REASONING, ProgramFields, StagedPipeline, validate_stages
from core.programs.templates import TEMPLATES, Template
from core.programs.user_file import check_user_file, load_user_program, resolve_path

logger = logging.getLogger(__name__)


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
        path = resolve_path(spec.path, base_dir)
        return load_user_program(path, spec.class_name, allow_user_code=allow_user_code)
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
        if isinstance(_owner(program, name), dspy.ChainOfThought) and outputs[:1] == [REASONING]:
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
            f"Unknown template {shown(name)}; available templates: {', '.join(TEMPLATES)}."
        ) from None



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
        path = resolve_path(spec.path, base_dir)
        check_user_file(path)
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
        check_user_file(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != defn["sha256"]:
            raise ProgramError(
                f"{path} has changed since the program was exported (SHA-256 {digest[:12]}..., expected "
                f"{defn['sha256'][:12]}...); restore the exported source."
            )
        return load_user_program(path, defn.get("class_name"), allow_user_code=allow_user_code)
    raise ProgramError(
        f"Unknown program definition kind {shown(kind)}; expected 'template', 'stages' or 'user_file'."
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


# --------------------------------------------------------------------------------------------
# Label predictors: the predictors that answer with label fields only
# --------------------------------------------------------------------------------------------


def label_keys(examples: Iterable[dspy.Example]) -> set[str]:
    """The label fields of ``examples`` (every key of their ``labels()``)."""
    return set().union(*(set(example.labels().keys()) for example in examples))


def label_fields(predictor: Any, labels: Collection[str]) -> list[str] | None:
    """The predictor's outputs when all of them (besides a ChainOfThought reasoning) are among ``labels``;
    None otherwise: the one definition of a label predictor."""
    outputs = [name for name in predictor.signature.output_fields if name != REASONING]
    if outputs and all(name in labels for name in outputs):
        return outputs
    return None


def label_predictors(program: dspy.Module, labels: Collection[str]) -> dict[str, list[str]]:
    """Predictor name -> its label fields, for the predictors of ``program`` whose outputs (besides a
    reasoning) are all label fields (``label_fields``), in ``named_predictors()`` order."""
    found = {name: label_fields(predictor, labels) for name, predictor in program.named_predictors()}
    return {name: fields for name, fields in found.items() if fields}
