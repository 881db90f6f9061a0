"""Plain view models of the evidence for the Results page: matrix rows as table records, a trace as
steps in pipeline order, a training row as prompt and answer. No streamlit here: the page renders."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from core.store.evidence import Cell, Evaluation, ExampleResult, MatrixPage
from core.store.records import Event, TrainingRow

# Text symbols, not emoji: they render with any font (a headless browser, an old terminal).
PASS, FAIL, MISSING, WARN = "✓", "✗", "·", "⚠"
ERROR_MARKS = {"parse": f"{WARN} parse", "lm": f"{WARN} LM", "program": f"{WARN} error"}
CELL_COLORS = {PASS: "background-color: #e3f6e3", FAIL: "background-color: #fde2e2", WARN: "background-color: #fff1cc"}
FILTER_LABELS = {
    "all": "all examples",
    "changed": "changed between A and B",
    "regressions": "regressions: passed in baseline, fails in B",
    "still_failing": "still failing: fails in baseline and in B",
    "errors": "parse or LM errors",
}


SOURCE_MEANINGS = {
    "self": "the program's own traces that passed the metric",
    "teacher": "traces with a teacher LM serving the predictor",
    "gold": "the gold labels as outputs",
    "hinted": "outputs written with the gold labels as a hint, kept when the program then answered right",
}


def sources_legend(rows_by_source: dict[str, int]) -> str:
    """``gold 30 (the gold labels as outputs), ...``: a weight step's training rows per trace source."""
    return ", ".join(f"{source} {rows}" + (f" ({SOURCE_MEANINGS[source]})" if source in SOURCE_MEANINGS else "")
                     for source, rows in rows_by_source.items())


def column_label(evaluation: Evaluation) -> str:
    if evaluation.round_index is None:
        return evaluation.label
    return f"r{evaluation.round_index} {evaluation.label}"


def cell_mark(cell: Cell | None) -> str:
    if cell is None:
        return MISSING
    if cell.error_kind:
        return ERROR_MARKS.get(cell.error_kind, WARN)
    if cell.passed is None:
        return MISSING
    mark = PASS if cell.passed else FAIL
    if cell.score is not None and 0 < cell.score < 1:
        mark += f" {cell.score:.2f}"
    return mark


def preview(text: str, limit: int) -> str:
    """A short line of a stored JSON preview (its values joined by " | "), cut to ``limit`` characters."""
    try:
        value = json.loads(text)
        text = " | ".join(str(v) for v in value.values()) if isinstance(value, dict) else str(value)
    except ValueError:  # a preview cut mid-JSON: drop the first key, keep the text
        text = re.sub(r'^\{"[^"]+":\s*"?', "", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cell_style(mark: object) -> str:
    """CSS for a matrix cell by its mark (green pass, red fail, yellow error)."""
    text = str(mark)
    return next((css for symbol, css in CELL_COLORS.items() if text.startswith(symbol)), "")


def matrix_records(page: MatrixPage, preview_chars: int = 90) -> list[dict[str, Any]]:
    """One table record per row of the page: example number, inputs and gold previews, one mark per column."""
    labels = [column_label(c) for c in page.columns]
    records = []
    for row in page.rows:
        record: dict[str, Any] = {"example": row.example_index, "inputs": preview(row.inputs, preview_chars),
                                  "gold": preview(row.gold, 40)}
        record.update({label: cell_mark(cell) for label, cell in zip(labels, row.cells, strict=True)})
        records.append(record)
    return records


@dataclass(frozen=True)
class TraceStep:
    """One LM call of a trace: the module that made it, the prompt as sent and the answer."""

    position: int
    predictor: str
    model: str
    messages: list[dict[str, Any]]
    answer: str
    tokens: str
    latency: str
    error: str | None


def trace_steps(result: ExampleResult) -> list[TraceStep]:
    """The LM calls of an example in pipeline (call) order."""
    steps = []
    for call in result.calls:
        tokens = (f"{call.input_tokens or 0} in / {call.output_tokens or 0} out"
                  if call.input_tokens is not None or call.output_tokens is not None else "tokens unknown")
        latency = f"{call.latency_ms:.0f} ms" if call.latency_ms is not None else "-"
        steps.append(TraceStep(call.seq + 1, call.predictor or "(unnamed)", call.model or "?", call.messages,
                               call.completion or "", tokens, latency, call.error))
    return steps


def gold_vs_prediction(result: ExampleResult) -> list[dict[str, Any]]:
    """Each gold field next to the predicted value (then the other predicted fields)."""
    rows = [{"field": k, "gold": _text(v), "prediction": _text(result.outputs.get(k)),
             "match": PASS if _text(v).strip().lower() == _text(result.outputs.get(k)).strip().lower() else FAIL}
            for k, v in result.gold.items()]
    rows += [{"field": k, "gold": "", "prediction": _text(v), "match": ""}
             for k, v in result.outputs.items() if k not in result.gold]
    return rows


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def training_record(row: TrainingRow, limit: int = 160) -> dict[str, Any]:
    """A training row as a table record: predictor, source, the user turn and the assistant answer."""
    user = next((m.get("content", "") for m in reversed(row.messages) if m.get("role") == "user"), "")
    answer = row.messages[-1].get("content", "") if row.messages and row.messages[-1].get("role") == "assistant" else ""
    labels = ", ".join(f"{k}={v}" for k, v in row.outputs.items() if isinstance(v, str) and len(v) <= 40)
    return {"row": row.index, "predictor": row.predictor, "source": row.source, "labels": labels,
            "prompt (last user turn)": user[-limit:], "answer": answer[:limit]}


def loss_events(events: list[Event], strategy: str, model: str) -> list[Event]:
    """The ``train`` events of one weight step (by its strategy) and one base model."""
    return [e for e in events if e.data.get("strategy") == strategy and e.data.get("model") == model]
