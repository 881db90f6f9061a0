"""Tests for core.data: loading, mapping, building examples, splitting, bundled samples."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import dspy
import pytest

from core.data import (
    MAX_FILE_BYTES,
    MIN_EXAMPLES,
    Split,
    Table,
    auto_mapping,
    build_examples,
    load_table,
    load_table_from_path,
    split_examples,
)
from core.errors import DataError, StudioError

DATA_DIR = Path(__file__).resolve().parents[2] / "data"


def _err(data: bytes, filename: str) -> str:
    with pytest.raises(DataError) as info:
        load_table(data, filename)
    return str(info.value)


# --------------------------------------------------------------------------- valid files


def test_simple_csv() -> None:
    t = load_table(b"question,answer\nWhat is 2+2?,4\nCapital of France?,Paris\n", "qa.csv")
    assert t == Table(
        columns=("question", "answer"),
        rows=(
            {"question": "What is 2+2?", "answer": "4"},
            {"question": "Capital of France?", "answer": "Paris"},
        ),
        format="csv",
        delimiter=",",
        row_lines=(2, 3),
    )
    assert len(t) == 2


def test_csv_bom_quotes_newlines_and_non_latin() -> None:
    data = (
        "\ufefftext,label\n"
        '"Sales rose, then fell","multi\nline"\n'
        "日本語のテキスト,ポジティブ\n"
        "النص العربي,إيجابي\n"
        '"She said ""hi""",x\r\n'
    ).encode("utf-8")
    t = load_table(data, "tricky.csv")
    assert t.columns == ("text", "label")  # BOM stripped from the first column name
    assert t.rows[0] == {"text": "Sales rose, then fell", "label": "multi\nline"}
    assert t.rows[1] == {"text": "日本語のテキスト", "label": "ポジティブ"}
    assert t.rows[2] == {"text": "النص العربي", "label": "إيجابي"}
    assert t.rows[3] == {"text": 'She said "hi"', "label": "x"}
    assert t.row_lines == (2, 4, 5, 6)


def test_semicolon_delimiter_detected() -> None:
    t = load_table(b"name;score;comment\nAnn;1,5;good, really\nBob;2;ok\n", "de.csv")
    assert t.delimiter == ";"
    assert t.columns == ("name", "score", "comment")
    assert t.rows[0] == {"name": "Ann", "score": "1,5", "comment": "good, really"}


@pytest.mark.parametrize("delimiter", ["\t", "|"])
def test_other_delimiters_detected(delimiter: str) -> None:
    data = f"a{delimiter}b\n1{delimiter}2\n3{delimiter}4\n".encode()
    t = load_table(data, "x.csv")
    assert t.delimiter == delimiter
    assert t.rows == ({"a": "1", "b": "2"}, {"a": "3", "b": "4"})


def test_tsv_uses_tab() -> None:
    t = load_table(b"a\tb\n1,2\t3\n", "x.tsv")
    assert t.delimiter == "\t"
    assert t.rows == ({"a": "1,2", "b": "3"},)


def test_single_column_csv_with_semicolons_in_text() -> None:
    t = load_table(b"text\nhello; world\nfoo\n", "one.csv")
    assert t.columns == ("text",)
    assert [r["text"] for r in t.rows] == ["hello; world", "foo"]


def test_csv_blank_lines_skipped_and_cells_stripped() -> None:
    t = load_table(b"a,b\n\n 1 , x \n,\n2,y\n\n", "x.csv")
    assert t.rows == ({"a": "1", "b": "x"}, {"a": "2", "b": "y"})
    assert t.row_lines == (3, 5)


def test_jsonl_values_converted() -> None:
    data = b'{"q": "hi", "n": 3, "f": 1.5, "ok": true, "none": null}\n\n{"q": "yo", "extra": "e"}\n'
    t = load_table(data, "x.jsonl")
    assert t.format == "jsonl"
    assert t.delimiter is None
    assert t.columns == ("q", "n", "f", "ok", "none", "extra")
    assert t.rows[0] == {"q": "hi", "n": "3", "f": "1.5", "ok": "true", "none": "", "extra": ""}
    assert t.rows[1]["extra"] == "e" and t.rows[1]["n"] == ""
    assert t.row_lines == (1, 3)


def test_ndjson_and_json_list() -> None:
    assert load_table(b'{"a": "x"}\n', "x.ndjson").rows == ({"a": "x"},)
    t = load_table('[{"text": "很好", "label": false}]'.encode(), "x.json")
    assert t.format == "json"
    assert t.rows == ({"text": "很好", "label": "false"},)


def test_json_with_bom() -> None:
    t = load_table(b'\xef\xbb\xbf[{"a": "1"}]', "x.json")
    assert t.rows == ({"a": "1"},)


def test_load_table_from_path(tmp_path: Path) -> None:
    p = tmp_path / "d.csv"
    p.write_bytes(b"a,b\n1,2\n")
    assert load_table_from_path(p).rows == ({"a": "1", "b": "2"},)
    assert load_table_from_path(str(p)).columns == ("a", "b")


# --------------------------------------------------------------------------- bad files


def test_empty_file() -> None:
    assert "is empty" in _err(b"", "x.csv")
    assert "is empty" in _err(b"  \n\n", "x.jsonl")
    assert "is empty" in _err(b"\xef\xbb\xbf", "x.json")


def test_header_only() -> None:
    msg = _err(b"question,answer\n", "x.csv")
    assert "header (question, answer) but no data rows" in msg


def test_ragged_row_names_line_and_counts() -> None:
    msg = _err(b"a,b,c\n1,2,3\n4,5\n6,7,8\n", "x.csv")
    assert "line 3" in msg
    assert "expected 3 columns" in msg and "got 2" in msg
    assert "a, b, c" in msg


def test_ragged_row_after_quoted_newline_reports_start_line() -> None:
    msg = _err(b'a,b\n"x\ny",1\n1,2,3\n', "x.csv")
    assert "line 4" in msg and "got 3" in msg


def test_not_utf8_names_offset() -> None:
    msg = _err("a,b\ncafé,1\n".encode("latin-1"), "x.csv")
    assert "not valid UTF-8" in msg
    assert "byte offset 7" in msg and "0xE9" in msg and "line 2" in msg
    assert "Save the file as UTF-8" in msg


def test_binary_garbage_nul_bytes() -> None:
    msg = _err(b"PK\x03\x04\x00\x00\x08\x00garbage", "book.csv")
    assert "NUL byte at byte offset 4" in msg
    assert "binary" in msg


def test_utf16_is_reported_as_not_text() -> None:
    msg = _err("a,b\n1,2\n".encode("utf-16"), "x.csv")
    assert "UTF-16" in msg and "UTF-8" in msg


def test_json_object_instead_of_list() -> None:
    msg = _err(b'{"rows": [{"a": 1}], "meta": {"v": 2}}', "x.json")
    assert "JSON object with keys 'rows', 'meta'" in msg
    assert "list of objects" in msg
    assert "under key 'rows'" in msg


def test_json_scalar_and_empty_list() -> None:
    assert "a string" in _err(b'"hello"', "x.json")
    assert "empty list" in _err(b"[]", "x.json")


def test_json_list_of_non_objects() -> None:
    msg = _err(b'[{"a": 1}, "oops"]', "x.json")
    assert "item 2 is a string" in msg


def test_invalid_json() -> None:
    msg = _err(b'[{"a": 1},\n {"a": 2,}]', "x.json")
    assert "not valid JSON" in msg and "line 2" in msg


def test_jsonl_file_named_json_gets_hint() -> None:
    msg = _err(b'{"a": 1}\n{"a": 2}\n', "x.json")
    assert "rename it to .jsonl" in msg


def test_bad_jsonl_line() -> None:
    msg = _err(b'{"a": "1"}\n{"a": "2"}\n{"a": 3,}\n', "x.jsonl")
    assert "line 3 is not valid JSON" in msg
    assert "Expecting property name" in msg


def test_jsonl_line_not_object() -> None:
    msg = _err(b'{"a": "1"}\n[1, 2]\n', "x.jsonl")
    assert "line 2 is a list" in msg


@pytest.mark.parametrize(
    ("data", "kind"),
    [(b'[{"a": "x"}, {"a": {"b": 1}}]', "an object"), (b'[{"a": "x"}, {"a": ["x", "y"]}]', "a list")],
)
def test_nested_values_rejected(data: bytes, kind: str) -> None:
    msg = _err(data, "x.json")
    assert f"row 2, column 'a' holds {kind}" in msg
    assert "nested" in msg


def test_nested_value_in_jsonl_names_line() -> None:
    msg = _err(b'{"a": "x"}\n\n{"a": [1]}\n', "x.jsonl")
    assert "row 2 (line 3), column 'a' holds a list" in msg


def test_duplicate_csv_columns() -> None:
    msg = _err(b"text,label,text\n1,2,3\n", "x.csv")
    assert "duplicate column names" in msg and "'text' (columns 1 and 3)" in msg


def test_duplicate_json_keys() -> None:
    msg = _err(b'[{"a": 1, "a": 2}]', "x.json")
    assert "duplicate column names" in msg and "'a'" in msg


def test_empty_header_name() -> None:
    assert "header column 2 has an empty name" in _err(b"a,,c\n1,2,3\n", "x.csv")


def test_unknown_extension() -> None:
    msg = _err(b"a,b\n1,2\n", "data.xlsx")
    assert "'.xlsx'" in msg
    for ext in (".csv", ".tsv", ".jsonl", ".ndjson", ".json"):
        assert ext in msg
    assert "no extension" in _err(b"a\n1\n", "README")


def test_file_over_limit() -> None:
    msg = _err(b"a" * (MAX_FILE_BYTES + 1), "big.csv")
    assert "20.0 MiB" in msg and f"{MAX_FILE_BYTES + 1:,} bytes" in msg and "limit" in msg


def test_file_over_limit_from_path(tmp_path: Path) -> None:
    p = tmp_path / "big.csv"
    with p.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 10)
    with pytest.raises(DataError, match="the limit is 20.0 MiB"):
        load_table_from_path(p)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_table_from_path(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="not a file"):
        load_table_from_path(tmp_path)


def test_errors_are_studio_errors() -> None:
    with pytest.raises(StudioError):
        load_table(b"", "x.csv")


# --------------------------------------------------------------------------- mapping and examples


def test_auto_mapping_normalises_names() -> None:
    fields = ["question", "key_findings", "risk_level", "missing"]
    columns = ["Question", "Key Findings", "risk-level", "other"]
    assert auto_mapping(fields, columns) == {
        "question": "Question",
        "key_findings": "Key Findings",
        "risk_level": "risk-level",
    }


def _qa_table() -> Table:
    return load_table(b"Q,A,notes\nWhat?,This,n1\nWho?,Me,n2\n", "qa.csv")


def test_build_examples() -> None:
    examples = build_examples(_qa_table(), {"question": "Q", "answer": "A"}, ["question"], ["answer"])
    assert len(examples) == 2
    ex = examples[0]
    assert isinstance(ex, dspy.Example)
    assert dict(ex.inputs()) == {"question": "What?"}
    assert dict(ex.labels()) == {"answer": "This"}
    assert set(ex.keys()) == {"question", "answer"}  # only mapped fields, not 'notes'


def test_build_examples_missing_columns() -> None:
    with pytest.raises(DataError) as info:
        build_examples(_qa_table(), {"question": "Question", "answer": "A"}, ["question"], ["answer"])
    msg = str(info.value)
    assert "'Question' (for field 'question')" in msg
    assert "Available columns: 'Q', 'A', 'notes'" in msg


def test_a_huge_column_name_gives_short_messages() -> None:
    """A column name of 100,000 characters is named by its start and its length, in every message."""
    huge = "c" * 100_000
    csv = f"{huge},A\nWhat?,This\n".encode()
    with pytest.raises(DataError) as info:
        build_examples(load_table(csv, "qa.csv"), {"question": "Q", "answer": "A"}, ["question"], ["answer"])
    assert "Available columns: 'ccc" in str(info.value) and "(100000 characters)" in str(info.value)
    assert len(str(info.value)) < 500
    for data, start in [(f"{huge},{huge}\n1,2\n".encode(), "duplicate column names: 'ccc"),
                        (f"{huge},b\n".encode(), "has a header (ccc"),
                        (f"{huge},b\n1,2,3\n".encode(), "(like the header: ccc"),
                        (f'[{{"{huge}": [1]}}]'.encode(), "column 'ccc")]:
        msg = _err(data, "x.json" if data.startswith(b"[") else "x.csv")
        assert start in msg and "(100000 characters)" in msg and len(msg) < 500, msg[:600]
    msg = _err(b"a,b\n1,2\n", "f" * 100_000 + ".xlsx")
    assert msg.startswith("File 'fff") and "(100005 characters)" in msg and len(msg) < 500


def test_build_examples_unmapped_field() -> None:
    with pytest.raises(DataError, match="'answer' are not mapped"):
        build_examples(_qa_table(), {"question": "Q"}, ["question"], ["answer"])


def test_build_examples_no_inputs_and_overlap() -> None:
    with pytest.raises(DataError, match="no input fields"):
        build_examples(_qa_table(), {"answer": "A"}, [], ["answer"])
    with pytest.raises(DataError, match="both as input and as label"):
        build_examples(_qa_table(), {"q": "Q"}, ["q"], ["q"])


def test_build_examples_empty_cells_listed() -> None:
    rows = ["q,a", "x,1", ",2", "y,", "z,3"] + [f",{i}" for i in range(6)]
    table = load_table(("\n".join(rows) + "\n").encode(), "x.csv")
    with pytest.raises(DataError) as info:
        build_examples(table, {"q": "q", "a": "a"}, ["q"], ["a"])
    msg = str(info.value)
    assert "8 empty cell(s)" in msg
    assert "row 2 (line 3) input field 'q' (column 'q')" in msg
    assert "row 3 (line 4) label field 'a' (column 'a')" in msg
    assert "and 3 more" in msg


# --------------------------------------------------------------------------- split


def _examples(n: int) -> list[dspy.Example]:
    return [dspy.Example(q=f"q{i}", a=f"a{i}").with_inputs("q") for i in range(n)]


def test_split_counts_deterministic() -> None:
    ex = _examples(20)
    s1 = split_examples(ex, 10, 5, 5, seed=1)
    s2 = split_examples(ex, 10, 5, 5, seed=1)
    s3 = split_examples(ex, 10, 5, 5, seed=2)
    assert isinstance(s1, Split)
    assert s1.sizes == (10, 5, 5)
    assert [e.q for e in s1.train] == [e.q for e in s2.train]
    assert [e.q for e in s1.test] == [e.q for e in s2.test]
    assert [e.q for e in s1.train + s1.val + s1.test] != [e.q for e in s3.train + s3.val + s3.test]
    all_q = {e.q for e in s1.train + s1.val + s1.test}
    assert len(all_q) == 20


def test_split_counts_may_leave_examples_out() -> None:
    s = split_examples(_examples(20), 4, 2, 3, seed=0)
    assert s.sizes == (4, 2, 3)
    assert not {e.q for e in s.train} & {e.q for e in s.val + s.test}


def test_split_ratios() -> None:
    s = split_examples(_examples(100), 0.6, 0.2, 0.2, seed=3)
    assert s.sizes == (60, 20, 20)
    s = split_examples(_examples(10), 0.5, 0.25, 0.25, seed=3)
    assert s.sizes == (4, 3, 3)
    s = split_examples(_examples(100), 0.5, 0.1, 0.1, seed=3)
    assert s.sizes == (50, 10, 10)


def test_split_ratio_validation() -> None:
    with pytest.raises(DataError, match="sum to 1.1"):
        split_examples(_examples(100), 0.6, 0.3, 0.2, seed=0)
    with pytest.raises(DataError, match="out of range"):
        split_examples(_examples(100), 0.6, 0.0, 0.2, seed=0)
    with pytest.raises(DataError, match="all counts .* or all ratios"):
        split_examples(_examples(100), 60, 0.2, 0.2, seed=0)
    with pytest.raises(DataError, match="must be numbers"):
        split_examples(_examples(100), "60", 20, 20, seed=0)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="seed must be an integer"):
        split_examples(_examples(100), 60, 20, 20, seed=1.5)  # type: ignore[arg-type]


def test_split_ratio_sum_within_tolerance() -> None:
    s = split_examples(_examples(30), 0.7, 0.2, 0.1 + 5e-7, seed=0)
    assert sum(s.sizes) == 30


def test_split_too_few_examples_counts() -> None:
    with pytest.raises(DataError) as info:
        split_examples(_examples(15), 10, 5, 5, seed=0)
    assert "needs at least 20 examples; there are 15" in str(info.value)


def test_split_count_minimums() -> None:
    with pytest.raises(DataError) as info:
        split_examples(_examples(15), 1, 0, 5, seed=0)
    msg = str(info.value)
    assert "train=1 (minimum 2)" in msg and "val=0 (minimum 1)" in msg


def test_split_too_few_examples_ratios() -> None:
    with pytest.raises(DataError) as info:
        split_examples(_examples(3), 0.5, 0.25, 0.25, seed=0)
    msg = str(info.value)
    assert f"needs at least {MIN_EXAMPLES} examples" in msg and "there are 3" in msg
    with pytest.raises(DataError) as info:
        split_examples(_examples(4), 0.8, 0.1, 0.1, seed=0)
    assert "needs at least 5 examples" in str(info.value) and "there are 4" in str(info.value)
    assert split_examples(_examples(5), 0.8, 0.1, 0.1, seed=0).sizes == (3, 1, 1)


def test_min_examples_is_smallest_valid_split() -> None:
    assert MIN_EXAMPLES == 4
    assert split_examples(_examples(4), 2, 1, 1, seed=0).sizes == (2, 1, 1)


# --------------------------------------------------------------------------- bundled samples

PUMP_READINGS = ("bearing_temp", "vibration", "pressure", "flow_rate")

# file -> (columns, label column -> its values, input columns, most words in an input cell)
SAMPLES = {
    "documents.csv": (
        ("document", "category", "risk_level"),
        {"category": {"growth", "decline", "legal", "operations"}, "risk_level": {"low", "medium", "high"}},
        ("document",),
        60,
    ),
    "support_tickets.jsonl": (
        ("ticket", "intent", "urgency"),
        {"intent": {"billing", "bug", "account", "feature_request"}, "urgency": {"low", "high"}},
        ("ticket",),
        35,
    ),
    "sentiment.json": (
        ("text", "label"),
        {"label": {"positive", "negative", "neutral"}},
        ("text",),
        35,
    ),
    "pump_readings.csv": (
        (*PUMP_READINGS, "status"),
        {"status": {"normal", "warning", "fault"}},
        PUMP_READINGS,
        1,  # one number per cell
    ),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_bundled_sample_loads(name: str) -> None:
    columns, labels, inputs, max_words = SAMPLES[name]
    table = load_table_from_path(DATA_DIR / name)
    assert table.columns == columns
    assert len(table.rows) >= 150
    for column, allowed in labels.items():
        assert {r[column] for r in table.rows} == allowed
    keys = [tuple(r[c] for c in inputs) for r in table.rows]
    assert len(set(keys)) == len(keys)  # no duplicate texts (no duplicate rows of readings)
    assert max(len(cell.split()) for key in keys for cell in key) <= max_words
    label_cols = list(labels)
    examples = build_examples(table, {c: c for c in columns}, list(inputs), label_cols)
    assert split_examples(examples, 0.5, 0.25, 0.25, seed=0).sizes[0] >= 75


def test_bundled_samples_match_generator(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_samples", DATA_DIR / "make_samples.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.write_all(tmp_path)
    assert {p.name for p in written} == set(SAMPLES)
    for p in written:
        assert p.read_bytes() == (DATA_DIR / p.name).read_bytes(), (
            f"{p.name} is out of date; rerun the script"
        )
    json.loads((tmp_path / "sentiment.json").read_text(encoding="utf-8"))
