"""Load dataset files into a ``Table``, map columns to program fields, build examples, split.

Supported files (chosen by extension): ``.csv`` (delimiter detected among ``, ; tab |``),
``.tsv`` (tab), ``.jsonl``/``.ndjson`` (one JSON object per line) and ``.json`` (a list of
objects). Every cell becomes a string; numbers and booleans are converted, ``null`` becomes an
empty string, nested values (objects, lists) are rejected. Every failure raises ``DataError``
with a message that names what is wrong and what is allowed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from core.errors import DataError

__all__ = [
    "ALLOWED_EXTENSIONS",
    "CSV_DELIMITERS",
    "MAX_FILE_BYTES",
    "MIN_EXAMPLES",
    "MIN_TEST",
    "MIN_TRAIN",
    "MIN_VAL",
    "Split",
    "Table",
    "auto_mapping",
    "build_examples",
    "categorical_labels",
    "load_table",
    "load_table_from_path",
    "normalize_name",
    "split_examples",
]

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

CSV_DELIMITERS = ",;\t|"
"""Delimiters recognised in CSV files (the sniffer is restricted to these)."""

MIN_TRAIN = 2
MIN_VAL = 1
MIN_TEST = 1
MIN_EXAMPLES = MIN_TRAIN + MIN_VAL + MIN_TEST
"""Smallest dataset that can be split: 2 train + 1 validation + 1 test examples."""

_MAX_SHOWN = 5
_SNIFF_BYTES = 64 * 1024
_DELIMITER_NAMES = {",": "',' (comma)", ";": "';' (semicolon)", "\t": "tab", "|": "'|' (pipe)"}


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


@dataclass(frozen=True)
class Split:
    """A train/validation/test split of examples."""

    train: list[dspy.Example]
    val: list[dspy.Example]
    test: list[dspy.Example]

    @property
    def sizes(self) -> tuple[int, int, int]:
        """``(len(train), len(val), len(test))``."""
        return len(self.train), len(self.val), len(self.test)


# --------------------------------------------------------------------------- loading


def _human_size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MiB ({n:,} bytes)"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB ({n:,} bytes)"
    return f"{n:,} bytes"


def _too_big(filename: str, size: int) -> DataError:
    return DataError(
        f"File '{filename}' is {_human_size(size)}; the limit is {_human_size(MAX_FILE_BYTES)}. "
        "Use a smaller sample of the data."
    )


def _format_for(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    fmt = ALLOWED_EXTENSIONS.get(suffix)
    if fmt is None:
        allowed = ", ".join(ALLOWED_EXTENSIONS)
        shown = f"extension '{suffix}'" if suffix else "no extension"
        raise DataError(f"File '{filename}' has {shown}; allowed file types are {allowed}.")
    return fmt


def _decode(data: bytes, filename: str) -> str:
    nul = data.find(b"\x00")
    if nul != -1:
        raise DataError(
            f"File '{filename}' contains a NUL byte at byte offset {nul}: it looks like a binary file "
            "(e.g. an Excel workbook) or UTF-16 text, not a text file. Save it as UTF-8 CSV, JSONL or JSON."
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        bad = data[e.start : e.start + 1].hex().upper()
        raise DataError(
            f"File '{filename}' is not valid UTF-8: byte 0x{bad} at byte offset {e.start} (line {line}) "
            "cannot be decoded. Save the file as UTF-8 (e.g. 'CSV UTF-8' in Excel) and upload it again."
        ) from e
    return text


def _cell(value: Any, where: str, column: str, filename: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return value.strip()
    kind = _type_name(value)
    raise DataError(
        f"File '{filename}', {where}, column '{column}' holds {kind}; nested values are not supported. "
        "Allowed cell values are text, numbers, true/false and null."
    )


def _check_names(names: Sequence[str], filename: str, what: str) -> None:
    seen: dict[str, int] = {}
    dupes: list[str] = []
    for i, name in enumerate(names, start=1):
        if not name:
            raise DataError(f"File '{filename}': {what} {i} has an empty name. Give every column a name.")
        if name in seen:
            dupes.append(f"'{name}' (columns {seen[name]} and {i})")
        else:
            seen[name] = i
    if dupes:
        raise DataError(
            f"File '{filename}' has duplicate column names: {', '.join(dupes)}. Column names must be unique."
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


def _load_csv(text: str, filename: str, tab: bool) -> Table:
    delimiter = "\t" if tab else _detect_delimiter(text)
    dname = _DELIMITER_NAMES[delimiter]
    records = _parse_csv_records(text, delimiter)
    try:
        first = next(records, None)
        if first is None:
            raise DataError(f"File '{filename}' is empty: it has no header and no rows.")
        columns = tuple(c.strip() for c in first[1])
        _check_names(columns, filename, "header column")
        rows: list[dict[str, str]] = []
        lines: list[int] = []
        for line, record in records:
            if len(record) > len(columns) and not any(c.strip() for c in record[len(columns) :]):
                record = record[: len(columns)]
            if len(record) != len(columns):
                raise DataError(
                    f"File '{filename}', line {line}: expected {len(columns)} columns (like the header: "
                    f"{', '.join(columns)}) but got {len(record)}, using delimiter {dname}. Quote values "
                    'that contain the delimiter or line breaks with double quotes ("...").'
                )
            rows.append({c: v.strip() for c, v in zip(columns, record, strict=True)})
            lines.append(line)
    except csv.Error as e:
        raise DataError(f"File '{filename}' is not a readable CSV file: {e}.") from e
    if not rows:
        raise DataError(
            f"File '{filename}' has a header ({', '.join(columns)}) but no data rows. "
            "Add at least one row below the header."
        )
    return Table(columns, tuple(rows), "csv", delimiter, tuple(lines))


class _Obj(dict):
    """A JSON object that remembers keys it saw more than once."""

    duplicates: list[str]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> _Obj:
    obj = _Obj()
    obj.duplicates = []
    for k, v in pairs:
        if k in obj and k not in obj.duplicates:
            obj.duplicates.append(k)
        obj[k] = v
    return obj


def _type_name(value: Any) -> str:
    return {
        dict: "an object",
        _Obj: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }.get(type(value), "null" if value is None else type(value).__name__)


def _rows_from_objects(objs: list[tuple[int, Any]], filename: str, fmt: str) -> Table:
    where_word = "line" if fmt == "jsonl" else "item"
    columns: list[str] = []
    known: set[str] = set()
    for pos, obj in objs:
        if not isinstance(obj, dict):
            raise DataError(
                f"File '{filename}', {where_word} {pos} is {_type_name(obj)}; every row must be a JSON "
                'object like {"column": "value"}.'
            )
        dupes = getattr(obj, "duplicates", [])
        if dupes:
            raise DataError(
                f"File '{filename}', {where_word} {pos} has duplicate column names: "
                f"{', '.join(repr(d) for d in dupes)}. Column names must be unique."
            )
        for key in obj:
            name = key.strip()
            if not name:
                raise DataError(f"File '{filename}', {where_word} {pos} has a key with an empty name.")
            if name not in known:
                known.add(name)
                columns.append(name)
    if not columns:
        raise DataError(f"File '{filename}' has rows but none has any keys; rows need columns with values.")
    rows: list[dict[str, str]] = []
    for n, (pos, obj) in enumerate(objs, start=1):
        where = f"row {n} ({where_word} {pos})" if fmt == "jsonl" else f"row {n}"
        row = {c: "" for c in columns}
        stripped: dict[str, str] = {}
        for key, value in obj.items():
            name = key.strip()
            if name in stripped:
                raise DataError(
                    f"File '{filename}', {where} has duplicate column names: '{stripped[name]}' and '{key}'."
                )
            stripped[name] = key
            row[name] = _cell(value, where, name, filename)
        rows.append(row)
    return Table(tuple(columns), tuple(rows), fmt, None, tuple(pos for pos, _ in objs))


def _load_jsonl(text: str, filename: str) -> Table:
    objs: list[tuple[int, Any]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            objs.append((number, json.loads(line, object_pairs_hook=_pairs_hook)))
        except json.JSONDecodeError as e:
            raise DataError(
                f"File '{filename}', line {number} is not valid JSON: {e.msg} (column {e.colno}). "
                'Each line must hold one JSON object like {"column": "value"}.'
            ) from e
    if not objs:
        raise DataError(f"File '{filename}' is empty: it has no JSON lines.")
    return _rows_from_objects(objs, filename, "jsonl")


def _load_json(text: str, filename: str) -> Table:
    try:
        doc = json.loads(text, object_pairs_hook=_pairs_hook)
    except json.JSONDecodeError as e:
        hint = ""
        if e.msg == "Extra data":
            hint = " If the file holds one JSON object per line, rename it to .jsonl."
        raise DataError(
            f"File '{filename}' is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.{hint}"
        ) from e
    if isinstance(doc, dict):
        keys = list(doc)
        shown = ", ".join(f"'{k}'" for k in keys[:_MAX_SHOWN]) + (", ..." if len(keys) > _MAX_SHOWN else "")
        hint = 'Expected a list of objects like [{"column": "value"}, ...].'
        lists = [
            k for k, v in doc.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
        ]
        if lists:
            hint += f" The list under key '{lists[0]}' looks like the rows: save just that list."
        raise DataError(f"File '{filename}' holds a JSON object with keys {shown or '(none)'}. {hint}")
    if not isinstance(doc, list):
        raise DataError(
            f"File '{filename}' holds {_type_name(doc)}; expected a list of objects like "
            '[{"column": "value"}, ...].'
        )
    if not doc:
        raise DataError(f"File '{filename}' holds an empty list: it has no rows.")
    return _rows_from_objects(list(enumerate(doc, start=1)), filename, "json")


def load_table(data: bytes, filename: str) -> Table:
    """Parse a dataset file's bytes; the format is chosen from ``filename``'s extension."""
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise DataError(f"Dataset '{filename}' must be given as bytes, not {type(data).__name__}.")
    if len(data) > MAX_FILE_BYTES:
        raise _too_big(filename, len(data))
    fmt = _format_for(filename)
    text = _decode(data, filename)
    if not text.strip():
        raise DataError(f"File '{filename}' is empty: it has no header and no rows.")
    if fmt == "csv":
        return _load_csv(text, filename, tab=Path(filename).suffix.lower() == ".tsv")
    if fmt == "jsonl":
        return _load_jsonl(text, filename)
    return _load_json(text, filename)


def load_table_from_path(path: str | Path) -> Table:
    """Read and parse a dataset file from disk (size checked before reading)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"Dataset file '{p}' does not exist.")
    if not p.is_file():
        raise DataError(f"Dataset path '{p}' is not a file.")
    _format_for(p.name)
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise _too_big(p.name, size)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise DataError(f"Dataset file '{p}' cannot be read: {e.strerror or e}.") from e
    return load_table(data, p.name)


# --------------------------------------------------------------------------- mapping


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


def _names(items: Iterable[str]) -> str:
    return ", ".join(f"'{i}'" for i in items)


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
        raise DataError(f"Field(s) {_names(overlap)} are listed both as input and as label; use each once.")
    fields = list(dict.fromkeys([*input_fields, *label_fields]))
    unmapped = [f for f in fields if not mapping.get(f)]
    if unmapped:
        raise DataError(
            f"Field(s) {_names(unmapped)} are not mapped to a column; map each to one of the columns: "
            f"{_names(table.columns)}."
        )
    missing = [(f, mapping[f]) for f in fields if mapping[f] not in table.columns]
    if missing:
        detail = ", ".join(f"'{c}' (for field '{f}')" for f, c in missing)
        raise DataError(
            f"Mapped column(s) not found in the file: {detail}. Available columns: {_names(table.columns)}."
        )
    empty: list[str] = []
    examples: list[dspy.Example] = []
    for i, row in enumerate(table.rows):
        values = {f: row[mapping[f]] for f in fields}
        for f in fields:
            if not values[f].strip():
                kind = "input" if f in input_fields else "label"
                empty.append(f"{table.where(i)} {kind} field '{f}' (column '{mapping[f]}')")
        examples.append(dspy.Example(**values).with_inputs(*input_fields))
    if empty:
        more = f"; and {len(empty) - _MAX_SHOWN} more" if len(empty) > _MAX_SHOWN else ""
        raise DataError(
            f"{len(empty)} empty cell(s) in mapped columns: {'; '.join(empty[:_MAX_SHOWN])}{more}. "
            "Fill them in or remove those rows."
        )
    return examples


# --------------------------------------------------------------------------- splitting


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def _ratio_counts(n: int, train: float, val: float, test: float) -> tuple[int, int, int]:
    n_val, n_test = _round(val * n), _round(test * n)
    rest = n - n_val - n_test
    n_train = rest if abs(train + val + test - 1.0) <= 1e-6 else min(_round(train * n), rest)
    return max(n_train, 0), n_val, n_test


def _counts_ok(counts: tuple[int, int, int]) -> bool:
    return counts[0] >= MIN_TRAIN and counts[1] >= MIN_VAL and counts[2] >= MIN_TEST


def _min_needed_for_ratios(train: float, val: float, test: float, cap: int = 1_000_000) -> int | None:
    for n in range(MIN_EXAMPLES, cap + 1):
        if _counts_ok(_ratio_counts(n, train, val, test)):
            return n
    return None


MAX_STRATA_VALUES = 20


def categorical_labels(examples: Sequence[dspy.Example]) -> list[str]:
    """Label fields that look like classes: 2-20 distinct values, at most half as many as examples
    (the rule ``core.prepare.label_choices`` uses for label choices)."""
    try:
        keys = list(examples[0].labels().keys()) if examples else []
    except ValueError:  # examples without declared inputs have no labels
        return []
    out = []
    for key in keys:
        values = {str(ex.get(key, "")) for ex in examples}
        if 2 <= len(values) <= MAX_STRATA_VALUES and len(values) * 2 <= len(examples):
            out.append(key)
    return out


def _stratified_order(examples: Sequence[dspy.Example], order: list[int], fields: list[str]) -> list[int]:
    """``order`` interleaved so that every contiguous slice holds each label value in proportion.

    Each stratum (tuple of the ``fields`` values) keeps its shuffled order; its i-th of m members is
    placed at (i + 0.5) / m, ties broken by the stratum's first appearance in ``order``.
    """
    strata: dict[tuple, list[int]] = {}
    for i in order:
        strata.setdefault(tuple(str(examples[i].get(f, "")) for f in fields), []).append(i)
    placed = [((k + 0.5) / len(members), rank, i)
              for rank, members in enumerate(strata.values()) for k, i in enumerate(members)]
    return [i for _, _, i in sorted(placed)]


def split_examples(
    examples: Sequence[dspy.Example], train: float, val: float, test: float, seed: int, *, stratify: bool = True
) -> Split:
    """Shuffle ``examples`` with ``random.Random(seed)`` and cut train/val/test.

    Sizes are all ints (counts) or all floats (ratios, summing to at most 1.0). At least
    ``MIN_TRAIN`` train, ``MIN_VAL`` validation and ``MIN_TEST`` test examples are required.

    With ``stratify`` (default) and categorical labels (``categorical_labels``), the shuffled order is
    interleaved by label values first, so train, validation and test each keep the label proportions
    of the data (within one example per value). Contract: the same examples, sizes and seed always
    give the same split; a different seed gives a different one.
    """
    sizes = {"train": train, "val": val, "test": test}
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"Split seed must be an integer, got {seed!r}.")
    bad = [k for k, v in sizes.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise DataError(f"Split size(s) {_names(bad)} must be numbers (counts or ratios), got {sizes}.")
    n = len(examples)
    minimums = f"at least {MIN_TRAIN} train, {MIN_VAL} val and {MIN_TEST} test"
    if all(isinstance(v, int) for v in sizes.values()):
        low = [
            f"{k}={v} (minimum {m})"
            for (k, v), m in zip(sizes.items(), (MIN_TRAIN, MIN_VAL, MIN_TEST), strict=True)
            if v < m
        ]
        if low:
            raise DataError(f"Split sizes too small: {', '.join(low)}; a split needs {minimums} examples.")
        counts = (int(train), int(val), int(test))
        if sum(counts) > n:
            raise DataError(
                f"This split (train {train}, val {val}, test {test}) needs at least {sum(counts)} examples; "
                f"there are {n}."
            )
    elif all(isinstance(v, float) for v in sizes.values()):
        out = [f"{k}={v}" for k, v in sizes.items() if not (0.0 < v <= 1.0) or not math.isfinite(v)]
        if out:
            raise DataError(
                f"Split ratio(s) {', '.join(out)} are out of range; each ratio must be > 0 and <= 1."
            )
        total = train + val + test
        if total > 1.0 + 1e-6:
            raise DataError(
                f"Split ratios sum to {total:.4g} (train {train} + val {val} + test {test}); "
                "they must sum to at most 1.0."
            )
        counts = _ratio_counts(n, train, val, test)
        if not _counts_ok(counts):
            need = _min_needed_for_ratios(train, val, test)
            need_text = f"at least {need}" if need is not None else "more than 1,000,000"
            raise DataError(
                f"This split (train {train}, val {val}, test {test}) needs {need_text} examples to give "
                f"{minimums} example(s); there are {n} (it would give {counts[0]}/{counts[1]}/{counts[2]})."
            )
    else:
        raise DataError(
            f"Split sizes must be all counts (integers) or all ratios (floats), got train={train!r}, "
            f"val={val!r}, test={test!r}."
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    fields = categorical_labels(examples) if stratify else []
    if fields:
        order = _stratified_order(examples, order, fields)
    n_train, n_val, n_test = counts
    picked = [examples[i] for i in order]
    return Split(
        train=picked[:n_train],
        val=picked[n_train : n_train + n_val],
        test=picked[n_train + n_val : n_train + n_val + n_test],
    )
