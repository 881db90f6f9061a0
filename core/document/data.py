"""The Data page's part of the run document: source, column mapping, labels and split."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from core.config.schema import FileSource, RunDraft, SampleSource, SplitSpec, validation_message
from core.data import (
    ALLOWED_EXTENSIONS,
    Table,
    auto_mapping,
    build_examples,
    load_table,
    load_table_from_path,
    split_examples,
)
from core.document.base import revise
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


def data_path(doc: RunDraft) -> Path:
    source = doc.data.source
    return sample_path(source.name) if isinstance(source, SampleSource) else Path(source.path)


def load_document_table(doc: RunDraft) -> Table:
    return load_table_from_path(data_path(doc))


def use_sample(doc: RunDraft, name: str) -> RunDraft:
    """Use a bundled sample (read now, to match fields to its columns)."""
    try:
        source = SampleSource(kind="sample", name=name)
    except ValidationError as e:
        raise ConfigError(validation_message(e, "data.source", location=False)) from e
    return set_data_source(doc, source, load_table_from_path(sample_path(source.name)))


def use_file(doc: RunDraft, path: Path | str, table: Table) -> RunDraft:
    """Use a file the user picked (``table``: its rows, already read and checked)."""
    return set_data_source(doc, FileSource(kind="file", path=str(path)), table)


def set_data_source(doc: RunDraft, source: SampleSource | FileSource, table: Table) -> RunDraft:
    """Use a new dataset; fields are matched to columns by name where the mapping no longer fits."""
    return remap_columns(revise(doc, data=revise(doc.data, source=source)), table)


def remap_columns(doc: RunDraft, table: Table | None = None) -> RunDraft:
    """Keep each field's column where the table has it, else match it by name (unreadable data: unchanged)."""
    if table is None:
        try:
            table = load_document_table(doc)
        except StudioError:
            return doc
    data = doc.data
    fields = [*data.inputs, *data.labels]
    auto = auto_mapping(fields, list(table.columns))
    mapping = {f: (data.mapping[f] if data.mapping.get(f) in table.columns else auto.get(f, "")) for f in fields}
    return revise(doc, data=revise(data, mapping={f: c for f, c in mapping.items() if c}))


def set_mapping(doc: RunDraft, mapping: dict[str, str]) -> RunDraft:
    return revise(doc, data=revise(doc.data, mapping={f: c for f, c in mapping.items() if c}))


def set_labels(doc: RunDraft, labels: list[str]) -> RunDraft:
    if not labels:
        raise DataError("choose at least one label field (an output of the program the metric compares)")
    return revise(doc, data=revise(doc.data, labels=list(labels)), metric=revise(doc.metric, fields=None))


def set_split(doc: RunDraft, train: float, val: float, test: float, seed: int) -> RunDraft:
    """Counts (>= 1, whole numbers) or ratios (< 1); ``ConfigError`` with the rule otherwise."""
    values = [int(v) if float(v).is_integer() and v >= 1 else float(v) for v in (train, val, test)]
    try:
        split = SplitSpec(train=values[0], val=values[1], test=values[2], seed=int(seed))
    except ValidationError as e:
        raise ConfigError(validation_message(e, "data.split", location=False, show_input=False)) from e
    return revise(doc, data=revise(doc.data, split=split))


@dataclass(frozen=True)
class DataCheck:
    """Problems of the data section, by the control that fixes them."""

    mapping: str | None
    split: str | None
    sizes: tuple[int, int, int] | None


def check_data(doc: RunDraft, table: Table) -> DataCheck:
    data = doc.data
    try:
        examples = build_examples(table, data.mapping, data.inputs, data.labels)
    except DataError as e:
        return DataCheck(str(e), None, None)
    try:
        result = split_examples(examples, *data.split.sizes(), seed=data.split.seed)
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
