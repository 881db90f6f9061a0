"""The round table of a run: one row per round (baseline first), the same on the Run page, the Results
page and the HTML report.

``round_rows`` gives typed rows, ``round_table`` the same rows as ``{column: value}`` dicts in
``ROUND_COLUMNS`` order (what a dataframe or an HTML table takes). A failed evaluation reads
"evaluation failed", never a score of 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass

from core.store.records import Round, TraceStats
from core.views.charts import round_label, usage_totals

ROUND_COLUMNS = ("round", "strategy", "optimizer", "val score", "best", "LM calls", "tokens", "models", "demos",
                 "traces", "note")


@dataclass(frozen=True)
class RoundRow:
    """One round as the table shows it (fields in ``ROUND_COLUMNS`` order)."""

    index: int
    strategy: str  # "baseline" for round 0
    optimizer: str  # "-" for the baseline
    score: str  # the validation score with one decimal, or "evaluation failed"
    best: str  # "★" on the best round
    calls: int  # LM calls of the round, all models together
    tokens: int  # input and output tokens of those calls
    models: str  # the models serving the predictors, sorted
    demos: str  # "predictor: demos" per predictor
    traces: str  # a weight step's traces: kept of collected, and their source per predictor
    note: str  # why the evaluation failed


def traces_note(traces: TraceStats | None) -> str:
    """``"kept 8 of 10 (classify: gold)"`` for a weight step's traces; ``""`` for a round without any."""
    if traces is None:
        return ""
    sources = ", ".join(f"{p}: {s}" for p, s in traces.sources.items())
    return f"kept {traces.kept} of {traces.collected}" + (f" ({sources})" if sources else "")


def round_row(r: Round) -> RoundRow:
    usage = usage_totals([r]).values()
    return RoundRow(
        index=r.index, strategy=round_label(r.strategy), optimizer=r.optimizer or "-",
        score="evaluation failed" if r.score is None else f"{r.score:.1f}", best="★" if r.is_best else "",
        calls=sum(u["calls"] for u in usage), tokens=sum(u["input_tokens"] + u["output_tokens"] for u in usage),
        models=", ".join(sorted({m for m in r.predictor_models.values() if m})),
        demos=", ".join(f"{p}: {n}" for p, n in r.demos.items()),
        traces=traces_note(r.details.traces), note=r.eval_error or "",
    )


def round_rows(rounds: Sequence[Round]) -> list[RoundRow]:
    return [round_row(r) for r in rounds]


def round_table(rounds: Sequence[Round]) -> list[dict[str, object]]:
    """The rows as ``{column: value}``, columns in ``ROUND_COLUMNS`` order."""
    return [dict(zip(ROUND_COLUMNS, astuple(row), strict=True)) for row in round_rows(rounds)]
