"""Round details are typed records; rows written by earlier versions (a committed fixture of real rows)
still read, through ``RoundDetails.from_json`` and through the store, and the views built on them work."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.store import Store
from core.store.records import Round, RoundDetails, TraceStats, Truncation
from core.views.charts import phases_figure
from core.views.monitor import truncation_notes
from core.views.rounds import round_table

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "rounds" / "old_details.json"
ROWS = json.loads(FIXTURE.read_text(encoding="utf-8"))["rows"]


def _rows(run: str) -> list[dict]:
    found = [json.loads(r["details"]) for r in ROWS if r["run"] == run]
    assert found, run
    return found


@pytest.mark.parametrize("run", ["scripted", "embedded", "truncated"])
def test_rows_of_the_last_untyped_version_read_and_write_back_unchanged(run: str) -> None:
    """The stored form did not change: what the recorder wrote before typed records reads into records
    that write the very same JSON (so old and new rows sit side by side in one column)."""
    for stored in _rows(run):
        assert RoundDetails.from_json(stored).to_json() == stored


def test_a_weight_round_of_a_scripted_run_reads_as_records() -> None:
    baseline, prompt, weight, last = (RoundDetails.from_json(d) for d in _rows("scripted"))
    assert baseline == RoundDetails(phases={"baseline evaluation": 0.06}, lm_errors=0)
    assert list(prompt.phases) == ["prompt search", "evaluation"] and prompt.traces is None
    assert list(weight.phases) == ["trace collection", "training", "GGUF export", "evaluation"]
    assert weight.traces == TraceStats(
        collected=40, kept=40, failed=0, rows={"scripted/small": 40}, sources={"classify": "gold"}, balance="cap",
        labels={"intent": {"account": 10, "billing": 10, "bug": 10, "feature_request": 10},
                "urgency": {"high": 20, "low": 20}},
        labels_before={"intent": {"account": 10, "billing": 10, "bug": 10, "feature_request": 10},
                       "urgency": {"high": 20, "low": 20}})
    assert weight.finetuned == {"scripted/small": "scripted/small:ft-51451109"} and weight.truncated == {}
    assert last.phases == {"prompt search": 0.95, "evaluation": 0.22}


def test_truncation_with_and_without_token_counts() -> None:
    (with_counts,) = _rows("truncated")
    assert RoundDetails.from_json(with_counts).truncated == {
        "scripted/small": Truncation(truncated=28, rows=30, max_length=384, row_tokens=414.2, cut_tokens=31.4,
                                     max_cut_tokens=35)}
    (counts_only,) = _rows("truncated_counts_only")
    assert RoundDetails.from_json(counts_only).truncated == {
        "embedded/smollm2-135m": Truncation(truncated=38, rows=43, max_length=384)}


def test_rows_from_before_phases_and_trace_sources_read_with_empty_parts() -> None:
    baseline, weight = (RoundDetails.from_json(d) for d in _rows("before_phases"))
    assert baseline == RoundDetails()
    assert weight.phases == {} and weight.lm_errors == 2
    assert weight.traces == TraceStats(collected=40, kept=37, failed=3, rows={"scripted/small": 37})
    assert (weight.traces.sources, weight.traces.balance, weight.traces.labels) == ({}, "off", {})
    assert RoundDetails.from_json(None) == RoundDetails.from_json({}) == RoundDetails()
    assert RoundDetails.from_json({"future_key": [1], "lm_errors": 1}) == RoundDetails(lm_errors=1)


def test_where_a_fine_tune_trained_round_trips_and_rows_from_before_read_without_it() -> None:
    from core.views.monitor import training_notes

    line = "trained on cpu (float32, bf16 autocast on): 8 rows, 4 steps of batch 8 (2 epochs, max_length 384)"
    details = RoundDetails(finetuned={"embedded/smollm2-135m": "embedded/smollm2-135m:ft-1"},
                           trained_on={"embedded/smollm2-135m": line})
    assert details.to_json()["trained_on"] == {"embedded/smollm2-135m": line}
    assert RoundDetails.from_json(details.to_json()) == details
    assert all(RoundDetails.from_json(d).trained_on == {} for d in _rows("scripted"))
    weight = Round(run_id=1, index=2, strategy="p -> w", details=details)
    assert training_notes([weight]) == [f"Round 2 ('p -> w'): embedded/smollm2-135m {line}"]


def test_old_rows_in_the_store_read_as_records_and_feed_the_views(tmp_path: Path) -> None:
    """Old rows put in the rounds table as they were stored; the store, the round table, the phases chart and
    the truncation notes read them."""
    store = Store(tmp_path / "runs.db")
    run_id = store.create_run("old rows", parse_config(scripted_config_dict("support_triage")))
    old = [r for r in ROWS if r["run"] in ("scripted", "truncated_counts_only")]
    for index, row in enumerate(old):
        store.add_round(Round(run_id=run_id, index=index, strategy=row["strategy"], score=50.0))
    with sqlite3.connect(store.path) as db:
        for index, row in enumerate(old):
            db.execute("UPDATE rounds SET details = ? WHERE run_id = ? AND round_index = ?",
                       (row["details"], run_id, index))
    rounds = store.list_rounds(run_id)
    assert [r.details for r in rounds] == [RoundDetails.from_json(json.loads(r["details"])) for r in old]
    assert [row["traces"] for row in round_table(rounds)] == ["", "", "kept 40 of 40 (classify: gold)", "",
                                                               "kept 40 of 40 (classify: gold)"]
    figure = phases_figure(rounds)
    training = next(t for t in figure.data if t.name == "training")
    assert list(training.x) == [0.0, 0.0, 0.01, 0.0, 0.02]
    (note,) = truncation_notes(rounds)
    assert note.startswith("Round 4 ('p -> w'): 38 of 43 training rows of embedded/smollm2-135m were longer than "
                           "max_length=384 tokens: ")
