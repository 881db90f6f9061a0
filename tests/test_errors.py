"""``shown``: how every error message shows a bad value (whole when short, cut with its length when long)."""

from __future__ import annotations

import pytest

from core.errors import SHOWN_LIMIT, shown

ELLIPSIS = "\u2026"


@pytest.mark.parametrize("value", ["p -> w", "", "it's", 'say "hi"', "a\nb", b"bytes", 3, 2.5, None, True,
                                   ["p", "w"], ("a",), {"k": 1}, {1, 2}, set(), [], {}, [[1, 2], {"a": None}],
                                   "x" * SHOWN_LIMIT])
def test_a_short_value_is_shown_as_repr_shows_it(value: object) -> None:
    assert shown(value) == repr(value)


def test_a_long_text_is_cut_with_an_ellipsis_and_its_length() -> None:
    text = shown("a" * 100_000)
    assert text.startswith("'aaaa") and text.endswith(f"a{ELLIPSIS}' (100000 characters)")
    assert len(text) < SHOWN_LIMIT + 30
    assert shown("a" * (SHOWN_LIMIT + 1)).endswith(f"{ELLIPSIS}' ({SHOWN_LIMIT + 1} characters)")


def test_the_cut_counts_escapes_and_keeps_one_line() -> None:
    for value in ("\x00" * 5000, "line\n" * 5000, "\U0001f600" * 5000, "'\"" * 5000):
        text = shown(value)
        assert "\n" not in text and len(text) < SHOWN_LIMIT + 30, text
        assert text.endswith(f" ({len(value)} characters)")
    assert shown(b"x" * 500).endswith(f"{ELLIPSIS}' (500 bytes)")


def test_the_limit_can_be_chosen() -> None:
    assert shown("abcdefghijklmnopqrstuvwxyz", 10) == f"'abcdefghi{ELLIPSIS}' (26 characters)"
    assert shown("abcdefghijklmnopqrstuvwxyz", 10, quotes=False) == f"abcdefghi{ELLIPSIS} (26 characters)"
    assert shown("abcdefghij", 10) == "'abcdefghij'"


def test_a_long_list_shows_its_first_items_and_how_many_there_are() -> None:
    text = shown([f"column_{i}" for i in range(10_000)])
    assert text.startswith("['column_0', 'column_1', ") and text.endswith(f", {ELLIPSIS}] (10000 items)")
    assert len(text) < 2 * SHOWN_LIMIT
    assert shown(list(range(1000))).endswith(f"{ELLIPSIS}] (1000 items)")
    assert shown(tuple(range(1000))).startswith("(0, 1, 2")
    assert shown(set(range(1000))).endswith(f"{ELLIPSIS}}} (1000 items)")


def test_huge_items_are_cut_inside_a_list_or_dict() -> None:
    text = shown(["x" * 100_000, "y"])
    assert "(100000 characters)" in text and len(text) < 2 * SHOWN_LIMIT
    text = shown({"k" * 100_000: "v" * 100_000})
    assert text.startswith("{'kkk") and text.count("(100000 characters)") == 2 and len(text) < 2 * SHOWN_LIMIT
    text = shown({f"key{i}": i for i in range(5000)})
    assert text.startswith("{'key0': 0, 'key1': 1") and text.endswith("(5000 items)")


def test_nested_and_self_containing_values_stay_bounded() -> None:
    assert len(shown([[i] * 1000 for i in range(1000)])) < 2 * SHOWN_LIMIT
    loop: list = []
    loop.append(loop)
    assert len(shown(loop)) < 2 * SHOWN_LIMIT


def test_names_without_quotes_or_brackets_read_as_a_join() -> None:
    assert shown(["p", "w"], quotes=False, brackets=False) == "p, w" == ", ".join(["p", "w"])
    assert shown({"large": 1, "small": 2}, quotes=False, brackets=False) == "large, small"
    assert shown(["a", "b"], brackets=False) == "'a', 'b'"
    assert shown("name", quotes=False) == "name"
    long = shown(["k" * 100_000, "p"], quotes=False, brackets=False)
    assert long.startswith("kkk") and "(100000 characters)" in long and "'" not in long
    many = shown([f"lm{i}" for i in range(5000)], quotes=False, brackets=False)
    assert many.startswith("lm0, lm1, ") and many.endswith(f", {ELLIPSIS} (5000 items)")


def test_any_other_value_is_cut_and_a_value_without_text_is_named() -> None:
    class Big:
        def __repr__(self) -> str:
            return "B" * 10_000

    assert shown(Big()) == "B" * SHOWN_LIMIT + f"{ELLIPSIS} (10000 characters)"
    huge = 10 ** 5000  # more digits than Python turns into text
    assert shown(huge) == "<int that cannot be shown>"
