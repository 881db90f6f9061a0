"""Turn dashboard edits into the run configuration document (plain dicts; no streamlit here).

The dashboard keeps one document (the JSON form of ``RunConfig``) in its session. Every edit goes
through a function of this module that returns a new document or raises a ``StudioError`` whose
message the page shows next to the control. ``build_config`` validates the document with the
typed API keys of the session added (they never enter the document itself).
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import TypeAdapter, ValidationError

from core.config import (
    PROMPT_OPTIMIZERS,
    ROLES,
    WEIGHT_OPTIMIZERS,
    FinetuneSettings,
    LiteLLMSpec,
    LMSpec,
    MiproSettings,
    RandomSearchSettings,
    RunConfig,
    SplitSpec,
    config_to_dict,
    parse_config,
    parse_config_text,
)
from core.data import (
    ALLOWED_EXTENSIONS,
    Table,
    auto_mapping,
    build_examples,
    load_table,
    load_table_from_path,
    split_examples,
)
from core.defaults import DEFAULT_TEMPLATE, SCRIPTED_HINTS, default_config_dict
from core.errors import ConfigError, DataError, ProgramError, StrategyError, StudioError
from core.lms.catalog import DEFAULT_MODELS
from core.lms.registry import capabilities
from core.paths import DATA_DIR, sample_path, studio_home
from core.programs import TEMPLATES, ProgramSpec, build_program, describe_predictors, program_fields, validate_stages
from core.strategy import SEPARATOR, STEP_KEY_PATTERN, normalize_strategy

SCRIPTED_FACTORY = "core.lms.scripted:make_lm"
SETTINGS_MODELS = {"random_search": RandomSearchSettings, "mipro": MiproSettings, "finetune": FinetuneSettings}
OPTIMIZER_LABELS = {"random_search": "prompt · random_search", "mipro": "prompt · mipro", "finetune": "weight · finetune"}

_PROGRAM = TypeAdapter(ProgramSpec)
_LM = TypeAdapter(LMSpec)


# --- the document ----------------------------------------------------------------------------------


def new_document(template: str = DEFAULT_TEMPLATE) -> dict[str, Any]:
    """The product default: ``template`` on the embedded models, ready to run."""
    return default_config_dict(template)


def _copy(doc: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(doc)


def with_secrets(doc: dict[str, Any], api_keys: dict[str, str] | None) -> dict[str, Any]:
    """A copy of ``doc`` with the session's typed API keys added to their LiteLLM specs."""
    from core.store.secrets import register_secret

    out = _copy(doc)
    for name, key in (api_keys or {}).items():
        spec = out.get("lms", {}).get(name)
        if key and isinstance(spec, dict) and spec.get("kind") == "litellm":
            spec["api_key"] = key
            register_secret(key)  # a typed key is redacted from messages and logs like an env key
    return out


def build_config(doc: dict[str, Any], api_keys: dict[str, str] | None = None) -> RunConfig:
    """Validate the document (``ConfigError`` naming the field otherwise)."""
    return parse_config(with_secrets(doc, api_keys))


def document_from_json(text: str) -> dict[str, Any]:
    """A configuration file uploaded by the user, validated, as a document.

    Its ``allow_user_code`` is not taken on trust: code it names waits for the opt-in on the Program page.
    """
    from core.trust import untrusted_document

    return untrusted_document(config_to_dict(parse_config_text(text)))


def run_problems(doc: dict[str, Any], api_keys: dict[str, str] | None = None,
                 allowed_files: set[str] | None = None) -> list[str]:
    """What stops the document from running (empty when it can start): the cheap, local check.

    Code the user has not allowed and a data file not yet allowed (``allowed_files``) are reported
    without running or reading them. No LM is built and nothing goes over the network.
    """
    from core.prepare import preflight
    from core.trust import file_to_review, user_code_notice

    if notice := user_code_notice(doc):
        return [notice]
    if allowed_files is not None and (pending := file_to_review(doc, allowed_files)) is not None:
        return [f"the data file {pending} has not been read yet; allow it on the Data page"]
    try:
        config = build_config(doc, api_keys)
    except StudioError as e:
        return [str(e)]
    return preflight(config)


# --- program ---------------------------------------------------------------------------------------


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
    out, problems = _copy(doc), []
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
    out = _copy(doc)
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
    out = _copy(doc)
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
    out = _copy(doc)
    out["program"] = {"kind": "stages", "stages": [_clean_stage(s) for s in stages]}
    out["allow_user_code"] = False
    _sync_fields(out, fields.inputs, fields.final_outputs)
    _reassign(out, _predictor_names(out))
    _remap_columns(out)
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
    out = _copy(doc)
    out["program"] = spec
    out["allow_user_code"] = True
    _sync_fields(out, fields.inputs, fields.final_outputs)
    _reassign(out, _predictor_names(out))
    _remap_columns(out)
    return out


def save_user_program(data: bytes, filename: str) -> Path:
    """Store an uploaded program file under ``studio_home()/programs``."""
    if not filename.endswith(".py"):
        raise ProgramError(f"program file {filename!r} is not a Python file; upload a .py file")
    return _save_bytes(data, filename, "programs")


# --- LMs -------------------------------------------------------------------------------------------


def scripted_lms(template: str | None, delay: float = 0.0) -> dict[str, dict[str, Any]]:
    options: dict[str, Any] = {"hints": SCRIPTED_HINTS.get(template or "", {})}
    if delay:
        options["delay"] = float(delay)
    return {
        role: {"kind": "factory", "factory": SCRIPTED_FACTORY, "options": {"name": role, **options}}
        for role in ("large", "small")
    }


def embedded_lms() -> dict[str, dict[str, Any]]:
    return {role: {"kind": "embedded", "model": DEFAULT_MODELS[role]} for role in ("large", "small")}


def is_scripted(doc: dict[str, Any]) -> bool:
    spec = doc.get("lms", {}).get("large", {})
    return spec.get("kind") == "factory" and spec.get("factory") == SCRIPTED_FACTORY


def scripted_delay(doc: dict[str, Any]) -> float:
    return float(doc.get("lms", {}).get("large", {}).get("options", {}).get("delay", 0.0))


def use_scripted(doc: dict[str, Any], on: bool, delay: float = 0.0) -> dict[str, Any]:
    """Swap the ``large``/``small`` LMs for the scripted test LM (on) or the embedded models (off)."""
    out = _copy(doc)
    template = out["program"].get("name") if out["program"].get("kind") == "template" else None
    out.setdefault("lms", {}).update(scripted_lms(template, delay) if on else embedded_lms())
    return out


def add_litellm(doc: dict[str, Any], name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Add (or replace) a LiteLLM LM; ``ConfigError`` naming the bad field otherwise."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,40}", name or ""):
        raise ConfigError(f"LM name {name!r}: use letters, digits, '_', '-' or '.', starting with a letter")
    if name in ("large", "small") and doc.get("lms", {}).get(name, {}).get("kind") != "litellm":
        raise ConfigError(f"LM name {name!r} is taken by the built-in models; pick another name")
    clean = {k: v for k, v in spec.items() if v not in (None, "") and k != "api_key"}
    clean["kind"] = "litellm"
    try:
        LiteLLMSpec.model_validate(clean)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(map(str, err["loc"])) or "spec"
        raise ConfigError(f"LM {name!r}, {field}: {err['msg']} (got {err.get('input')!r})") from e
    out = _copy(doc)
    out["lms"][name] = clean
    return out


def remove_lm(doc: dict[str, Any], name: str) -> dict[str, Any]:
    users = [p for p, a in doc.get("predictors", {}).items() if a.get("lm") == name]
    if users:
        raise ConfigError(f"LM {name!r} is used by {', '.join(users)}; assign them another LM first")
    out = _copy(doc)
    out["lms"].pop(name, None)
    return out


# --- data ------------------------------------------------------------------------------------------


def list_samples() -> list[str]:
    return sorted(p.name for p in DATA_DIR.iterdir() if p.suffix in ALLOWED_EXTENSIONS)


def _safe_name(filename: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename).name)[-80:] or "upload"


def _save_bytes(data: bytes, filename: str, folder: str) -> Path:
    digest = hashlib.sha256(data).hexdigest()[:12]
    target = studio_home() / folder / f"{digest}-{_safe_name(filename)}"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.write_bytes(data)
    return target


def save_upload(data: bytes, filename: str) -> tuple[Path, Table]:
    """Check an uploaded dataset (``DataError`` with core's message) and store it for the run's worker."""
    table = load_table(data, filename)
    return _save_bytes(data, filename, "uploads"), table


def data_path(doc: dict[str, Any]) -> Path:
    source = doc["data"]["source"]
    if source.get("kind") == "sample":
        return sample_path(source["name"])
    return Path(source["path"])


def load_document_table(doc: dict[str, Any]) -> Table:
    return load_table_from_path(data_path(doc))


def set_data_source(doc: dict[str, Any], source: dict[str, Any], table: Table) -> dict[str, Any]:
    """Use a new dataset; fields are matched to columns by name where the mapping no longer fits."""
    out = _copy(doc)
    out["data"]["source"] = source
    _remap_columns(out, table)
    return out


def _remap_columns(out: dict[str, Any], table: Table | None = None) -> None:
    if table is None:
        try:
            table = load_document_table(out)
        except StudioError:
            return
    data = out["data"]
    fields = [*data["inputs"], *data["labels"]]
    auto = auto_mapping(fields, list(table.columns))
    data["mapping"] = {
        f: (data["mapping"][f] if data["mapping"].get(f) in table.columns else auto.get(f, ""))
        for f in fields
    }
    data["mapping"] = {f: c for f, c in data["mapping"].items() if c}


def set_mapping(doc: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    out = _copy(doc)
    out["data"]["mapping"] = {f: c for f, c in mapping.items() if c}
    return out


def set_labels(doc: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    if not labels:
        raise DataError("choose at least one label field (an output of the program the metric compares)")
    out = _copy(doc)
    out["data"]["labels"] = list(labels)
    out["metric"]["fields"] = None
    return out


def set_split(doc: dict[str, Any], train: float, val: float, test: float, seed: int) -> dict[str, Any]:
    """Counts (>= 1, whole numbers) or ratios (< 1); ``ConfigError`` with the rule otherwise."""
    values = [int(v) if float(v).is_integer() and v >= 1 else float(v) for v in (train, val, test)]
    try:
        SplitSpec(train=values[0], val=values[1], test=values[2], seed=int(seed))
    except ValidationError as e:
        raise ConfigError(f"data.split: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from e
    out = _copy(doc)
    out["data"]["split"] = {"train": values[0], "val": values[1], "test": values[2], "seed": int(seed)}
    return out


@dataclass(frozen=True)
class DataCheck:
    """Problems of the data section, by the control that fixes them."""

    mapping: str | None
    split: str | None
    sizes: tuple[int, int, int] | None


def check_data(doc: dict[str, Any], table: Table) -> DataCheck:
    data = doc["data"]
    try:
        examples = build_examples(table, data["mapping"], data["inputs"], data["labels"])
    except DataError as e:
        return DataCheck(str(e), None, None)
    split = SplitSpec.model_validate(data["split"])
    try:
        result = split_examples(examples, *split.sizes(), seed=split.seed)
    except DataError as e:
        return DataCheck(None, str(e), None)
    return DataCheck(None, None, result.sizes)


def label_distribution(table: Table, mapping: dict[str, str], labels: list[str]) -> dict[str, dict[str, int]]:
    """For each mapped label field, how many rows hold each value (most frequent first, top 20)."""
    out = {}
    for field in labels:
        column = mapping.get(field)
        if column in table.columns:
            out[field] = dict(Counter(row[column] for row in table.rows).most_common(20))
    return out


# --- strategy --------------------------------------------------------------------------------------


def strategy_steps(doc: dict[str, Any]) -> list[str]:
    text = doc.get("strategy") or ""
    return [s for s in (part.strip() for part in text.split("->")) if s]


def set_steps(doc: dict[str, Any], steps: list[str]) -> dict[str, Any]:
    """Set the strategy from its steps (``StrategyError`` naming the allowed keys otherwise)."""
    out = _copy(doc)
    out["strategy"] = normalize_strategy(SEPARATOR.join(steps), out["optimizers"].keys())
    return out


def set_strategy_text(doc: dict[str, Any], text: str) -> dict[str, Any]:
    out = _copy(doc)
    out["strategy"] = normalize_strategy(text, out["optimizers"].keys())
    return out


def move_step(steps: list[str], index: int, delta: int) -> list[str]:
    out = list(steps)
    target = index + delta
    if 0 <= index < len(out) and 0 <= target < len(out):
        out[index], out[target] = out[target], out[index]
    return out


def add_optimizer(doc: dict[str, Any], key: str, optimizer: str) -> dict[str, Any]:
    """Define a new step key with an optimizer type and its default settings."""
    if not re.fullmatch(STEP_KEY_PATTERN, key or ""):
        raise StrategyError(f"step key {key!r}: use lowercase letters, digits or _, starting with a letter")
    if key in doc["optimizers"]:
        raise StrategyError(f"step key {key!r} is already defined; defined keys: {', '.join(doc['optimizers'])}")
    if optimizer not in SETTINGS_MODELS:
        raise StrategyError(f"optimizer {optimizer!r} is unknown; allowed: {', '.join(SETTINGS_MODELS)}")
    out = _copy(doc)
    out["optimizers"][key] = {"type": optimizer, "settings": SETTINGS_MODELS[optimizer]().model_dump()}
    return out


def step_kind(doc: dict[str, Any], key: str) -> str:
    return "weight" if doc["optimizers"][key]["type"] in WEIGHT_OPTIMIZERS else "prompt"


def step_label(doc: dict[str, Any], key: str) -> str:
    return OPTIMIZER_LABELS.get(doc["optimizers"][key]["type"], doc["optimizers"][key]["type"])


@dataclass(frozen=True)
class SettingField:
    """One setting of an optimizer, for a generated form."""

    name: str
    kind: str  # "int", "float", "bool", "optional_int", "choice"
    default: Any
    minimum: float | None
    maximum: float | None
    help: str | None
    options: tuple[str, ...] = ()  # the allowed values of a "choice"


def settings_fields(optimizer: str) -> list[SettingField]:
    """The settings of ``optimizer`` from its pydantic model (types, bounds, descriptions)."""
    model = SETTINGS_MODELS[optimizer]
    out = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        options = tuple(get_args(annotation)) if get_origin(annotation) is Literal else ()
        kind = "choice" if options else {int: "int", float: "float", bool: "bool"}.get(annotation, "optional_int")
        lo = hi = None
        for meta in info.metadata:
            lo = getattr(meta, "ge", None) if getattr(meta, "ge", None) is not None else lo
            lo = getattr(meta, "gt", None) if getattr(meta, "gt", None) is not None else lo
            hi = getattr(meta, "le", None) if getattr(meta, "le", None) is not None else hi
        out.append(SettingField(name, kind, info.default, lo, hi, info.description, options))
    return out


def set_settings(doc: dict[str, Any], key: str, values: dict[str, Any]) -> dict[str, Any]:
    spec = doc["optimizers"][key]
    model = SETTINGS_MODELS[spec["type"]]
    try:
        settings = model.model_validate({**spec.get("settings", {}), **values})
    except ValidationError as e:
        err = e.errors()[0]
        raise StrategyError(f"step {key!r}, {'.'.join(map(str, err['loc']))}: {err['msg']}") from e
    out = _copy(doc)
    out["optimizers"][key]["settings"] = settings.model_dump()
    return out


def prompt_and_weight_types() -> tuple[tuple[str, ...], tuple[str, ...]]:
    return PROMPT_OPTIMIZERS, WEIGHT_OPTIMIZERS


def set_metric(doc: dict[str, Any], name: str) -> dict[str, Any]:
    from core.metrics import METRICS

    if name not in METRICS:
        raise ConfigError(f"metric {name!r} is unknown; allowed metrics: {', '.join(METRICS)}")
    out = _copy(doc)
    out["metric"]["name"] = name
    return out

