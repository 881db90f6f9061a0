"""How the data package's error messages list things: one rule for every message.

Messages name the bad values and the allowed ones; long lists are cut after ``MAX_SHOWN`` items so
that a file with thousands of bad rows still gives a one-line message.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["MAX_SHOWN", "quoted"]

MAX_SHOWN = 5
"""How many items a message lists before it says how many more there are."""


def quoted(items: Iterable[str]) -> str:
    """``'a', 'b', 'c'``: names as a message shows them."""
    return ", ".join(f"'{i}'" for i in items)
