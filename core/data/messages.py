"""How the data package's error messages list things: one rule for every message.

Messages name the bad values and the allowed ones, each shown by ``core.errors.shown``; long lists
are cut (after ``MAX_SHOWN`` items, or at ``shown``'s bound for names) so that a file with
thousands of bad rows or columns still gives a short one-line message.
"""

from __future__ import annotations

from collections.abc import Iterable

from core.errors import SHOWN_LIMIT, shown

__all__ = ["MAX_SHOWN", "quoted"]

MAX_SHOWN = 5
"""How many items a message lists before it says how many more there are."""


def quoted(items: Iterable[str]) -> str:
    """``'a', 'b', 'c'``: names as a message shows them; a long list or name is cut and says its length.

    A list gets twice ``shown``'s usual room: it often names the allowed values (a file's columns)."""
    return shown(list(items), 2 * SHOWN_LIMIT, brackets=False)
