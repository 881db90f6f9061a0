"""Load a dataset file (uploaded bytes or a path) into a ``Table``.

Supported files (chosen by extension): ``.csv`` (delimiter detected among ``, ; tab |``),
``.tsv`` (tab), ``.jsonl``/``.ndjson`` (one JSON object per line) and ``.json`` (a list of
objects). Every cell becomes a string; numbers and booleans are converted, ``null`` becomes an
empty string, nested values (objects, lists) are rejected. Every failure raises ``DataError``
with a message that names what is wrong and what is allowed.

This module owns what every format shares: the size limit (checked before reading), the
extension -> format table and UTF-8 decoding; ``csv_file`` and ``json_file`` parse the text.
"""

from __future__ import annotations

from pathlib import Path

from core.data.csv_file import read_csv
from core.data.json_file import read_json, read_jsonl
from core.data.table import Table
from core.errors import DataError, shown

__all__ = ["ALLOWED_EXTENSIONS", "MAX_FILE_BYTES", "load_table", "load_table_from_path"]

MAX_FILE_BYTES = 20 * 1024 * 1024
"""Largest dataset file accepted (20 MiB); bigger files are rejected before parsing."""

ALLOWED_EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
}
"""File extension -> format."""


def _human_size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MiB ({n:,} bytes)"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB ({n:,} bytes)"
    return f"{n:,} bytes"


def _too_big(filename: str, size: int) -> DataError:
    return DataError(
        f"File {shown(filename)} is {_human_size(size)}; the limit is {_human_size(MAX_FILE_BYTES)}. "
        "Use a smaller sample of the data."
    )


def _format_for(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    fmt = ALLOWED_EXTENSIONS.get(suffix)
    if fmt is None:
        allowed = ", ".join(ALLOWED_EXTENSIONS)
        extension = f"extension {shown(suffix)}" if suffix else "no extension"
        raise DataError(f"File {shown(filename)} has {extension}; allowed file types are {allowed}.")
    return fmt


def _decode(data: bytes, filename: str) -> str:
    nul = data.find(b"\x00")
    if nul != -1:
        raise DataError(
            f"File {shown(filename)} contains a NUL byte at byte offset {nul}: it looks like a binary file "
            "(e.g. an Excel workbook) or UTF-16 text, not a text file. Save it as UTF-8 CSV, JSONL or JSON."
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        bad = data[e.start : e.start + 1].hex().upper()
        raise DataError(
            f"File {shown(filename)} is not valid UTF-8: byte 0x{bad} at byte offset {e.start} (line {line}) "
            "cannot be decoded. Save the file as UTF-8 (e.g. 'CSV UTF-8' in Excel) and upload it again."
        ) from e
    return text


def load_table(data: bytes, filename: str) -> Table:
    """Parse a dataset file's bytes; the format is chosen from ``filename``'s extension."""
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise DataError(f"Dataset {shown(filename)} must be given as bytes, not {type(data).__name__}.")
    if len(data) > MAX_FILE_BYTES:
        raise _too_big(filename, len(data))
    fmt = _format_for(filename)
    text = _decode(data, filename)
    if not text.strip():
        raise DataError(f"File {shown(filename)} is empty: it has no header and no rows.")
    if fmt == "csv":
        return read_csv(text, filename, tab=Path(filename).suffix.lower() == ".tsv")
    if fmt == "jsonl":
        return read_jsonl(text, filename)
    return read_json(text, filename)


def load_table_from_path(path: str | Path) -> Table:
    """Read and parse a dataset file from disk (size checked before reading)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"Dataset file {shown(str(p))} does not exist.")
    if not p.is_file():
        raise DataError(f"Dataset path {shown(str(p))} is not a file.")
    _format_for(p.name)
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise _too_big(p.name, size)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"Dataset file {shown(str(p))} cannot be read: {e.strerror or e}.") from e
    return load_table(data, p.name)
