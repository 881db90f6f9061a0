"""Strategy strings: parse, validate and normalise them into DSPy BetterTogether's exact form.

A strategy is a sequence of optimizer keys, e.g. ``"p -> w -> p"`` (prompt, then weights, then
prompt again). Users may write ``p->w``, ``P → W`` or ``p, w``; ``normalize_strategy`` returns the
form DSPy expects (keys joined by ``" -> "``).

This module is the only one that knows the separator: every other module splits a strategy with
``split_strategy``/``last_step``, joins steps with ``join_steps`` and lists round labels with
``strategy_prefixes`` (a test holds this).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from core.errors import StrategyError, shown

__all__ = [
    "MAX_STEPS",
    "PRESETS",
    "SEPARATOR",
    "STEP_KEY_PATTERN",
    "join_steps",
    "last_step",
    "normalize_strategy",
    "parse_strategy",
    "split_strategy",
    "strategy_prefixes",
]

MAX_STEPS = 8
"""Most steps a strategy may have."""

STEP_KEY_PATTERN = r"^[a-z][a-z0-9_]*$"
"""A step key: lowercase letters, digits and underscores, starting with a letter."""

SEPARATOR = " -> "
"""DSPy's step separator (``BetterTogether.STRAT_SEP``)."""

PRESETS: dict[str, str] = {
    "p": "Prompt optimization only.",
    "w": "Weight optimization (fine-tuning) only.",
    "p -> w": "Optimize prompts, then fine-tune weights on the improved program's traces.",
    "w -> p": "Fine-tune weights, then optimize prompts for the fine-tuned models.",
    "p -> w -> p": "Prompts, then weights, then prompts again (the BetterTogether default).",
}
"""Common strategies with a one-line description."""

_SPLIT = re.compile(r"->|→|,")
_KEY = re.compile(STEP_KEY_PATTERN)
_HOW = "write steps separated by '->' (or '→' or ','), e.g. 'p -> w'"


def _steps(text: str) -> list[str]:
    """Split and lower-case steps, checking syntax only (no allowed-key check)."""
    if not isinstance(text, str):
        raise StrategyError(f"A strategy must be text like 'p -> w', got {type(text).__name__}.")
    if not text.strip():
        raise StrategyError(f"The strategy is empty; {_HOW}.")
    raw = [s.strip() for s in _SPLIT.split(text)]
    for i, step in enumerate(raw, start=1):
        if not step:
            raise StrategyError(
                f"Step {i} of strategy {shown(text.strip())} is empty (two separators in a row, or one at the "
                f"start or end); {_HOW}."
            )
        if not _KEY.fullmatch(step.lower()):
            raise StrategyError(
                f"Step {i} of strategy {shown(text.strip())} is {shown(step)}, which has characters that are not "
                "allowed: a step key is lowercase letters, digits and underscores starting with a letter; "
                f"{_HOW}."
            )
    if len(raw) > MAX_STEPS:
        raise StrategyError(
            f"Strategy {shown(text.strip())} has {len(raw)} steps; at most {MAX_STEPS} steps are allowed."
        )
    return [s.lower() for s in raw]


def parse_strategy(text: str, allowed_keys: Iterable[str]) -> list[str]:
    """Return the strategy's steps as lowercase keys, checked against ``allowed_keys``."""
    allowed = list(dict.fromkeys(allowed_keys))
    if not allowed:
        raise StrategyError("No optimizer keys are configured, so no strategy can run; add an optimizer.")
    bad_keys = [k for k in allowed if not isinstance(k, str) or not _KEY.fullmatch(k)]
    if bad_keys:
        raise StrategyError(
            f"Optimizer key(s) {shown(bad_keys)} are invalid; a key is lowercase letters, "
            "digits and underscores starting with a letter."
        )
    steps = _steps(text)
    for i, step in enumerate(steps, start=1):
        if step not in allowed:
            raise StrategyError(
                f"Unknown step {shown(step)} (step {i}) in strategy {shown(text.strip())}; allowed keys: "
                f"{shown(allowed, quotes=False, brackets=False)}."
            )
    return steps


def normalize_strategy(text: str, allowed_keys: Iterable[str]) -> str:
    """Return the strategy in DSPy's exact form, e.g. ``"P->w , p"`` -> ``"p -> w -> p"``."""
    return join_steps(parse_strategy(text, allowed_keys))


def split_strategy(text: str) -> list[str]:
    """The steps of a strategy or round label as written, lower-cased, without checks:
    ``"p -> w"`` -> ``["p", "w"]``, the baseline's label ``""`` -> ``[]``. Empty steps are skipped and
    unknown ones kept (a draft being edited may hold them); ``parse_strategy`` checks them."""
    return [step.lower() for step in (part.strip() for part in _SPLIT.split(text)) if step]


def join_steps(steps: Iterable[str]) -> str:
    """The strategy (or round label) of ``steps`` in DSPy's form: ``["p", "w"]`` -> ``"p -> w"``."""
    return SEPARATOR.join(steps)


def last_step(label: str) -> str | None:
    """The key of the step that produced a round: ``"p -> w"`` -> ``"w"``; None for the baseline (``""``)."""
    steps = split_strategy(label)
    return steps[-1] if steps else None


def strategy_prefixes(strategy: str) -> list[str]:
    """Round labels of DSPy's ``candidate_programs``: ``"p -> w"`` -> ``["", "p", "p -> w"]``."""
    steps = _steps(strategy)
    return [join_steps(steps[:i]) for i in range(len(steps) + 1)]
