"""The Strategy page's part of the run document: steps, optimizers and their settings, metric."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError

from core.config import (
    PROMPT_OPTIMIZERS,
    STEP_MODELS,
    WEIGHT_OPTIMIZERS,
    RunDraft,
    optimizer_kind,
    validation_message,
)
from core.document.base import revise
from core.errors import ConfigError, StrategyError
from core.optimizers.table import OPTIMIZERS
from core.strategy import SEPARATOR, STEP_KEY_PATTERN, normalize_strategy

SETTINGS_MODELS = {key: row.settings for key, row in OPTIMIZERS.items()}
OPTIMIZER_LABELS = {key: row.label for key, row in OPTIMIZERS.items()}


def strategy_steps(doc: RunDraft) -> list[str]:
    return [s for s in (part.strip() for part in doc.strategy.split("->")) if s]


def set_steps(doc: RunDraft, steps: list[str]) -> RunDraft:
    """Set the strategy from its steps (``StrategyError`` naming the allowed keys otherwise)."""
    return revise(doc, strategy=normalize_strategy(SEPARATOR.join(steps), doc.optimizers.keys()))


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
        raise StrategyError(f"step key {key!r}: use lowercase letters, digits or _, starting with a letter")
    if key in doc.optimizers:
        raise StrategyError(f"step key {key!r} is already defined; defined keys: {', '.join(doc.optimizers)}")
    if optimizer not in SETTINGS_MODELS:
        raise StrategyError(f"optimizer {optimizer!r} is unknown; allowed: {', '.join(SETTINGS_MODELS)}")
    return revise(doc, optimizers={**doc.optimizers, key: STEP_MODELS[optimizer](type=optimizer)})


def step_kind(doc: RunDraft, key: str) -> str:
    return optimizer_kind(doc.optimizers[key].type)


def step_label(doc: RunDraft, key: str) -> str:
    kind = doc.optimizers[key].type
    return OPTIMIZER_LABELS.get(kind, kind)


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


def set_settings(doc: RunDraft, key: str, values: dict[str, Any]) -> RunDraft:
    """Replace some settings of step ``key`` (the form's values); ``StrategyError`` naming the setting
    and its rule otherwise."""
    step = doc.optimizers[key]
    try:
        settings = SETTINGS_MODELS[step.type].model_validate({**step.settings.model_dump(), **values})
    except ValidationError as e:
        raise StrategyError(validation_message(e, f"step {key!r}", show_input=False)) from e
    return revise(doc, optimizers={**doc.optimizers, key: STEP_MODELS[step.type](type=step.type, settings=settings)})


def prompt_and_weight_types() -> tuple[tuple[str, ...], tuple[str, ...]]:
    return PROMPT_OPTIMIZERS, WEIGHT_OPTIMIZERS


def set_metric(doc: RunDraft, name: str) -> RunDraft:
    from core.metrics import METRICS

    if name not in METRICS:
        raise ConfigError(f"metric {name!r} is unknown; allowed metrics: {', '.join(METRICS)}")
    return revise(doc, metric=revise(doc.metric, name=name))
