"""Map a table's columns to the program's fields and build one ``dspy.Example`` per row.

Names match loosely (case, spaces, ``-`` and ``_`` are ignored) so that a file's ``Question``
column finds the program's ``question`` field without the user mapping it by hand. Building
checks the mapping before reading any row, then gathers every empty mapped cell into one message
instead of stopping at the first.
"""

from __future__ import annotations

import re

import dspy

from core.data.messages import MAX_SHOWN, quoted
from core.data.table import Table
from core.errors import DataError, shown

__all__ = ["auto_mapping", "build_examples", "normalize_name"]


def normalize_name(name: str) -> str:
    """Normalise a field/column name for matching: lower case, no spaces, ``-`` or ``_``."""
    return re.sub(r"[\s\-_]+", "", name.strip().lower())


def auto_mapping(fields: list[str], columns: list[str]) -> dict[str, str]:
    """Map each field to the first column with the same normalised name; unmatched fields are left out."""
    by_norm: dict[str, str] = {}
    for column in columns:
        by_norm.setdefault(normalize_name(column), column)
    mapping: dict[str, str] = {}
    for f in fields:
        column = by_norm.get(normalize_name(f))
        if column is not None:
            mapping[f] = column
    return mapping

def build_examples(
    table: Table, mapping: dict[str, str], input_fields: list[str], label_fields: list[str]
) -> list[dspy.Example]:
    """Build one ``dspy.Example`` per row with the input and label fields, from ``mapping`` (field -> column).

    Examples hold only ``input_fields + label_fields``; other mapping entries are ignored.
    """
    if not input_fields:
        raise DataError(
            "The program has no input fields; at least one input field is needed to build examples."
        )
    overlap = [f for f in input_fields if f in label_fields]
    if overlap:
        raise DataError(f"Field(s) {quoted(overlap)} are listed both as input and as label; use each once.")
    fields = list(dict.fromkeys([*input_fields, *label_fields]))
    unmapped = [f for f in fields if not mapping.get(f)]
    if unmapped:
        raise DataError(
            f"Field(s) {quoted(unmapped)} are not mapped to a column; map each to one of the columns: "
            f"{quoted(table.columns)}."
        )
    missing = [(f, mapping[f]) for f in fields if mapping[f] not in table.columns]
    if missing:
        detail = ", ".join(f"{shown(c)} (for field {shown(f)})" for f, c in missing)
        raise DataError(
            f"Mapped column(s) not found in the file: {detail}. Available columns: {quoted(table.columns)}."
        )
    empty: list[str] = []
    examples: list[dspy.Example] = []
    for i, row in enumerate(table.rows):
        values = {f: row[mapping[f]] for f in fields}
        for f in fields:
            if not values[f].strip():
                kind = "input" if f in input_fields else "label"
                empty.append(f"{table.where(i)} {kind} field {shown(f)} (column {shown(mapping[f])})")
        examples.append(dspy.Example(**values).with_inputs(*input_fields))
    if empty:
        more = f"; and {len(empty) - MAX_SHOWN} more" if len(empty) > MAX_SHOWN else ""
        raise DataError(
            f"{len(empty)} empty cell(s) in mapped columns: {'; '.join(empty[:MAX_SHOWN])}{more}. "
            "Fill them in or remove those rows."
        )
    return examples
