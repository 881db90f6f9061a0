"""Training rows cut to max_length: the provider's meta.json says how many, and the run says so."""

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
    cut = _meta(tmp_path / "cut", {"rows": 30, "truncated_rows": 30, "max_length": 384})
    assert truncated_rows(cut) == {"truncated": 30, "rows": 30, "max_length": 384}
    assert truncated_rows(_meta(tmp_path / "whole", {"rows": 30, "truncated_rows": 0, "max_length": 1024})) is None
    assert truncated_rows(tmp_path / "missing") is None  # an engine that writes no meta.json
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "meta.json").write_text("not json", encoding="utf-8")
    assert truncated_rows(tmp_path / "bad") is None


def test_the_message_says_what_was_cut_why_it_matters_and_what_to_change() -> None:
    message = truncation_message("embedded/smollm2-135m", {"truncated": 38, "rows": 43, "max_length": 384})
    assert message.startswith("38 of 43 training rows of embedded/smollm2-135m were longer than max_length=384 tokens")
    assert "lost the start of their prompt" in message and "raise max_length" in message
    assert f"up to {PARAMS['max_length'].high}" in message


def test_the_default_max_length_fits_the_sample_tasks_rows() -> None:
    """Support triage's rows are 414 tokens and the document task's up to ~450: the old default (384) cut them
    all; the default now leaves room for rows twice as long."""
    assert PARAMS["max_length"].default >= 2 * 450
