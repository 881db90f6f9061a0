"""Secrets stay out of text: the guard on key names, and redaction of key-like values.

Two layers, because a secret reaches text in two ways:

* by name: a config field called ``api_key`` or ``token`` with a value (``find_secrets``; the store
  refuses such configs outright);
* by value: a provider error that quotes the key, an ``api_base`` like ``https://user:pass@host``,
  a traceback that prints a request. ``redact`` replaces key-like strings (``sk-...`` and other
  well-known prefixes, ``Bearer ...``, URL credentials) and the values of this machine's secret
  environment variables (any variable named like a secret, plus those a config names through
  ``api_key_env``, plus keys typed in this session) with ``[REDACTED]``.

``redact`` is applied to every stored message, event, run error and round error (``core.store.db``),
to log records (``RedactingFilter``, installed by the app and the CLI), to exports and to config
downloads.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

REDACTED = "[REDACTED]"
MIN_SECRET_CHARS = 8  # shorter environment values ("1", "true") are not treated as secrets

_SECRET_LAST_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "passphrase", "credentials"}
# "..._key" names that are structure, not secrets ("step_key" holds a strategy step like "p").
_STRUCTURAL_KEY_QUALIFIERS = frozenset(
    {"step", "strategy", "sort", "primary", "foreign", "group", "join", "lookup", "cache"}
    | {"column", "field", "label", "input", "output", "answer", "question", "example", "metric"}
)

# Well-known key shapes: OpenAI/Anthropic/OpenRouter (sk-...), Groq (gsk_), Hugging Face (hf_),
# Google (AIza...), GitHub (ghp_/gho_/github_pat_), Slack (xox?-), AWS access key ids, JWTs.
_KEY_PATTERNS = [
    r"\bsk-[A-Za-z0-9_\-]{8,}",
    r"\bgsk_[A-Za-z0-9]{8,}",
    r"\bhf_[A-Za-z0-9]{8,}",
    r"\bAIza[0-9A-Za-z_\-]{20,}",
    r"\b(?:ghp|gho|ghs|ghu)_[A-Za-z0-9]{16,}",
    r"\bgithub_pat_[A-Za-z0-9_]{16,}",
    r"\bxox[abprs]-[A-Za-z0-9\-]{8,}",
    r"\bAKIA[0-9A-Z]{16}\b",
    r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
]
_KEY_RE = re.compile("|".join(_KEY_PATTERNS))
# An Authorization value: "Bearer <token>" / "Basic <base64>" where the token has a digit (prose does not).
_BEARER_RE = re.compile(r"\b([Bb]earer|Basic)\s+(?=[A-Za-z._~+/=\-]*[0-9])[A-Za-z0-9._~+/=\-]{8,}")
_URL_CREDENTIALS_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/@:]+(?::[^\s/@]*)?@")
_KEY_PARAM_RE = re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access_token|password)=)[^&\s#]+")

_extra_lock = threading.Lock()
_extra_values: set[str] = set()
_extra_env_names: set[str] = set()


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


# --- redaction of values ---------------------------------------------------------------------------


def register_secret(value: str | None) -> None:
    """Redact ``value`` (a key typed in this session) from all text from now on."""
    if value and len(value) >= MIN_SECRET_CHARS:
        with _extra_lock:
            _extra_values.add(value)


def register_key_env(name: str | None) -> None:
    """Treat the value of environment variable ``name`` (a config's ``api_key_env``) as a secret."""
    if name:
        with _extra_lock:
            _extra_env_names.add(name)


def register_config_secrets(config: Any) -> None:
    """Register the key variables and typed keys of a config's LMs (a dict or a ``RunConfig``)."""
    lms = config.get("lms", {}) if isinstance(config, Mapping) else getattr(config, "lms", {})
    for spec in (lms or {}).values():
        get = spec.get if isinstance(spec, Mapping) else (lambda k, s=spec: getattr(s, k, None))
        register_key_env(get("api_key_env"))
        key = get("api_key")
        register_secret(key.get_secret_value() if hasattr(key, "get_secret_value") else key)


def secret_values() -> list[str]:
    """This machine's secret values, longest first: secret-named environment variables, the
    variables configs named, and the keys typed in this session."""
    with _extra_lock:
        values = set(_extra_values)
        names = set(_extra_env_names)
    for name, value in os.environ.items():
        if name in names or is_secret_name(name):
            if value and len(value) >= MIN_SECRET_CHARS:
                values.add(value)
    return sorted(values, key=len, reverse=True)


def redact(text: Any, extra: Iterable[str] = ()) -> Any:
    """``text`` with key-like strings replaced by ``[REDACTED]``; non-strings are returned as is."""
    if not isinstance(text, str) or not text:
        return text
    for value in [*(v for v in extra if v and len(v) >= MIN_SECRET_CHARS), *secret_values()]:
        if value in text:
            text = text.replace(value, REDACTED)
    text = _URL_CREDENTIALS_RE.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    text = _KEY_PARAM_RE.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    text = _BEARER_RE.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _KEY_RE.sub(REDACTED, text)


def redact_value(value: Any) -> Any:
    """A copy of a JSON-like value with every string redacted (keys included)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {redact(k) if isinstance(k, str) else k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message (arguments merged) and exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is logged as is
            return True
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_log_redaction() -> None:
    """Redact every log record: at creation (a record factory, so records of every logger and every
    handler added later are covered) and on the root logger's current handlers."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    global _factory_installed
    if not _factory_installed:
        _factory_installed = True
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            _FILTER.filter(record)
            return record

        logging.setLogRecordFactory(factory)


_factory_installed = False
_FILTER = RedactingFilter()
