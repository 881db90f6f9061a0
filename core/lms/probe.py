"""Test the connection to an LM: build it and make one tiny call (only when the user presses
**Test connection**: it sends the API key to the LM's endpoint)."""

from __future__ import annotations

import dspy
from pydantic import SecretStr

from core.config.schema import EmbeddedLMSpec, FactoryLMSpec, LiteLLMSpec, LocalLMSpec
from core.errors import LMError, shown
from core.lms.hosted import check_endpoint
from core.lms.registry import build_lm, resolve_api_key
from core.store.secrets import redact

PROBE_PROMPT = "Reply with the single word: ok"


def check_connection(name: str, spec: EmbeddedLMSpec | LiteLLMSpec | FactoryLMSpec | LocalLMSpec,
                     api_key: str | None = None, *,
                     allow_user_code: bool = False) -> str:
    """The LM's reply to a one-word prompt; ``LMError`` with the provider's message when it fails.

    ``api_key``, a key typed in this session, joins a LiteLLM spec as a ``SecretStr`` on a copy (the
    caller's spec is left as it was). A self-hosted endpoint (``api_base``) is first asked for its
    model list, which names an unreachable server, a rejected key or an unknown model plainly. A
    factory of user code runs only with ``allow_user_code`` (the configuration's opt-in).
    """
    if not isinstance(spec, EmbeddedLMSpec | LiteLLMSpec | FactoryLMSpec | LocalLMSpec):
        raise TypeError(f"LM {shown(name)}: check_connection takes a typed LM spec, got {type(spec).__name__}")
    if api_key and isinstance(spec, LiteLLMSpec):
        spec = spec.model_copy(update={"api_key": SecretStr(api_key)})
    if isinstance(spec, LiteLLMSpec) and spec.api_base:
        check_endpoint(spec.model, spec.api_base, resolve_api_key(spec))
    lm = build_lm(name, spec, allow_user_code=allow_user_code)
    model = spec.factory if isinstance(spec, FactoryLMSpec) else spec.path if isinstance(spec, LocalLMSpec) else spec.model
    try:
        with dspy.context(lm=lm):
            outputs = lm(PROBE_PROMPT, max_tokens=8) if isinstance(spec, LiteLLMSpec) else lm(PROBE_PROMPT)
    except Exception as e:  # noqa: BLE001 - any provider failure is a message for the user
        raise LMError(redact(f"LM {shown(name)} ({model}) did not answer: {type(e).__name__}: {e}",
                             extra=[api_key or ""])) from e
    reply = outputs[0] if outputs else ""
    return reply["text"] if isinstance(reply, dict) else str(reply)
