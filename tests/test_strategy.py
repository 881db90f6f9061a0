"""Tests for core.strategy: normalisation and every error."""

from __future__ import annotations

import re

import pytest

from core.errors import StrategyError
from core.strategy import (
    MAX_STEPS,
    PRESETS,
    STEP_KEY_PATTERN,
    normalize_strategy,
    parse_strategy,
    strategy_prefixes,
)

KEYS = ["p", "w"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("p", "p"),
        ("p->w", "p -> w"),
        ("P -> W", "p -> w"),
        ("  p  ->   w ->p ", "p -> w -> p"),
        ("p → w → p", "p -> w -> p"),
        ("p→w", "p -> w"),
        ("p, w, p", "p -> w -> p"),
        ("p,w", "p -> w"),
        ("p -> w, p", "p -> w -> p"),
        ("p -> w -> p", "p -> w -> p"),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize_strategy(text, KEYS) == expected


def test_custom_keys() -> None:
    assert normalize_strategy("MIPRO -> gepa_2", ["mipro", "gepa_2"]) == "mipro -> gepa_2"
    assert parse_strategy("mipro, gepa_2", ("mipro", "gepa_2")) == ["mipro", "gepa_2"]


def test_parse() -> None:
    assert parse_strategy("p -> w -> p", iter(KEYS)) == ["p", "w", "p"]


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty(text: str) -> None:
    with pytest.raises(StrategyError, match="empty"):
        normalize_strategy(text, KEYS)


def test_unknown_key() -> None:
    with pytest.raises(StrategyError) as info:
        normalize_strategy("p -> x", KEYS)
    msg = str(info.value)
    assert "'x'" in msg and "step 2" in msg and "allowed keys: p, w" in msg


def test_too_many_steps() -> None:
    assert normalize_strategy(" -> ".join(["p"] * MAX_STEPS), KEYS).count("p") == MAX_STEPS
    with pytest.raises(StrategyError) as info:
        normalize_strategy(" -> ".join(["p"] * (MAX_STEPS + 1)), KEYS)
    assert f"{MAX_STEPS + 1} steps" in str(info.value) and f"at most {MAX_STEPS}" in str(info.value)


@pytest.mark.parametrize(("text", "step"), [("p -> -> w", 2), ("-> p", 1), ("p ->", 2), ("p,,w", 2)])
def test_empty_step(text: str, step: int) -> None:
    with pytest.raises(StrategyError) as info:
        normalize_strategy(text, KEYS)
    assert f"Step {step}" in str(info.value) and "empty" in str(info.value)


@pytest.mark.parametrize("text", ["p > w", "p w", "p!", "1p", "p - w", "p;w", "é"])
def test_bad_characters(text: str) -> None:
    with pytest.raises(StrategyError) as info:
        normalize_strategy(text, KEYS)
    assert "characters that are not allowed" in str(info.value)
    assert "'->'" in str(info.value)


def test_not_text() -> None:
    with pytest.raises(StrategyError, match="must be text"):
        normalize_strategy(None, KEYS)  # type: ignore[arg-type]


def test_allowed_keys_errors() -> None:
    with pytest.raises(StrategyError, match="No optimizer keys"):
        normalize_strategy("p", [])
    with pytest.raises(StrategyError, match="'P'.*invalid"):
        normalize_strategy("p", ["P"])


def test_step_key_pattern() -> None:
    for good in ["p", "w", "mipro", "gepa_2", "a1"]:
        assert re.fullmatch(STEP_KEY_PATTERN, good)
    for bad in ["", "P", "1a", "_a", "a-b", "a b"]:
        assert not re.fullmatch(STEP_KEY_PATTERN, bad)


def test_presets_are_normalised() -> None:
    assert set(PRESETS) == {"p", "w", "p -> w", "w -> p", "p -> w -> p"}
    for strategy, description in PRESETS.items():
        assert normalize_strategy(strategy, KEYS) == strategy
        assert description and "\n" not in description


def test_prefixes() -> None:
    assert strategy_prefixes("p -> w -> p") == ["", "p", "p -> w", "p -> w -> p"]
    assert strategy_prefixes("w") == ["", "w"]
    assert strategy_prefixes("P->w") == ["", "p", "p -> w"]
    with pytest.raises(StrategyError):
        strategy_prefixes("")
