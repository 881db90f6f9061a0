"""The Strategy page's part of the run document: steps, optimizers and their settings, metric."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError

from core.config import (
    PROMPT_OPTIMIZERS,
    WEIGHT_OPTIMIZERS,
    optimizer_kind,
)
from core.document.base import copy_document
from core.errors import ConfigError, StrategyError
from core.optimizers.table import OPTIMIZERS
from core.strategy import SEPARATOR, STEP_KEY_PATTERN, normalize_strategy

SETTINGS_MODELS = {key: row.settings for key, row in OPTIMIZERS.items()}
OPTIMIZER_LABELS = {key: row.label for key, row in OPTIMIZERS.items()}


def strategy_steps(doc: dict[str, Any]) -> list[str]:
    text = doc.get("strategy") or ""
    return [s for s in (part.strip() for part in text.split("->")) if s]


def set_steps(doc: dict[str, Any], steps: list[str]) -> dict[str, Any]:
    """Set the strategy from its steps (``StrategyError`` naming the allowed keys otherwise)."""
    out = copy_document(doc)
    out["strategy"] = normalize_strategy(SEPARATOR.join(steps), out["optimizers"].keys())
    return out


def set_strategy_text(doc: dict[str, Any], text: str) -> dict[str, Any]:
    out = copy_document(doc)
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
    out = copy_document(doc)
    out["optimizers"][key] = {"type": optimizer, "settings": SETTINGS_MODELS[optimizer]().model_dump()}
    return out


def step_kind(doc: dict[str, Any], key: str) -> str:
    return optimizer_kind(doc["optimizers"][key]["type"])


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
    out = copy_document(doc)
    out["optimizers"][key]["settings"] = settings.model_dump()
    return out


def prompt_and_weight_types() -> tuple[tuple[str, ...], tuple[str, ...]]:
    return PROMPT_OPTIMIZERS, WEIGHT_OPTIMIZERS


def set_metric(doc: dict[str, Any], name: str) -> dict[str, Any]:
    from core.metrics import METRICS

    if name not in METRICS:
        raise ConfigError(f"metric {name!r} is unknown; allowed metrics: {', '.join(METRICS)}")
    out = copy_document(doc)
    out["metric"]["name"] = name
    return out
