"""A model's own chat template (Jinja, as Hugging Face ships it): reading it, rendering prompts, its end of turn.

The local models (``core.lms.local``) bring their prompt format with them: the ``chat_template`` of a Hugging
Face folder (``chat_template.jinja``, ``chat_template.json`` or ``tokenizer_config.json``, in the order
transformers reads them) or of a GGUF (``tokenizer.chat_template``). It is rendered as transformers renders it
(``apply_chat_template``): an ``ImmutableSandboxedEnvironment`` with ``trim_blocks``/``lstrip_blocks``, the
``loopcontrols`` extension, ``{% generation %}`` blocks, ``raise_exception``, a ``tojson`` that keeps non-ASCII
text, and ``messages``, ``add_generation_prompt``, ``bos_token`` and ``eos_token`` as variables.

Two differences, both so that a prompt is the same text in every call and in training (the run's call cache,
the engine's saved prefix states and the fine-tuning rows all depend on it):

- ``strftime_now`` gives a fixed date (26 Jul 2024, the default Llama 3's template uses without it);
- a BOS token the template writes at the very start is removed: llama.cpp adds BOS itself when tokenizing
  (``add_bos=True``), as it does for the shipped models' prompts.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from core.errors import LMError, shown

# The sentinels rendered to find where an assistant turn ends (``end_of_turn``).
_PROBE_USER = "Q-7f3e2a"
_PROBE_ANSWER = "A-9c41d0"
FIXED_DATE = datetime(2024, 7, 26)


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template with the special tokens it refers to."""

    source: str
    bos_token: str = ""
    eos_token: str = ""


# --- reading ------------------------------------------------------------------------------------------


def _token_text(value: Any) -> str:
    """A special token as tokenizer files write it: a string or an AddedToken dict (``{"content": ...}``)."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LMError(f"cannot read {path}: {e}") from e
    return data if isinstance(data, dict) else {}


def _template_text(value: Any) -> str | None:
    """A ``chat_template`` value: the text, or a list of named templates (the one named ``default``)."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        text = named.get("default")
        return text if isinstance(text, str) and text.strip() else None
    return None


def folder_template(folder: Path) -> ChatTemplate | None:
    """The chat template of a Hugging Face model folder, None when it has none."""
    config = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    source = None
    if (folder / "chat_template.jinja").is_file():
        source = _template_text((folder / "chat_template.jinja").read_text(encoding="utf-8"))
    if source is None and (folder / "chat_template.json").is_file():
        source = _template_text(_read_json(folder / "chat_template.json").get("chat_template"))
    if source is None:
        source = _template_text(config.get("chat_template"))
    if source is None:
        return None
    special = (_read_json(folder / "special_tokens_map.json")
               if (folder / "special_tokens_map.json").is_file() else {})
    bos = _token_text(config.get("bos_token")) or _token_text(special.get("bos_token"))
    eos = _token_text(config.get("eos_token")) or _token_text(special.get("eos_token"))
    return ChatTemplate(source, bos, eos)


# --- rendering ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _compiled(source: str) -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (transformers marks the assistant's tokens with it): the body."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = FIXED_DATE.strftime
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateError as e:
        raise LMError(f"the chat template does not compile: {e}") from e


def render(template: ChatTemplate, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """``messages`` as the template writes them, without a leading BOS token (llama.cpp adds it)."""
    import jinja2

    try:
        text = _compiled(template.source).render(
            messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt,
            bos_token=template.bos_token, eos_token=template.eos_token)
    except jinja2.exceptions.TemplateError as e:
        raise LMError(f"the model's chat template refused these messages: {e}") from e
    except Exception as e:  # noqa: BLE001 - a template is the model's code: any failure is a message
        raise LMError(f"the model's chat template failed: {type(e).__name__}: {e}") from e
    if template.bos_token and "bos_token" in template.source and text.startswith(template.bos_token):
        text = text[len(template.bos_token):]
    return text


@functools.lru_cache(maxsize=64)
def end_of_turn(template: ChatTemplate) -> str:
    """What closes an assistant turn: the text the template writes after an answer, up to the line's end
    (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``); the EOS token when the template writes nothing there."""
    messages = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_ANSWER}]
    text = render(template, messages, add_generation_prompt=False)
    at = text.rfind(_PROBE_ANSWER)
    if at < 0:
        raise LMError("the model's chat template does not write the assistant's answer: "
                      f"rendering a user and an assistant message gave {shown(text)}")
    marker = text[at + len(_PROBE_ANSWER):].split("\n", 1)[0].strip()
    return marker or template.eos_token


def stop_strings(template: ChatTemplate) -> list[str]:
    """Strings that end a generated answer: the end of turn, and the EOS token when it differs."""
    return list(dict.fromkeys(s for s in (end_of_turn(template), template.eos_token) if s))
