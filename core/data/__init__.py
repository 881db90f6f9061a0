"""Datasets: one pipeline from a file to a train/validation/test split.

- ``table``: the ``Table`` record every format is read into (cells as text, rows remember their line);
- ``load``: ``load_table`` / ``load_table_from_path``: size limit, extension -> format, UTF-8 decoding;
- ``csv_file``, ``json_file``: the parsers for CSV/TSV and JSON Lines/JSON text;
- ``mapping``: columns -> program fields, and one ``dspy.Example`` per row;
- ``split``: train/validation/test cuts by count or ratio, stratified on class-like labels;
- ``messages``: how the package's errors list names.

Every failure raises ``DataError`` with a message that names what is wrong and what is allowed.
"""

from core.data.csv_file import CSV_DELIMITERS
from core.data.load import ALLOWED_EXTENSIONS, MAX_FILE_BYTES, load_table, load_table_from_path
from core.data.mapping import auto_mapping, build_examples, normalize_name
from core.data.split import (
    MAX_STRATA_VALUES,
    MIN_EXAMPLES,
    MIN_TEST,
    MIN_TRAIN,
    MIN_VAL,
    Split,
    categorical_labels,
    split_examples,
)
from core.data.table import Table

__all__ = [
    "ALLOWED_EXTENSIONS",
    "CSV_DELIMITERS",
    "MAX_FILE_BYTES",
    "MAX_STRATA_VALUES",
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
