"""Training rows cut to max_length: the provider's meta.json says how many and by how much, and the run says so."""

from __future__ import annotations

import json
from pathlib import Path

from core.lms.lora.params import PARAMS
from core.lms.lora.provider import truncated_rows, truncation_message


def _meta(folder: Path, train: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").write_text(json.dumps({"base": "smollm2-135m", "train": train}), encoding="utf-8")
    return folder


def test_truncated_rows_reads_the_fine_tunes_meta(tmp_path: Path) -> None:
    cut = _meta(tmp_path / "cut", {"rows": 30, "truncated_rows": 30, "max_length": 384, "row_tokens": 414.2,
                                   "cut_tokens": 30.2, "max_cut_tokens": 33})
    assert truncated_rows(cut) == {"truncated": 30, "rows": 30, "max_length": 384, "row_tokens": 414.2,
                                   "cut_tokens": 30.2, "max_cut_tokens": 33}
    whole = _meta(tmp_path / "whole", {"rows": 30, "truncated_rows": 0, "max_length": 1024, "row_tokens": 414.2})
    assert truncated_rows(whole) is None
    # a fine-tune from before the token counts were kept: the counts read as 0, the rows are still named
    old = _meta(tmp_path / "old", {"rows": 43, "truncated_rows": 38, "max_length": 384})
    assert truncated_rows(old) == {"truncated": 38, "rows": 43, "max_length": 384, "row_tokens": 0.0,
                                   "cut_tokens": 0.0, "max_cut_tokens": 0}
    assert truncated_rows(tmp_path / "missing") is None  # an engine that writes no meta.json
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "meta.json").write_text("not json", encoding="utf-8")
    assert truncated_rows(tmp_path / "bad") is None


def test_the_message_says_how_much_was_cut_what_that_part_is_and_what_to_change() -> None:
    message = truncation_message("embedded/smollm2-135m", {
        "truncated": 38, "rows": 43, "max_length": 384, "row_tokens": 431.0, "cut_tokens": 52.4, "max_cut_tokens": 81})
    assert message.startswith("38 of 43 training rows of embedded/smollm2-135m were longer than max_length=384 "
                              "tokens and lost ~52 tokens each (at most 81; the rows averaged ~431)")
    assert "loses the start of its prompt (the system message" in message and "keeps its answer" in message
    assert f"raise max_length in the weight step's settings (up to {PARAMS['max_length'].high})" in message
    without_counts = truncation_message("m", {"truncated": 3, "rows": 4, "max_length": 384, "row_tokens": 0.0,
                                              "cut_tokens": 0.0, "max_cut_tokens": 0})
    assert without_counts.startswith("3 of 4 training rows of m were longer than max_length=384 tokens: a cut row")
