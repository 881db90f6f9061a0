"""The project's own error types.

Every message is meant for a user: it names what was wrong and what is allowed.
Pages catch ``StudioError`` and show it with ``st.error``; the CLI prints it on one line.
A message shows the bad value it got with ``shown``, so a huge value gives a short message.
"""

from __future__ import annotations

__all__ = [
    "SHOWN_LIMIT",
    "ConfigError",
    "DataError",
    "ExportError",
    "LMError",
    "MetricError",
    "ProgramError",
    "RunCancelled",
    "StepCancelled",
    "StoreError",
    "StrategyError",
    "StudioError",
    "shown",
]

SHOWN_LIMIT = 80
"""About how many characters ``shown`` gives a value before it cuts it."""

_ELLIPSIS = "\u2026"


def shown(value: object, limit: int = SHOWN_LIMIT, *, quotes: bool = True, brackets: bool = True) -> str:
    """A value as an error message shows it: its ``repr``, cut to about ``limit`` characters.

    A value whose ``repr`` fits is shown whole, exactly as ``{value!r}`` would show it. A longer
    text ends in an ellipsis inside its quotes and says its length (``'aaaa…' (100000 characters)``);
    a longer list, tuple, set or dict shows the first items that fit, each shortened the same way, and
    says how many there are (``['a', 'b', …] (5000 items)``); any other value is cut after ``limit``
    characters of its ``repr``.

    Lists of names read better without the punctuation: ``quotes=False`` shows texts without their
    quotes, ``brackets=False`` shows a collection as its items joined by ``", "`` (a dict: its keys).
    ``shown(["p", "w"], quotes=False, brackets=False)`` is ``p, w``, as ``", ".join`` gives it.
    """
    return _shown(value, max(limit, 8), quotes, brackets)[0]


def _shown(value: object, limit: int, quotes: bool, brackets: bool) -> tuple[str, bool]:
    """``shown``'s text and whether it shows the whole value."""
    if isinstance(value, str | bytes):
        return _shown_text(value, limit, quotes)
    if isinstance(value, list | tuple | set | frozenset | dict):
        return _shown_items(value, limit, quotes, brackets)
    try:
        text = repr(value)
    except Exception:  # e.g. an int with more digits than Python turns into text
        return f"<{type(value).__name__} that cannot be shown>", False
    if len(text) <= limit:
        return text, True
    return f"{text[:limit]}{_ELLIPSIS} ({len(text)} characters)", False


def _shown_text(value: str | bytes, limit: int, quotes: bool) -> tuple[str, bool]:
    whole = len(value) <= limit and len(repr(value)) - 2 <= limit  # the quotes do not count
    cut = value if whole else value[: limit - 1]  # the ellipsis takes the last place
    if not whole and (size := len(repr(cut)) - 2) > limit - 1:  # escapes (\n, \x00...) take several places
        cut = cut[: max(1, len(cut) * (limit - 1) // size)]
        while len(cut) > 1 and len(repr(cut)) - 2 > limit - 1:
            cut = cut[:-1]
    text = repr(cut)
    if not quotes and isinstance(cut, str):
        text = cut if cut.isprintable() else text[1:-1]
        return (text, True) if whole else (f"{text}{_ELLIPSIS} ({len(value)} characters)", False)
    if whole:
        return text, True
    unit = "characters" if isinstance(value, str) else "bytes"
    return f"{text[:-1]}{_ELLIPSIS}{text[-1]} ({len(value)} {unit})", False


def _shown_items(value: list | tuple | set | frozenset | dict, limit: int, quotes: bool,
                 brackets: bool) -> tuple[str, bool]:
    marks = "" if not brackets else "[]" if isinstance(value, list) else "()" if isinstance(value, tuple) else "{}"
    opening, closing = marks[:1], marks[1:]
    count = "1 item" if len(value) == 1 else f"{len(value)} items"
    if limit < 24:  # deep inside another value: the count alone
        return f"{opening}{_ELLIPSIS}{closing} ({count})", not value
    pairs = isinstance(value, dict) and brackets
    parts: list[str] = []
    whole = True
    size = 0
    for item in value.items() if isinstance(value, dict) and pairs else value:
        room = limit - size - 2  # the first item may take the whole limit, later ones what is left
        part, part_whole = _shown_item(item, max(room, 8), quotes, pairs)
        if not part_whole and len(part) > room >= 32:  # cut, it says its length: leave room for that
            part, part_whole = _shown_item(item, room - 24, quotes, pairs)
        if parts and size + len(part) > limit:
            break
        parts.append(part)
        whole = whole and part_whole
        size += len(part) + 2
    if len(parts) == len(value):
        if whole and quotes and brackets:
            return repr(value), True  # every item fits whole: exactly repr
        return f"{opening}{', '.join(parts)}{closing}", whole
    return f"{opening}{', '.join(parts)}, {_ELLIPSIS}{closing} ({count})", False


def _shown_item(item: object, limit: int, quotes: bool, pair: bool) -> tuple[str, bool]:
    if not pair:
        return _shown(item, limit, quotes, True)
    key, value = item  # a dict's (key, value)
    (key_text, key_whole), (value_text, value_whole) = (_shown(key, limit // 2, quotes, True),
                                                        _shown(value, limit // 2, quotes, True))
    return f"{key_text}: {value_text}", key_whole and value_whole


class StudioError(Exception):
    """Base class of every error a user may see."""


class ConfigError(StudioError):
    """The run configuration is invalid."""


class DataError(StudioError):
    """A dataset file cannot be loaded, mapped or split."""


class ProgramError(StudioError):
    """A program (template, composed pipeline or user file) cannot be built."""


class StrategyError(StudioError):
    """A strategy string or step setting is invalid."""


class LMError(StudioError):
    """An LM cannot be built, reached or fine-tuned."""


class MetricError(StudioError):
    """An unknown metric or metric settings that do not fit the program."""


class StoreError(StudioError):
    """The run store cannot be read or written."""


class ExportError(StudioError):
    """A bundle cannot be written or loaded."""


class RunCancelled(BaseException):
    """Raised inside LM calls when the user cancels a run.

    A BaseException on purpose: it passes DSPy's ``except Exception`` layers so the
    current step stops at once. The runner converts it back into an ordinary
    ``StepCancelled`` exception at the step boundary.
    """


class StepCancelled(StudioError):
    """The current step was cancelled by the user; the best program so far is kept."""
