"""Read CSV and TSV text into a ``Table``.

The delimiter of a ``.csv`` file is detected among ``, ; tab |`` (spreadsheets export any of them,
depending on the locale): the standard sniffer's choice is kept when it cuts the first records into
rows of one width with at least as many columns as any other delimiter gives; otherwise the
delimiter that gives the most columns of one width wins. ``.tsv`` files are always tab-separated.
Blank records are skipped; a row of a different width raises ``DataError`` naming its line, the
header and the delimiter used.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

from core.data.messages import MAX_SHOWN
from core.data.table import Table
from core.errors import DataError, shown

__all__ = ["CSV_DELIMITERS", "read_csv"]

CSV_DELIMITERS = ",;\t|"
"""Delimiters recognised in CSV files (the sniffer is restricted to these)."""

_SNIFF_BYTES = 64 * 1024
_DELIMITER_NAMES = {",": "',' (comma)", ";": "';' (semicolon)", "\t": "tab", "|": "'|' (pipe)"}


def _check_names(names: Sequence[str], filename: str, what: str) -> None:
    seen: dict[str, int] = {}
    dupes: list[str] = []
    for i, name in enumerate(names, start=1):
        if not name:
            raise DataError(f"File {shown(filename)}: {what} {i} has an empty name. Give every column a name.")
        if name in seen:
            dupes.append(f"{shown(name)} (columns {seen[name]} and {i})")
        else:
            seen[name] = i
    if dupes:
        more = f", and {len(dupes) - MAX_SHOWN} more" if len(dupes) > MAX_SHOWN else ""
        raise DataError(
            f"File {shown(filename)} has duplicate column names: {', '.join(dupes[:MAX_SHOWN])}{more}. "
            "Column names must be unique."
        )


def _parse_csv_records(text: str, delimiter: str) -> Iterable[tuple[int, list[str]]]:
    """Yield ``(start_line, cells)`` for each non-blank CSV record."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quotechar='"', doublequote=True)
    start = 1
    for record in reader:
        line = start
        start = reader.line_num + 1
        if not record or all(not c.strip() for c in record):
            continue
        yield line, record


def _consistent(text: str, delimiter: str, limit: int = 50) -> int:
    """Number of columns if the first ``limit`` records all have the header's width, else 0."""
    width = 0
    try:
        for i, (_, record) in enumerate(_parse_csv_records(text, delimiter)):
            if i == 0:
                width = len(record)
            elif len(record) != width:
                return 0
            if i >= limit:
                break
    except csv.Error:
        return 0
    return width


def _detect_delimiter(text: str) -> str:
    sample = text[:_SNIFF_BYTES]
    if len(text) > _SNIFF_BYTES and "\n" in sample:
        sample = sample[: sample.rfind("\n") + 1]
    try:
        sniffed = csv.Sniffer().sniff(sample, delimiters=CSV_DELIMITERS).delimiter
    except csv.Error:
        sniffed = None
    widths = {d: _consistent(sample, d) for d in CSV_DELIMITERS}
    if sniffed is not None and widths.get(sniffed, 0) >= max(widths.values()) and widths[sniffed] > 0:
        return sniffed
    best = max(CSV_DELIMITERS, key=lambda d: (widths[d], -CSV_DELIMITERS.index(d)))
    if widths[best] > 1:
        return best
    return sniffed or ","


def read_csv(text: str, filename: str, tab: bool) -> Table:
    """Parse CSV text (tab-separated when ``tab``) whose first record is the header."""
    delimiter = "\t" if tab else _detect_delimiter(text)
    dname = _DELIMITER_NAMES[delimiter]
    records = _parse_csv_records(text, delimiter)
    try:
        first = next(records, None)
        if first is None:
            raise DataError(f"File {shown(filename)} is empty: it has no header and no rows.")
        columns = tuple(c.strip() for c in first[1])
        _check_names(columns, filename, "header column")
        rows: list[dict[str, str]] = []
        lines: list[int] = []
        for line, record in records:
            if len(record) > len(columns) and not any(c.strip() for c in record[len(columns) :]):
                record = record[: len(columns)]
            if len(record) != len(columns):
                raise DataError(
                    f"File {shown(filename)}, line {line}: expected {len(columns)} columns (like the header: "
                    f"{shown(columns, quotes=False, brackets=False)}) but got {len(record)}, using delimiter {dname}. Quote values "
                    'that contain the delimiter or line breaks with double quotes ("...").'
                )
            rows.append({c: v.strip() for c, v in zip(columns, record, strict=True)})
            lines.append(line)
    except csv.Error as e:
        raise DataError(f"File {shown(filename)} is not a readable CSV file: {e}.") from e
    if not rows:
        raise DataError(
            f"File {shown(filename)} has a header ({shown(columns, quotes=False, brackets=False)}) but no data rows. "
            "Add at least one row below the header."
        )
    return Table(columns, tuple(rows), "csv", delimiter, tuple(lines))
