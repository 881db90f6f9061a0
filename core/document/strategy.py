"""The Strategy page's part of the run document: steps, optimizers and their settings, metric."""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from core.config.schema import (
    STEP_MODELS,
    RunDraft,
    validation_message,
)
from core.config.steps import STEP_TYPES
from core.config.strategy import STEP_KEY_PATTERN, join_steps, normalize_strategy
from core.document.base import revise
from core.errors import ConfigError, StrategyError, shown

SETTINGS_MODELS = {key: row.settings for key, row in STEP_TYPES.items()}
OPTIMIZER_LABELS = {key: row.label for key, row in STEP_TYPES.items()}
OPTIMIZER_SUMMARIES = {key: row.summary for key, row in STEP_TYPES.items()}


def strategy_steps(doc: RunDraft) -> list[str]:
    return doc.step_keys()


def set_steps(doc: RunDraft, steps: list[str]) -> RunDraft:
    """Set the strategy from its steps (``StrategyError`` naming the allowed keys otherwise)."""
    return revise(doc, strategy=normalize_strategy(join_steps(steps), doc.optimizers.keys()))


def set_strategy_text(doc: RunDraft, text: str) -> RunDraft:
    return revise(doc, strategy=normalize_strategy(text, doc.optimizers.keys()))


def move_step(steps: list[str], index: int, delta: int) -> list[str]:
    out = list(steps)
    target = index + delta
    if 0 <= index < len(out) and 0 <= target < len(out):
        out[index], out[target] = out[target], out[index]
    return out


def add_optimizer(doc: RunDraft, key: str, optimizer: str) -> RunDraft:
    """Define a new step key with an optimizer type and its default settings."""
    if not re.fullmatch(STEP_KEY_PATTERN, key or ""):
        raise StrategyError(f"step key {shown(key)}: use lowercase letters, digits or _, starting with a letter")
    if key in doc.optimizers:
        raise StrategyError(f"step key {shown(key)} is already defined; defined keys: {shown(doc.optimizers, quotes=False, brackets=False)}")
    if optimizer not in SETTINGS_MODELS:
        raise StrategyError(f"optimizer {shown(optimizer)} is unknown; allowed: {', '.join(SETTINGS_MODELS)}")
    return revise(doc, optimizers={**doc.optimizers, key: STEP_MODELS[optimizer](type=optimizer)})


def step_label(doc: RunDraft, key: str) -> str:
    kind = doc.optimizers[key].type
    return OPTIMIZER_LABELS.get(kind, kind)


SETTING_KINDS = ("bool", "int", "float", "text", "choice")
"""What a setting can be on the Strategy page; each also as ``optional_<kind>`` (the annotation ``| None``)."""

CHOICE_SOURCES = ("lms",)
"""Where a setting marked ``json_schema_extra={"choices": ...}`` takes its allowed values from the
document: ``"lms"``, the names of its LMs."""

_BASIC_KINDS: dict[Any, str] = {bool: "bool", int: "int", float: "float", str: "text"}


@dataclass(frozen=True)
class SettingField:
    """One setting of an optimizer, for a generated form."""

    name: str
    kind: str  # one of SETTING_KINDS, or "optional_" + one of them (None allowed: "not set")
    default: Any
    minimum: float | None
    maximum: float | None
    help: str | None
    options: tuple[Any, ...] = ()  # the allowed values of a "choice" declared by a Literal
    choices: str | None = None  # the allowed values come from the document instead (one of CHOICE_SOURCES)
    unset: str = "not set"  # how an optional setting's None reads on the page

    @property
    def optional(self) -> bool:
        return self.kind.startswith("optional_")


def settings_fields(optimizer: str) -> list[SettingField]:
    """The settings of ``optimizer`` from its pydantic model in the table of optimizers (types, bounds,
    descriptions, marks); ``StrategyError`` naming the setting when its type cannot be shown."""
    row = STEP_TYPES.get(optimizer)
    if row is None:
        raise StrategyError(f"optimizer {shown(optimizer)} is unknown; allowed: {', '.join(STEP_TYPES)}")
    return [_setting_field(optimizer, name, info) for name, info in row.settings.model_fields.items()]


def _setting_field(optimizer: str, name: str, info: FieldInfo) -> SettingField:
    where = f"optimizer {optimizer!r}, setting {name!r}"
    kind, options = _kind_of(info.annotation, where)
    mark = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    choices = mark.get("choices")
    if choices is not None:
        if choices not in CHOICE_SOURCES:
            raise StrategyError(f"{where}: choices {choices!r} is not a source of values; allowed: "
                                f"{', '.join(CHOICE_SOURCES)}")
        if kind not in ("text", "optional_text"):
            raise StrategyError(f"{where}: choices {choices!r} names text values; annotate the setting str or "
                                "str | None")
        kind = kind.replace("text", "choice")
    lo = hi = None
    for meta in info.metadata:
        lo = getattr(meta, "ge", None) if getattr(meta, "ge", None) is not None else lo
        lo = getattr(meta, "gt", None) if getattr(meta, "gt", None) is not None else lo
        hi = getattr(meta, "le", None) if getattr(meta, "le", None) is not None else hi
    return SettingField(name, kind, info.default, lo, hi, info.description, options, choices,
                        str(mark.get("unset", "not set")))


def _kind_of(annotation: Any, where: str) -> tuple[str, tuple[Any, ...]]:
    """The form kind of a settings annotation and a Literal's values; ``StrategyError`` otherwise."""
    args = get_args(annotation)
    optional = get_origin(annotation) in (Union, UnionType) and type(None) in args
    inner = [a for a in args if a is not type(None)] if optional else [annotation]
    kind, options = "", ()
    if len(inner) == 1 and get_origin(inner[0]) is Literal:
        options = tuple(v for v in get_args(inner[0]) if v is not None)
        optional = optional or None in get_args(inner[0])
        kind = "choice"
    elif len(inner) == 1 and inner[0] in _BASIC_KINDS:
        kind = _BASIC_KINDS[inner[0]]
    if not kind:
        shown = annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")
        raise StrategyError(f"{where}: the Strategy page cannot show a setting of type {shown}; allowed: "
                            "bool, int, float, str, a Literal of values, or one of them | None")
    return ("optional_" + kind if optional else kind), options


def setting_options(doc: RunDraft, field: SettingField) -> tuple[Any, ...]:
    """The values a "choice" setting may take in ``doc`` (a Literal's values, or the document's LM names
    for a setting marked ``choices="lms"``), without None."""
    return tuple(doc.lms) if field.choices == "lms" else field.options


def set_settings(doc: RunDraft, key: str, values: dict[str, Any]) -> RunDraft:
    """Replace some settings of step ``key`` (the form's values); ``StrategyError`` naming the setting
    and its rule otherwise."""
    step = doc.optimizers[key]
    try:
        settings = SETTINGS_MODELS[step.type].model_validate({**step.settings.model_dump(), **values})
    except ValidationError as e:
        raise StrategyError(validation_message(e, f"step {shown(key)}", show_input=False)) from e
    return revise(doc, optimizers={**doc.optimizers, key: STEP_MODELS[step.type](type=step.type, settings=settings)})


def set_metric(doc: RunDraft, name: str) -> RunDraft:
    from core.programs.metrics import METRICS

    if name not in METRICS:
        raise ConfigError(f"metric {shown(name)} is unknown; allowed metrics: {', '.join(METRICS)}")
    return revise(doc, metric=revise(doc.metric, name=name))
