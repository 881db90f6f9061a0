"""The run document: the JSON form of ``RunConfig`` that the dashboard edits, its validation and
its problems before a run."""

from __future__ import annotations

import copy
from typing import Any

from core.config import (
    RunConfig,
    config_to_dict,
    parse_config,
    parse_config_text,
)
from core.defaults import DEFAULT_TEMPLATE, default_config_dict
from core.errors import StudioError


def new_document(template: str = DEFAULT_TEMPLATE) -> dict[str, Any]:
    """The product default: ``template`` on the embedded models, ready to run."""
    return default_config_dict(template)


def copy_document(doc: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(doc)


def with_secrets(doc: dict[str, Any], api_keys: dict[str, str] | None) -> dict[str, Any]:
    """A copy of ``doc`` with the session's typed API keys added to their LiteLLM specs."""
    from core.store.secrets import register_secret

    out = copy_document(doc)
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
