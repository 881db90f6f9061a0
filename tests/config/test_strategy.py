"""Tests for core.config.strategy: normalisation and every error."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from core.config.strategy import (
    MAX_STEPS,
    PRESETS,
    STEP_KEY_PATTERN,
    join_steps,
    last_step,
    normalize_strategy,
    parse_strategy,
    split_strategy,
    strategy_prefixes,
)
from core.errors import StrategyError

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


@pytest.mark.parametrize(
    ("text", "steps"),
    [
        ("p -> w -> p", ["p", "w", "p"]),
        ("P->w , p", ["p", "w", "p"]),
        ("p → w", ["p", "w"]),
        ("", []),  # the baseline's round label
        ("p -> -> w ->", ["p", "w"]),  # a draft being edited: empty steps are skipped, not refused
        ("p -> x", ["p", "x"]),  # unknown keys are kept (parse_strategy refuses them)
    ],
)
def test_split_strategy_gives_the_steps_as_written(text: str, steps: list[str]) -> None:
    assert split_strategy(text) == steps


def test_join_and_last_step() -> None:
    assert join_steps(["p", "w", "p"]) == "p -> w -> p" == normalize_strategy("p,w,p", KEYS)
    assert join_steps([]) == ""
    assert split_strategy(join_steps(["w", "p"])) == ["w", "p"]
    assert last_step("p -> w") == "w"
    assert last_step("p") == "p"
    assert last_step("") is None
    assert [last_step(label) for label in strategy_prefixes("p -> w")] == [None, "p", "w"]


ROOT = Path(__file__).resolve().parents[2]
OWNER = "core/config/strategy.py"
SIGNATURES = "core/programs/stages.py"  # a stage signature's "inputs -> outputs": another grammar, not a strategy
STR_METHODS = {"split", "rsplit", "join", "partition", "rpartition", "replace", "count", "index", "find",
               "startswith", "endswith"}


def separator_uses(source: str) -> list[int]:
    """Lines of ``source`` that split, join or search text on the strategy separator (a ``"->"`` literal,
    any spacing, with a ``str`` method) or use ``SEPARATOR`` itself."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in STR_METHODS:
            operands = [node.func.value, *node.args]
            if any(isinstance(o, ast.Constant) and isinstance(o.value, str) and o.value.strip() == "->"
                   for o in operands):
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and any(alias.name == "SEPARATOR" for alias in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.Attribute) and node.attr == "SEPARATOR":
            lines.append(node.lineno)
    return sorted(lines)


def test_the_separator_check_finds_every_form() -> None:
    source = (
        'a = s.split(" -> ")\n'
        'b = " -> ".join(steps)\n'
        'c = s.split("->")[-1]\n'
        'from core.config.strategy import SEPARATOR\n'
        'd = strategy.SEPARATOR.join(steps)\n'
        'e = s.replace(" -> ", "_")\n'
        'f = f"{x} -> {y}"\n'  # a message, not a split
        'g = split_strategy(s)\n'
    )
    assert separator_uses(source) == [1, 2, 3, 4, 5, 6]


def test_only_the_strategy_module_splits_or_joins_strategies() -> None:
    files = [*ROOT.glob("core/**/*.py"), *ROOT.glob("pages/**/*.py"), *ROOT.glob("bench/**/*.py"), ROOT / "app.py"]
    offenders = {}
    for path in files:
        name = path.relative_to(ROOT).as_posix()
        if name in (OWNER, SIGNATURES):
            continue
        lines = separator_uses(path.read_text(encoding="utf-8"))
        if lines:
            offenders[name] = lines
    assert len(files) > 50 and (ROOT / OWNER).is_file()
    assert not offenders, f"split or join strategies with core.config.strategy (split_strategy, join_steps, " \
                          f"last_step, strategy_prefixes), not by hand: {offenders}"


def test_huge_strategies_and_keys_give_short_messages() -> None:
    """A strategy or step key of 100,000 characters is named by its start and its length, never whole."""
    huge = "p -> " * 20_000 + "p"
    cases = [
        (huge, ["p"], f"has {20_001} steps"),
        ("p -> " + "x" * 100_000, ["p"], "Unknown step 'xxx"),
        ("p -> " + "X!" * 50_000, ["p"], "Step 2 of strategy 'p -> X!X!"),
        ("p -> q", ["p", "k" * 100_000], "allowed keys: p, kkk"),
    ]
    for text, keys, start in cases:
        with pytest.raises(StrategyError) as e:
            parse_strategy(text, keys)
        message = str(e.value)
        assert start in message and "characters)" in message and len(message) < 500, message[:600]
    with pytest.raises(StrategyError) as e:
        parse_strategy("p", ["p", "W" * 100_000])
    assert "'WWW" in str(e.value) and len(str(e.value)) < 500
