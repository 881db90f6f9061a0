"""The ``Table`` record: what a dataset file becomes once read, whatever its format.

Every cell is a string, so mapping and splitting never deal with the file's types; each row keeps
where it came from in the file, so an error about a row can point the user at the right line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Table"]


@dataclass(frozen=True)
class Table:
    """A loaded dataset: column names in file order and one ``{column: text}`` dict per row.

    ``row_lines`` holds, for each row, the 1-based line of the file where it starts (CSV and
    JSONL) or its 1-based position in the list (JSON); messages use it to point at the row.
    """

    columns: tuple[str, ...]
    rows: tuple[dict[str, str], ...]
    format: str
    delimiter: str | None = None
    row_lines: tuple[int, ...] = field(default=(), repr=False)

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, index: int) -> str:
        """Human description of row ``index`` (0-based), e.g. ``"row 3 (line 4)"``."""
        label = f"row {index + 1}"
        if index < len(self.row_lines) and self.format in ("csv", "jsonl"):
            label += f" (line {self.row_lines[index]})"
        return label
