"""The Data page's part of the run document: source, column mapping, labels and split."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from core.config import (
    SplitSpec,
)
from core.data import (
    ALLOWED_EXTENSIONS,
    Table,
    auto_mapping,
    build_examples,
    load_table,
    load_table_from_path,
    split_examples,
)
from core.document.base import copy_document
from core.errors import ConfigError, DataError, StudioError
from core.paths import DATA_DIR, sample_path, studio_home


def list_samples() -> list[str]:
    return sorted(p.name for p in DATA_DIR.iterdir() if p.suffix in ALLOWED_EXTENSIONS)


def _safe_name(filename: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename).name)[-80:] or "upload"


def save_bytes(data: bytes, filename: str, folder: str) -> Path:
    digest = hashlib.sha256(data).hexdigest()[:12]
    target = studio_home() / folder / f"{digest}-{_safe_name(filename)}"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.write_bytes(data)
    return target


def save_upload(data: bytes, filename: str) -> tuple[Path, Table]:
    """Check an uploaded dataset (``DataError`` with core's message) and store it for the run's worker."""
    table = load_table(data, filename)
    return save_bytes(data, filename, "uploads"), table


def data_path(doc: dict[str, Any]) -> Path:
    source = doc["data"]["source"]
    if source.get("kind") == "sample":
        return sample_path(source["name"])
    return Path(source["path"])


def load_document_table(doc: dict[str, Any]) -> Table:
    return load_table_from_path(data_path(doc))


def set_data_source(doc: dict[str, Any], source: dict[str, Any], table: Table) -> dict[str, Any]:
    """Use a new dataset; fields are matched to columns by name where the mapping no longer fits."""
    out = copy_document(doc)
    out["data"]["source"] = source
    remap_columns(out, table)
    return out


def remap_columns(out: dict[str, Any], table: Table | None = None) -> None:
    if table is None:
        try:
            table = load_document_table(out)
        except StudioError:
            return
    data = out["data"]
    fields = [*data["inputs"], *data["labels"]]
    auto = auto_mapping(fields, list(table.columns))
    data["mapping"] = {
        f: (data["mapping"][f] if data["mapping"].get(f) in table.columns else auto.get(f, ""))
        for f in fields
    }
    data["mapping"] = {f: c for f, c in data["mapping"].items() if c}


def set_mapping(doc: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    out = copy_document(doc)
    out["data"]["mapping"] = {f: c for f, c in mapping.items() if c}
    return out


def set_labels(doc: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    if not labels:
        raise DataError("choose at least one label field (an output of the program the metric compares)")
    out = copy_document(doc)
    out["data"]["labels"] = list(labels)
    out["metric"]["fields"] = None
    return out


def set_split(doc: dict[str, Any], train: float, val: float, test: float, seed: int) -> dict[str, Any]:
    """Counts (>= 1, whole numbers) or ratios (< 1); ``ConfigError`` with the rule otherwise."""
    values = [int(v) if float(v).is_integer() and v >= 1 else float(v) for v in (train, val, test)]
    try:
        SplitSpec(train=values[0], val=values[1], test=values[2], seed=int(seed))
    except ValidationError as e:
        raise ConfigError(f"data.split: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from e
    out = copy_document(doc)
    out["data"]["split"] = {"train": values[0], "val": values[1], "test": values[2], "seed": int(seed)}
    return out


@dataclass(frozen=True)
class DataCheck:
    """Problems of the data section, by the control that fixes them."""

    mapping: str | None
    split: str | None
    sizes: tuple[int, int, int] | None


def check_data(doc: dict[str, Any], table: Table) -> DataCheck:
    data = doc["data"]
    try:
        examples = build_examples(table, data["mapping"], data["inputs"], data["labels"])
    except DataError as e:
        return DataCheck(str(e), None, None)
    split = SplitSpec.model_validate(data["split"])
    try:
        result = split_examples(examples, *split.sizes(), seed=split.seed)
    except DataError as e:
        return DataCheck(None, str(e), None)
    return DataCheck(None, None, result.sizes)


def label_distribution(table: Table, mapping: dict[str, str], labels: list[str]) -> dict[str, dict[str, int]]:
    """For each mapped label field, how many rows hold each value (most frequent first, top 20)."""
    out = {}
    for field in labels:
        column = mapping.get(field)
        if column in table.columns:
            out[field] = dict(Counter(row[column] for row in table.rows).most_common(20))
    return out
