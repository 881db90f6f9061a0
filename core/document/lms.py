"""The Models page's part of the run document: embedded, scripted and LiteLLM LMs."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from core.config import (
    LiteLLMSpec,
)
from core.defaults import SCRIPTED_HINTS
from core.document.base import copy_document
from core.errors import ConfigError
from core.lms.catalog import DEFAULT_MODELS

SCRIPTED_FACTORY = "core.lms.scripted:make_lm"


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
    out = copy_document(doc)
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
    out = copy_document(doc)
    out["lms"][name] = clean
    return out


def remove_lm(doc: dict[str, Any], name: str) -> dict[str, Any]:
    users = [p for p, a in doc.get("predictors", {}).items() if a.get("lm") == name]
    if users:
        raise ConfigError(f"LM {name!r} is used by {', '.join(users)}; assign them another LM first")
    out = copy_document(doc)
    out["lms"].pop(name, None)
    return out
