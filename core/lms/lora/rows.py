"""Training rows -> token ids: the chat rows rendered with the model's own template and tokenized by llama.cpp's
tokenizer of the shipped GGUF, cut to ``max_length`` keeping the answer (the loss covers the answer only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import LMError
from core.lms import catalog

# --- rows -> tokens -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedRow:
    """One training row as token ids: the prompt and the answer (the loss covers the answer only)."""

    prompt: list[int]
    answer: list[int]
    truncated: bool = False
    cut: int = 0
    """Tokens the row lost to ``max_length`` (prompt tokens from the left, answer tokens from the end)."""


class Tokenizer:
    """llama.cpp's tokenizer of the shipped GGUF (vocab only), as the engine tokenizes prompts."""

    def __init__(self, key: str) -> None:
        import llama_cpp

        from core.lms.native_log import route_native_logs

        route_native_logs()  # its load chatter: the "llama.cpp" logger (a run's log file), not the console
        self.key = key
        self._llama = llama_cpp.Llama(model_path=str(catalog.gguf_path(key)), vocab_only=True, verbose=False)
        self.bos = int(self._llama.token_bos())

    def prompt(self, text: str) -> list[int]:
        """Tokens of a rendered prompt (BOS added when the model wants one)."""
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def answer(self, text: str) -> list[int]:
        """Tokens of an answer continuing a prompt (no BOS)."""
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))


def _row_messages(row: Any, index: int) -> list[dict]:
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages:
        raise LMError(
            f"training row {index} must be {{'messages': [...]}} (chat format); got {str(row)[:120]!r}"
        )
    if not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
        raise LMError(f"training row {index} must end with an assistant message (the target)")
    return messages


def encode_rows(
    key: str, rows: Sequence[dict], max_length: int, tokenizer: Tokenizer | None = None
) -> list[EncodedRow]:
    """Render and tokenize chat rows; truncate each to ``max_length`` keeping the answer.

    The prompt loses tokens from the left (after the BOS token, which is kept); an answer longer
    than ``max_length - 1`` tokens is cut at the end (it keeps at least one prompt token).
    """
    tokenizer = tokenizer or Tokenizer(key)
    end = catalog.end_of_turn(key)
    out = []
    for i, row in enumerate(rows):
        messages = _row_messages(row, i)
        try:
            prompt_text = catalog.render_prompt(key, messages[:-1], add_generation_prompt=True)
        except LMError as e:
            raise LMError(f"training row {i}: {e}") from e
        answer_text = messages[-1].get("content")
        if not isinstance(answer_text, str):
            raise LMError(f"training row {i}: the assistant message must have a str 'content'")
        prompt = tokenizer.prompt(prompt_text)
        answer = tokenizer.answer(answer_text + end)
        whole = len(prompt) + len(answer)
        truncated = False
        if len(answer) > max_length - 1:
            answer, truncated = answer[: max_length - 1], True
        room = max_length - len(answer)
        if len(prompt) > room:
            keep_bos = bool(prompt) and prompt[0] == tokenizer.bos
            head = prompt[:1] if keep_bos else []
            tail_len = room - len(head)
            prompt = head + (prompt[-tail_len:] if tail_len > 0 else [])
            truncated = True
        out.append(EncodedRow(prompt, answer, truncated, whole - len(prompt) - len(answer)))
    return out
