"""The Models page's part of the run document: embedded, scripted, LiteLLM and local (your own) LMs."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from core.config.defaults import SCRIPTED_HINTS
from core.config.schema import (
    EmbeddedLMSpec,
    FactoryLMSpec,
    LiteLLMSpec,
    LocalLMSpec,
    RunDraft,
    validation_message,
)
from core.document.base import revise
from core.errors import ConfigError, shown
from core.lms.catalog import DEFAULT_MODELS

SCRIPTED_FACTORY = "core.lms.scripted:make_lm"  # one of BUILTIN_FACTORIES: runs without the user-code opt-in

LMSpecs = EmbeddedLMSpec | LiteLLMSpec | FactoryLMSpec | LocalLMSpec


def scripted_lms(template: str | None, delay: float = 0.0) -> dict[str, FactoryLMSpec]:
    options: dict[str, Any] = {"hints": SCRIPTED_HINTS.get(template or "", {})}
    if delay:
        options["delay"] = float(delay)
    return {
        role: FactoryLMSpec(kind="factory", factory=SCRIPTED_FACTORY, options={"name": role, **options})
        for role in ("large", "small")
    }


def embedded_lms() -> dict[str, EmbeddedLMSpec]:
    return {role: EmbeddedLMSpec(kind="embedded", model=DEFAULT_MODELS[role]) for role in ("large", "small")}


def is_scripted(doc: RunDraft) -> bool:
    spec = doc.lms.get("large")
    return isinstance(spec, FactoryLMSpec) and spec.factory == SCRIPTED_FACTORY


def scripted_delay(doc: RunDraft) -> float:
    spec = doc.lms.get("large")
    return float(spec.options.get("delay", 0.0)) if isinstance(spec, FactoryLMSpec) else 0.0


def lm_model(spec: LMSpecs) -> str:
    """What an LM runs: its model name, the factory's import path, or a local model's path."""
    if isinstance(spec, LocalLMSpec):
        return spec.path
    return spec.factory if isinstance(spec, FactoryLMSpec) else spec.model


def lm_users(doc: RunDraft, name: str) -> list[str]:
    """The predictors that run on the LM ``name``."""
    return [predictor for predictor, assignment in doc.predictors.items() if assignment.lm == name]


def use_scripted(doc: RunDraft, on: bool, delay: float = 0.0) -> RunDraft:
    """Swap the ``large``/``small`` LMs for the scripted test LM (on) or the embedded models (off)."""
    template = doc.program.name if doc.program.kind == "template" else None
    return revise(doc, lms={**doc.lms, **(scripted_lms(template, delay) if on else embedded_lms())})


def add_litellm(doc: RunDraft, name: str, spec: dict[str, Any]) -> RunDraft:
    """Add (or replace) a LiteLLM LM from the form's values; ``ConfigError`` naming the bad field otherwise.

    A key typed in the form is not part of the document (the page keeps it for the session).
    """
    _check_name(doc, name, LiteLLMSpec)
    clean = {k: v for k, v in spec.items() if v not in (None, "") and k != "api_key"}
    clean["kind"] = "litellm"
    try:
        parsed = LiteLLMSpec.model_validate(clean)
    except ValidationError as e:
        raise ConfigError(validation_message(e, f"LM {shown(name)}")) from e
    return revise(doc, lms={**doc.lms, name: parsed})


def add_local(doc: RunDraft, name: str, spec: dict[str, Any]) -> RunDraft:
    """Add (or replace) a ``local`` LM, your own model on disk (``{"path", "weights", "quant"}``, as the Models page's
    inspection gives them); ``ConfigError`` naming the bad field otherwise. The files are checked by the
    inspection before and when the run starts, not here."""
    _check_name(doc, name, LocalLMSpec)
    clean = {k: v for k, v in spec.items() if v not in (None, "")}
    clean["kind"] = "local"
    try:
        parsed = LocalLMSpec.model_validate(clean)
    except ValidationError as e:
        raise ConfigError(validation_message(e, f"LM {shown(name)}")) from e
    return revise(doc, lms={**doc.lms, name: parsed})


def _check_name(doc: RunDraft, name: str, kind: type) -> None:
    """A new LM's name: a plain word, and not a built-in LM's name unless it replaces an LM of the same ``kind``."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,40}", name or ""):
        raise ConfigError(f"LM name {shown(name)}: use letters, digits, '_', '-' or '.', starting with a letter")
    if name in ("large", "small") and not isinstance(doc.lms.get(name), kind):
        raise ConfigError(f"LM name {shown(name)} is taken by the built-in models; pick another name")


def remove_lm(doc: RunDraft, name: str) -> RunDraft:
    users = lm_users(doc, name)
    if users:
        raise ConfigError(f"LM {shown(name)} is used by {shown(users, quotes=False, brackets=False)}; assign them another LM first")
    return revise(doc, lms={n: s for n, s in doc.lms.items() if n != name})
