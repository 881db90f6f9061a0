"""The run document as a whole: a ``RunDraft``, its edits, its validation and its problems before a run.

A draft holds what the user is building, including states a ``RunConfig`` refuses (code not allowed
yet, a pipeline being fixed); ``build_config`` is where the checks across fields run, and
``run_problems`` says what stops a run without preparing it.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from core.config.defaults import DEFAULT_TEMPLATE, default_config_dict
from core.config.schema import (
    RunConfig,
    RunDraft,
    config_to_dict,
    parse_config,
    parse_config_text,
    parse_draft,
    validation_message,
)
from core.errors import ConfigError, StudioError

M = TypeVar("M", bound=BaseModel)


def new_document(template: str = DEFAULT_TEMPLATE) -> RunDraft:
    """The product default: ``template`` on the embedded models, ready to run."""
    return parse_draft(default_config_dict(template))


def revise(model: M, **changes: Any) -> M:
    """A copy of ``model`` (the draft or one of its parts) with ``changes`` applied and validated.

    Unchanged fields are kept as they are (already valid); changed ones are validated by the model's
    own rules, so an edit can never leave a field the model would refuse. ``ConfigError`` names the
    field, the bad value and the rule otherwise.
    """
    try:
        return type(model).model_validate({**dict(model), **changes})
    except ValidationError as e:
        raise ConfigError(validation_message(e)) from e


def draft_of(config: RunConfig) -> RunDraft:
    """A validated configuration as a draft to edit (typed API keys are not carried over)."""
    return parse_draft(config_to_dict(config))


def build_config(draft: RunDraft, api_keys: dict[str, str] | None = None) -> RunConfig:
    """The draft checked as a whole (``ConfigError`` naming the field otherwise), with the session's
    typed API keys on their LiteLLM LMs. The keys never enter the draft."""
    from core.store.secrets import register_secret

    keys = {name: key for name, key in (api_keys or {}).items() if key}
    for key in keys.values():
        register_secret(key)  # a typed key is redacted from messages and logs like an env key
    return parse_config(config_to_dict(draft)).with_api_keys(keys)


def document_from_json(text: str) -> RunDraft:
    """A configuration file uploaded by the user, validated, as a draft.

    Its ``allow_user_code`` is not taken on trust: code it names waits for the opt-in on the Program page.
    """
    from core.config.trust import untrusted_document

    return untrusted_document(draft_of(parse_config_text(text)))


def run_problems(draft: RunDraft, api_keys: dict[str, str] | None = None,
                 allowed_files: set[str] | None = None) -> list[str]:
    """What stops the draft from running (empty when it can start): the cheap, local check.

    Code the user has not allowed and a data file not yet allowed (``allowed_files``) are reported
    without running or reading them. No LM is built and nothing goes over the network.
    """
    from core.config.trust import file_to_review, user_code_notice
    from core.plan.prepare import preflight

    if notice := user_code_notice(draft):
        return [notice]
    if allowed_files is not None and (pending := file_to_review(draft, allowed_files)) is not None:
        return [f"the data file {pending} has not been read yet; allow it on the Data page"]
    try:
        config = build_config(draft, api_keys)
    except StudioError as e:
        return [str(e)]
    return preflight(config)
