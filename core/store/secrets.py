"""The secrets guard: key names that hold secrets never reach the store."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

_SECRET_LAST_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "passphrase", "credentials"}
# "..._key" names that are structure, not secrets ("step_key" holds a strategy step like "p").
_STRUCTURAL_KEY_QUALIFIERS = frozenset(
    {"step", "strategy", "sort", "primary", "foreign", "group", "join", "lookup", "cache"}
    | {"column", "field", "label", "input", "output", "answer", "question", "example", "metric"}
)


def _words(name: str) -> list[str]:
    """``"openaiApiKey"`` / ``"OPENAI_API_KEY"`` / ``"api-key"`` -> ``["openai", "api", "key"]``."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [word for word in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if word]


def is_secret_name(name: str) -> bool:
    """True for key names like ``api_key``, ``OPENAI_API_KEY``, ``key``, ``hf_token``,
    ``client_secret``, ``password``.

    ``max_tokens``, ``tokenizer``, ``step_key``/``sort_key`` (structure) and ``api_key_env``
    (the *name* of an environment variable) are not secrets.
    """
    words = _words(name)
    if not words or words[-1] not in _SECRET_LAST_WORDS:
        return False
    return not (words[-1] == "key" and len(words) > 1 and words[-2] in _STRUCTURAL_KEY_QUALIFIERS)


def find_secrets(value: Any, path: str = "config") -> list[str]:
    """Key paths (``config.lms.main.api_key``) whose name looks secret and whose value is a
    non-empty string."""
    found: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            item_path = f"{path}.{key}"
            if isinstance(item, str) and item.strip() and is_secret_name(str(key)):
                found.append(item_path)
            else:
                found.extend(find_secrets(item, item_path))
    elif isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            found.extend(find_secrets(item, f"{path}[{position}]"))
    return found
