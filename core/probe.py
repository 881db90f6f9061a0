"""Test the connection to an LM: build it and make one tiny call (only when the user presses
**Test connection**: it sends the API key to the LM's endpoint)."""

from __future__ import annotations

from typing import Any

import dspy
from pydantic import TypeAdapter, ValidationError

from core.config import LiteLLMSpec, LMSpec
from core.errors import ConfigError, LMError
from core.lms.hosted import check_endpoint
from core.lms.registry import build_lm, resolve_api_key
from core.store.secrets import redact

PROBE_PROMPT = "Reply with the single word: ok"


def check_connection(name: str, spec: dict[str, Any], api_key: str | None = None, *,
                     allow_user_code: bool = False) -> str:
    """The LM's reply to a one-word prompt; ``LMError`` with the provider's message when it fails.

    A self-hosted endpoint (``api_base``) is first asked for its model list, which names an
    unreachable server, a rejected key or an unknown model plainly. A factory of user code runs
    only with ``allow_user_code`` (the configuration's opt-in).
    """
    spec = dict(spec)
    if api_key and spec.get("kind") == "litellm":
        spec["api_key"] = api_key
    try:
        parsed = TypeAdapter(LMSpec).validate_python(spec)
    except ValidationError as e:
        raise ConfigError(f"LM {name!r}: {e.errors()[0]['msg']}") from e
    if isinstance(parsed, LiteLLMSpec) and parsed.api_base:
        check_endpoint(parsed.model, parsed.api_base, resolve_api_key(parsed))
    lm = build_lm(name, parsed, allow_user_code=allow_user_code)
    try:
        with dspy.context(lm=lm):
            outputs = lm(PROBE_PROMPT, max_tokens=8) if spec.get("kind") == "litellm" else lm(PROBE_PROMPT)
    except Exception as e:  # noqa: BLE001 - any provider failure is a message for the user
        raise LMError(redact(f"LM {name!r} ({spec.get('model', spec.get('factory'))}) did not answer: "
                             f"{type(e).__name__}: {e}")) from e
    reply = outputs[0] if outputs else ""
    return reply["text"] if isinstance(reply, dict) else str(reply)
