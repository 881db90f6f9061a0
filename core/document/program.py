"""The Program page's part of the run document: the program spec and the predictors' LMs and roles."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from core.config.schema import (
    ROLES,
    DataSpec,
    MetricSpec,
    PredictorAssignment,
    RunDraft,
    SampleSource,
    StagesDraft,
    validation_message,
)
from core.document.base import revise
from core.document.data import remap_columns, save_bytes
from core.document.lms import is_scripted, scripted_delay, use_scripted
from core.errors import ProgramError, StudioError, shown
from core.lms.registry import capabilities
from core.programs import (
    TEMPLATES,
    ProgramSpec,
    Stage,
    UserFileProgram,
    build_program,
    describe_predictors,
    program_fields,
    validate_stages,
)

_PROGRAM = TypeAdapter(ProgramSpec)


def program_spec(doc: RunDraft) -> Any:
    """The draft's program checked as a whole (a pipeline being fixed: ``ProgramError`` saying why)."""
    if not isinstance(doc.program, StagesDraft):
        return doc.program
    try:
        return _PROGRAM.validate_python(doc.program.model_dump())
    except ValidationError as e:
        raise ProgramError(validation_message(e, "program", location=False, show_input=False, limit=3)) from e


@dataclass(frozen=True)
class PredictorRow:
    """One line of the predictors table."""

    predictor: str
    module: str
    signature: str
    lm: str
    role: str
    finetunable: bool
    note: str


def lm_capabilities(doc: RunDraft, name: str) -> tuple[bool, str]:
    """(fine-tunable, reason) of the document's LM ``name``."""
    spec = doc.lms.get(name)
    if spec is None:
        return False, f"LM {shown(name)} is not defined; defined LMs: {shown(sorted(doc.lms))}"
    try:
        caps = capabilities(spec, allow_user_code=doc.allow_user_code)
    except StudioError as e:
        return False, str(e)
    return caps.finetunable, caps.reason


def predictor_rows(doc: RunDraft) -> list[PredictorRow]:
    """The program's predictors with their signature, LM, role and whether the LM can be fine-tuned."""
    program = build_program(program_spec(doc), allow_user_code=doc.allow_user_code)
    rows = []
    for info in describe_predictors(program):
        assignment = doc.predictors.get(info.name)
        lm = assignment.lm if assignment else ""
        finetunable, reason = lm_capabilities(doc, lm) if lm else (False, "no LM assigned")
        rows.append(
            PredictorRow(info.name, info.module_type, info.signature, lm, assignment.role if assignment else "large",
                         finetunable, reason)
        )
    return rows


def role_problem(doc: RunDraft, predictor: str, lm: str, role: str) -> str | None:
    """Why ``predictor`` cannot have ``lm`` with ``role``, or None."""
    if lm not in doc.lms:
        return f"predictor {shown(predictor)}: LM {shown(lm)} is not defined; defined LMs: {shown(doc.lms, quotes=False, brackets=False)}"
    if role not in ROLES:
        return f"predictor {shown(predictor)}: role {shown(role)} is not allowed; allowed roles: {', '.join(ROLES)}"
    if role == "small":
        finetunable, reason = lm_capabilities(doc, lm)
        if not finetunable:
            return (
                f"predictor {shown(predictor)} cannot have the role 'small' on LM {shown(lm)}: it cannot be fine-tuned "
                f"({reason}). Give it the role 'large' or choose a fine-tunable LM."
            )
    return None


def assign_predictors(doc: RunDraft, rows: list[dict[str, str]]) -> tuple[RunDraft, list[str]]:
    """Apply the predictors table's edited rows (``{"predictor", "lm", "role"}``); rows that cannot
    apply are refused with a message."""
    out, problems = doc, []
    for row in rows:
        name, lm, role = row["predictor"], row["lm"], row["role"]
        problem = role_problem(out, name, lm, role)
        if problem:
            problems.append(problem)
            continue
        out = revise(out, predictors={**out.predictors, name: PredictorAssignment(lm=lm, role=role)})
    return out, problems


def role_preset(doc: RunDraft, preset: str) -> RunDraft:
    """``last_small``: the last predictor fine-tuned, the others prompted; ``all_small``: every predictor
    fine-tuned (the paper's setting: one LM for all modules); ``all_large``: prompts only."""
    if preset not in ("last_small", "all_small", "all_large"):
        raise ProgramError(f"unknown role preset {shown(preset)}; allowed: last_small, all_small, all_large")
    names = list(doc.predictors)
    small_names = {"all_small": names, "last_small": names[-1:]}.get(preset, [])
    _, small = _default_lm_names(doc)
    for name in small_names:
        problem = role_problem(doc, name, small, "small")
        if problem:
            raise ProgramError(problem)
    return revise(doc, predictors=_assignments(doc, names, set(small_names)))


def _assignments(doc: RunDraft, names: list[str], small_names: set[str]) -> dict[str, PredictorAssignment]:
    """``small_names`` on the small-role LM with the role 'small', the other ``names`` large."""
    large, small = _default_lm_names(doc)
    return {name: PredictorAssignment(lm=small if name in small_names else large,
                                      role="small" if name in small_names else "large") for name in names}


def _default_lm_names(doc: RunDraft) -> tuple[str, str]:
    lms = list(doc.lms)
    large = "large" if "large" in lms else lms[0]
    small = "small" if "small" in lms else large
    return large, small


def _reassigned(doc: RunDraft, names: list[str], keep: bool = True) -> RunDraft:
    """The predictors ``names``: those that remain keep their assignment (with ``keep``); new ones get
    the last one small, the others large."""
    fresh = _assignments(doc, names, set(names[-1:]))
    return revise(doc, predictors={name: doc.predictors[name] if keep and name in doc.predictors else fresh[name]
                                   for name in names})


def _predictor_names(doc: RunDraft) -> list[str]:
    program = build_program(program_spec(doc), allow_user_code=doc.allow_user_code)
    return [name for name, _ in program.named_predictors()]


def set_template(doc: RunDraft, template: str) -> RunDraft:
    """Switch to a built-in template with its sample data, mapping and labels (LMs are kept)."""
    if template not in TEMPLATES:
        raise ProgramError(f"unknown template {shown(template)}; available templates: {', '.join(TEMPLATES)}")
    t = TEMPLATES[template]
    data = DataSpec(source=SampleSource(kind="sample", name=t.sample), mapping=dict(t.default_mapping),
                    inputs=list(t.input_fields), labels=list(t.label_fields), split=doc.data.split)
    out = revise(doc, program={"kind": "template", "name": template}, allow_user_code=False, name=t.title,
                 data=data, metric=MetricSpec(name=doc.metric.name))
    names = _predictor_names(out)
    out = revise(out, predictors=_assignments(out, names, set(t.small_predictors(names))))
    if is_scripted(out):
        out = use_scripted(out, True, delay=scripted_delay(out))
    return out


def _synced_fields(doc: RunDraft, inputs: tuple[str, ...], labels: tuple[str, ...]) -> RunDraft:
    """The data's inputs and labels following a new program; mapping and metric fields that no longer
    apply are dropped."""
    data = doc.data
    new_labels = data.labels if data.labels and set(data.labels) <= set(labels) else list(labels)
    keep = {*inputs, *new_labels}
    metric = doc.metric
    if metric.fields and not set(metric.fields) <= set(new_labels):
        metric = revise(metric, fields=None)
    data = revise(data, inputs=list(inputs), labels=list(new_labels),
                  mapping={f: c for f, c in data.mapping.items() if f in keep})
    return revise(doc, data=data, metric=metric)


def set_stages(doc: RunDraft, stages: list[dict[str, Any]] | list[Stage]) -> RunDraft:
    """Use a composed pipeline; ``ProgramError`` (core's message) when the stages do not fit together."""
    fields = validate_stages(stages)
    out = keep_stages(doc, stages).model_copy(update={"allow_user_code": False})
    out = _synced_fields(out, fields.inputs, fields.final_outputs)
    return remap_columns(_reassigned(out, _predictor_names(out)))


def keep_stages(doc: RunDraft, stages: list[dict[str, Any]] | list[Stage]) -> RunDraft:
    """The draft with ``stages`` as its pipeline, even when they do not fit together yet, so that the
    user can go on fixing them (each stage must still be well formed)."""
    try:
        return revise(doc, program=StagesDraft(stages=list(stages)))
    except ValidationError as e:
        raise ProgramError(validation_message(e, "program", location=False, show_input=False, limit=3)) from e


def stages_of(doc: RunDraft) -> list[Stage]:
    """The document's program as editable stages (a template's stages)."""
    program = doc.program
    if isinstance(program, StagesDraft):
        return list(program.stages)
    if program.kind == "template":
        return list(TEMPLATES[program.name].stages)
    return [Stage(name="predict", module="Predict", signature="question -> answer")]


def set_user_file(doc: RunDraft, path: str, class_name: str | None = None) -> RunDraft:
    """Use a ``dspy.Module`` from a Python file (this runs the file: the page asks first)."""
    spec = UserFileProgram(path=path, class_name=class_name or None)
    fields = program_fields(spec, allow_user_code=True)
    out = revise(doc, program=spec, allow_user_code=True)
    out = _synced_fields(out, fields.inputs, fields.final_outputs)
    return remap_columns(_reassigned(out, _predictor_names(out)))


def save_user_program(data: bytes, filename: str) -> Path:
    """Store an uploaded program file under ``studio_home()/programs``."""
    if not filename.endswith(".py"):
        raise ProgramError(f"program file {shown(filename)} is not a Python file; upload a .py file")
    return save_bytes(data, filename, "programs")
