"""The one round table (Run page, Results page, report): what each column says for a baseline, a prompt
step, a weight step with its traces and a failed evaluation."""

from __future__ import annotations

from core.store.records import Round, RoundDetails, TraceStats
from core.views.rounds import ROUND_COLUMNS, RoundRow, round_rows, round_table, traces_note

TRACES = TraceStats(collected=30, kept=24, failed=2, rows={"m/small": 24}, sources={"classify": "gold", "route": "self"})


def _rounds() -> list[Round]:
    return [
        Round(run_id=1, index=0, strategy="", score=40.04, predictor_models={"classify": "m/small", "route": "m/large"},
              demos={"classify": 0, "route": 0},
              lm_usage={"m/large": {"calls": 20, "input_tokens": 100, "output_tokens": 10},
                        "m/small": {"calls": 20, "input_tokens": 80, "output_tokens": 5}}),
        Round(run_id=1, index=1, strategy="p", step_key="p", optimizer="random_search", score=55.0, is_best=True,
              predictor_models={"classify": "m/small", "route": "m/small"}, demos={"classify": 2, "route": 1},
              lm_usage={"m/small": {"calls": 7, "errors": 1, "input_tokens": 9, "output_tokens": 1, "cost": None}}),
        Round(run_id=1, index=2, strategy="p -> w", step_key="w", optimizer="finetune", score=None, eval_failed=True,
              eval_error="all 10 validation examples failed", predictor_models={"classify": "m/small:ft-1",
                                                                                "route": None},  # type: ignore[dict-item]
              details=RoundDetails(traces=TRACES, finetuned={"m/small": "m/small:ft-1"})),
    ]


def test_rows_say_what_each_round_did():
    baseline, prompt, weight = round_rows(_rounds())
    assert baseline == RoundRow(index=0, strategy="baseline", optimizer="-", score="40.0", best="", calls=40,
                                tokens=195, models="m/large, m/small", demos="classify: 0, route: 0", traces="",
                                note="")
    assert (prompt.strategy, prompt.optimizer, prompt.score, prompt.best) == ("p", "random_search", "55.0", "★")
    assert (prompt.calls, prompt.tokens, prompt.models) == (7, 10, "m/small")  # one model serving both, once
    assert weight.score == "evaluation failed" and weight.note == "all 10 validation examples failed"
    assert weight.models == "m/small:ft-1"  # a predictor without a model is left out, not shown as None
    assert weight.traces == "kept 24 of 30 (classify: gold, route: self)"
    assert (weight.calls, weight.tokens) == (0, 0)


def test_table_is_the_rows_under_the_column_names():
    table = round_table(_rounds())
    assert [list(row) for row in table] == [list(ROUND_COLUMNS)] * 3
    assert table[1]["val score"] == "55.0" and table[1]["LM calls"] == 7 and table[1]["best"] == "★"
    assert table[2]["traces"] == "kept 24 of 30 (classify: gold, route: self)"
    assert round_table([]) == []


def test_traces_note_without_sources():
    assert traces_note(None) == ""
    assert traces_note(TraceStats(collected=5, kept=0, failed=5, rows={})) == "kept 0 of 5"
