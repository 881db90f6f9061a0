"""Read JSON Lines and JSON text into a ``Table``.

A ``.jsonl``/``.ndjson`` file holds one JSON object per line; a ``.json`` file holds a list of
objects. Columns are the union of the objects' keys in order of first appearance; a missing key
is an empty cell. Every cell becomes a string: numbers and booleans are converted, ``null``
becomes an empty string, nested values (objects, lists) are rejected. Duplicate keys, which
``json`` would silently collapse, are caught and named.
"""

from __future__ import annotations

import json
from typing import Any

from core.data.messages import quoted
from core.data.table import Table
from core.errors import DataError, shown

__all__ = ["read_json", "read_jsonl"]


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
        f"File {shown(filename)}, {where}, column {shown(column)} holds {kind}; nested values are not supported. "
        "Allowed cell values are text, numbers, true/false and null."
    )


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
                f"File {shown(filename)}, {where_word} {pos} is {_type_name(obj)}; every row must be a JSON "
                'object like {"column": "value"}.'
            )
        dupes = getattr(obj, "duplicates", [])
        if dupes:
            raise DataError(
                f"File {shown(filename)}, {where_word} {pos} has duplicate column names: "
                f"{quoted(dupes)}. Column names must be unique."
            )
        for key in obj:
            name = key.strip()
            if not name:
                raise DataError(f"File {shown(filename)}, {where_word} {pos} has a key with an empty name.")
            if name not in known:
                known.add(name)
                columns.append(name)
    if not columns:
        raise DataError(f"File {shown(filename)} has rows but none has any keys; rows need columns with values.")
    rows: list[dict[str, str]] = []
    for n, (pos, obj) in enumerate(objs, start=1):
        where = f"row {n} ({where_word} {pos})" if fmt == "jsonl" else f"row {n}"
        row = {c: "" for c in columns}
        stripped: dict[str, str] = {}
        for key, value in obj.items():
            name = key.strip()
            if name in stripped:
                raise DataError(
                    f"File {shown(filename)}, {where} has duplicate column names: {shown(stripped[name])} and {shown(key)}."
                )
            stripped[name] = key
            row[name] = _cell(value, where, name, filename)
        rows.append(row)
    return Table(tuple(columns), tuple(rows), fmt, None, tuple(pos for pos, _ in objs))


def read_jsonl(text: str, filename: str) -> Table:
    """Parse JSON Lines text: one object per non-blank line."""
    objs: list[tuple[int, Any]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            objs.append((number, json.loads(line, object_pairs_hook=_pairs_hook)))
        except json.JSONDecodeError as e:
            raise DataError(
                f"File {shown(filename)}, line {number} is not valid JSON: {e.msg} (column {e.colno}). "
                'Each line must hold one JSON object like {"column": "value"}.'
            ) from e
    if not objs:
        raise DataError(f"File {shown(filename)} is empty: it has no JSON lines.")
    return _rows_from_objects(objs, filename, "jsonl")


def read_json(text: str, filename: str) -> Table:
    """Parse JSON text holding a list of objects."""
    try:
        doc = json.loads(text, object_pairs_hook=_pairs_hook)
    except json.JSONDecodeError as e:
        hint = ""
        if e.msg == "Extra data":
            hint = " If the file holds one JSON object per line, rename it to .jsonl."
        raise DataError(
            f"File {shown(filename)} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.{hint}"
        ) from e
    if isinstance(doc, dict):
        keys = list(doc)
        listed = quoted(keys)
        hint = 'Expected a list of objects like [{"column": "value"}, ...].'
        lists = [
            k for k, v in doc.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
        ]
        if lists:
            hint += f" The list under key {shown(lists[0])} looks like the rows: save just that list."
        raise DataError(f"File {shown(filename)} holds a JSON object with keys {listed or '(none)'}. {hint}")
    if not isinstance(doc, list):
        raise DataError(
            f"File {shown(filename)} holds {_type_name(doc)}; expected a list of objects like "
            '[{"column": "value"}, ...].'
        )
    if not doc:
        raise DataError(f"File {shown(filename)} holds an empty list: it has no rows.")
    return _rows_from_objects(list(enumerate(doc, start=1)), filename, "json")
