"""The Program page's part of the run document: the program spec and the predictors' LMs and roles."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from core.config import (
    ROLES,
    LMSpec,
    SplitSpec,
)
from core.document.base import copy_document
from core.document.data import remap_columns, save_bytes
from core.document.lms import is_scripted, scripted_delay, use_scripted
from core.errors import ProgramError, StudioError
from core.lms.registry import capabilities
from core.programs import TEMPLATES, ProgramSpec, build_program, describe_predictors, program_fields, validate_stages

_PROGRAM = TypeAdapter(ProgramSpec)
_LM = TypeAdapter(LMSpec)


def program_spec(doc: dict[str, Any]) -> Any:
    try:
        return _PROGRAM.validate_python(doc["program"])
    except ValidationError as e:
        reasons = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors()[:3])
        raise ProgramError(f"program: {reasons}") from e


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


def lm_capabilities(doc: dict[str, Any], name: str) -> tuple[bool, str]:
    """(fine-tunable, reason) of the document's LM ``name``."""
    spec = doc.get("lms", {}).get(name)
    if spec is None:
        return False, f"LM {name!r} is not defined; defined LMs: {sorted(doc.get('lms', {}))}"
    try:
        caps = capabilities(_LM.validate_python(spec), allow_user_code=bool(doc.get("allow_user_code")))
    except ValidationError as e:
        return False, f"LM {name!r} is invalid: {e.errors()[0]['msg']}"
    except StudioError as e:
        return False, str(e)
    return caps.finetunable, caps.reason


def predictor_rows(doc: dict[str, Any]) -> list[PredictorRow]:
    """The program's predictors with their signature, LM, role and whether the LM can be fine-tuned."""
    program = build_program(program_spec(doc), allow_user_code=bool(doc.get("allow_user_code")))
    rows = []
    for info in describe_predictors(program):
        assignment = doc.get("predictors", {}).get(info.name, {})
        lm = assignment.get("lm", "")
        finetunable, reason = lm_capabilities(doc, lm) if lm else (False, "no LM assigned")
        rows.append(
            PredictorRow(info.name, info.module_type, info.signature, lm, assignment.get("role", "large"),
                         finetunable, reason)
        )
    return rows


def role_problem(doc: dict[str, Any], predictor: str, lm: str, role: str) -> str | None:
    """Why ``predictor`` cannot have ``lm`` with ``role``, or None."""
    if lm not in doc.get("lms", {}):
        return f"predictor {predictor!r}: LM {lm!r} is not defined; defined LMs: {', '.join(doc.get('lms', {}))}"
    if role not in ROLES:
        return f"predictor {predictor!r}: role {role!r} is not allowed; allowed roles: {', '.join(ROLES)}"
    if role == "small":
        finetunable, reason = lm_capabilities(doc, lm)
        if not finetunable:
            return (
                f"predictor {predictor!r} cannot have the role 'small' on LM {lm!r}: it cannot be fine-tuned "
                f"({reason}). Give it the role 'large' or choose a fine-tunable LM."
            )
    return None


def assign_predictors(doc: dict[str, Any], rows: list[dict[str, str]]) -> tuple[dict[str, Any], list[str]]:
    """Apply ``[{"predictor", "lm", "role"}, ...]``; rows that cannot apply are refused with a message."""
    out, problems = copy_document(doc), []
    for row in rows:
        name, lm, role = row["predictor"], row["lm"], row["role"]
        problem = role_problem(out, name, lm, role)
        if problem:
            problems.append(problem)
            continue
        out["predictors"][name] = {"lm": lm, "role": role}
    return out, problems


def role_preset(doc: dict[str, Any], preset: str) -> dict[str, Any]:
    """``last_small``: the last predictor fine-tuned, the others prompted; ``all_large``: prompts only."""
    out = copy_document(doc)
    names = list(out["predictors"])
    large, small = _default_lm_names(out)
    for i, name in enumerate(names):
        is_small = preset == "last_small" and i == len(names) - 1
        out["predictors"][name] = {"lm": small if is_small else large, "role": "small" if is_small else "large"}
    return out


def _default_lm_names(doc: dict[str, Any]) -> tuple[str, str]:
    lms = list(doc.get("lms", {}))
    large = "large" if "large" in lms else lms[0]
    small = "small" if "small" in lms else large
    return large, small


def _reassign(doc: dict[str, Any], names: list[str]) -> None:
    """Keep the assignments of predictors that remain; new ones: last small, others large."""
    old = doc.get("predictors", {})
    large, small = _default_lm_names(doc)
    doc["predictors"] = {}
    for i, name in enumerate(names):
        if name in old:
            doc["predictors"][name] = old[name]
        else:
            last = i == len(names) - 1
            doc["predictors"][name] = {"lm": small if last else large, "role": "small" if last else "large"}


def _predictor_names(doc: dict[str, Any]) -> list[str]:
    program = build_program(program_spec(doc), allow_user_code=bool(doc.get("allow_user_code")))
    return [name for name, _ in program.named_predictors()]


def set_template(doc: dict[str, Any], template: str) -> dict[str, Any]:
    """Switch to a built-in template with its sample data, mapping and labels (LMs are kept)."""
    if template not in TEMPLATES:
        raise ProgramError(f"unknown template {template!r}; available templates: {', '.join(TEMPLATES)}")
    t = TEMPLATES[template]
    out = copy_document(doc)
    out["program"] = {"kind": "template", "name": template}
    out["allow_user_code"] = False
    out["name"] = t.title
    out["data"] = {
        "source": {"kind": "sample", "name": t.sample},
        "mapping": dict(t.default_mapping),
        "inputs": list(t.input_fields),
        "labels": list(t.label_fields),
        "split": dict(out.get("data", {}).get("split") or SplitSpec().model_dump()),
    }
    out["metric"] = {"name": out.get("metric", {}).get("name", "exact_match")}
    out["predictors"] = {}
    _reassign(out, _predictor_names(out))
    if is_scripted(out):
        out = use_scripted(out, True, delay=scripted_delay(out))
    return out


def _sync_fields(out: dict[str, Any], inputs: tuple[str, ...], labels: tuple[str, ...]) -> None:
    data = out["data"]
    data["inputs"] = list(inputs)
    if not set(data.get("labels", [])) <= set(labels) or not data.get("labels"):
        data["labels"] = list(labels)
    keep = {*data["inputs"], *data["labels"]}
    data["mapping"] = {f: c for f, c in data.get("mapping", {}).items() if f in keep}
    metric_fields = out.get("metric", {}).get("fields")
    if metric_fields and not set(metric_fields) <= set(data["labels"]):
        out["metric"]["fields"] = None


def set_stages(doc: dict[str, Any], stages: list[dict[str, Any]]) -> dict[str, Any]:
    """Use a composed pipeline; ``ProgramError`` (core's message) when the stages do not fit together."""
    fields = validate_stages(stages)
    out = copy_document(doc)
    out["program"] = {"kind": "stages", "stages": [_clean_stage(s) for s in stages]}
    out["allow_user_code"] = False
    _sync_fields(out, fields.inputs, fields.final_outputs)
    _reassign(out, _predictor_names(out))
    remap_columns(out)
    return out


def _clean_stage(stage: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stage.items() if k != "instructions" or (v or "").strip()}


def stages_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The document's program as editable stages (a template's stages, copied)."""
    program = doc["program"]
    if program.get("kind") == "stages":
        return [dict(s) for s in program["stages"]]
    if program.get("kind") == "template":
        return [s.model_dump(exclude_none=True) for s in TEMPLATES[program["name"]].stages]
    return [{"name": "predict", "module": "Predict", "signature": "question -> answer"}]


def set_user_file(doc: dict[str, Any], path: str, class_name: str | None = None) -> dict[str, Any]:
    """Use a ``dspy.Module`` from a Python file (this runs the file: the page asks first)."""
    spec = {"kind": "user_file", "path": path, "class_name": class_name or None}
    fields = program_fields(_PROGRAM.validate_python(spec), allow_user_code=True)
    out = copy_document(doc)
    out["program"] = spec
    out["allow_user_code"] = True
    _sync_fields(out, fields.inputs, fields.final_outputs)
    _reassign(out, _predictor_names(out))
    remap_columns(out)
    return out


def save_user_program(data: bytes, filename: str) -> Path:
    """Store an uploaded program file under ``studio_home()/programs``."""
    if not filename.endswith(".py"):
        raise ProgramError(f"program file {filename!r} is not a Python file; upload a .py file")
    return save_bytes(data, filename, "programs")
