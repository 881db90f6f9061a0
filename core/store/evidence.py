"""Per-example evidence in the run store: evaluations, example results with their LM calls, and the
training rows of weight steps (tables of migration ``m003_evidence``).

Why here and not in files: the matrix of examples x rounds must filter and page in SQL, so that a
run of 1,000 examples x 8 rounds stays fast and the page's memory stays flat. An evaluation is
written in one transaction with ``executemany`` (a few ms for 1,000 examples), never row by row.
Within an evaluation every call of a predictor sends the same system message and demos: the first
call keeps its messages, and a later call stores only its last turn and a reference to that prefix
(``{"prefix_of": [example, seq], "prefix_len": n, "tail": [...]}``), which cuts the bytes written by
about three quarters; ``example_trace`` puts the messages back together.
Runs recorded before the migration have no evaluations: every reader returns empty results.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.errors import StoreError
from core.store.db import Store
from core.store.records import TrainingRow
from core.store.rows import now_iso

logger = logging.getLogger(__name__)

FILTERS = ("all", "changed", "regressions", "still_failing", "errors")
"""Matrix filters: every example; changed between columns a and b; passed in the first column
(baseline) and fails in b; fails in the first column and still in b; a parse or LM error anywhere."""
SPLITS = ("val", "test")
MAX_PAGE = 500


@dataclass(frozen=True)
class LMCall:
    """One LM call made while answering an example, in call order (``seq``)."""

    seq: int
    predictor: str | None
    model: str | None
    messages: list[dict[str, Any]]
    completion: str | None
    input_tokens: int | None = None
    output_tokens: int | None = None
    latency_ms: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class ExampleResult:
    """One example of one evaluation: what went in, what was expected, what came out."""

    index: int
    inputs: dict[str, Any]
    gold: dict[str, Any]
    outputs: dict[str, Any]
    score: float | None
    passed: bool | None
    error: str | None = None
    error_kind: str | None = None  # "parse", "lm" or "program"
    calls: tuple[LMCall, ...] = ()


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a program on a split: a round's validation or a test evaluation."""

    id: int
    run_id: int
    split: str
    round_index: int | None
    label: str
    program: str | None
    started_at: str | None
    finished_at: str | None
    examples: int
    score: float | None
    error: str | None


@dataclass(frozen=True)
class NewEvaluation:
    """What the capture hands over to be written."""

    run_id: int
    split: str
    round_index: int | None
    label: str
    program: str | None = None
    started_at: str | None = None
    score: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Cell:
    passed: bool | None
    score: float | None
    error_kind: str | None


@dataclass(frozen=True)
class MatrixRow:
    example_index: int
    inputs: str  # the inputs JSON, cut to a preview
    gold: str  # the gold JSON, cut to a preview
    cells: tuple[Cell | None, ...]  # one per column; None where the example was not evaluated


@dataclass(frozen=True)
class MatrixQuery:
    """Which rows of the matrix: a filter (see ``FILTERS``), the two compared columns, a search."""

    split: str = "val"
    filter: str = "all"
    a: int = 0  # column positions (0 = the first, the baseline)
    b: int = -1  # -1 = the last column
    search: str = ""


@dataclass(frozen=True)
class MatrixPage:
    columns: tuple[Evaluation, ...]
    rows: tuple[MatrixRow, ...]
    total: int  # rows matching the query (all pages)
    offset: int
    limit: int


@dataclass(frozen=True)
class TrainingSet:
    round_index: int
    model: str
    rows: int
    sources: dict[str, int] = field(default_factory=dict)


_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)  # one instance: json.dumps with options builds one per call


def _json(value: Any) -> str:
    return _ENCODER.encode(value)


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else {}


# -- writing ----------------------------------------------------------------------------------------


def add_evaluation(store: Store, new: NewEvaluation, results: Sequence[ExampleResult]) -> int:
    """Write one evaluation with all its example results and LM calls in one transaction."""
    if new.split not in SPLITS:
        raise StoreError(f"unknown evaluation split {new.split!r}; allowed: {', '.join(SPLITS)}")
    example_rows = []
    call_rows = []
    with store._write() as db:
        cursor = db.execute(
            "insert into evaluations (run_id, split, round_index, label, program, started_at, finished_at, "
            "examples, score, error) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [new.run_id, new.split, new.round_index, new.label, new.program, new.started_at, now_iso(),
             len(results), new.score, new.error],
        )
        evaluation_id = int(cursor.lastrowid)
        prefixes: dict[tuple[Any, ...], tuple[int, int]] = {}
        for r in results:
            example_rows.append((evaluation_id, new.run_id, new.split, r.index, _json(r.inputs), _json(r.gold),
                                 _json(r.outputs), r.score, None if r.passed is None else int(r.passed), r.error,
                                 r.error_kind))
            call_rows.extend((evaluation_id, r.index, c.seq, c.predictor, c.model,
                              _json(_shared_prefix(prefixes, c, r.index)), c.completion,
                              c.input_tokens, c.output_tokens, c.latency_ms, c.error) for c in r.calls)
        db.conn.executemany(
            "insert or replace into example_results (evaluation_id, run_id, split, example_index, inputs, gold, "
            "outputs, score, passed, error, error_kind) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", example_rows)
        db.conn.executemany(
            "insert into lm_calls (evaluation_id, example_index, seq, predictor, model, messages, completion, "
            "input_tokens, output_tokens, latency_ms, error) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", call_rows)
    return evaluation_id


def _shared_prefix(prefixes: dict[tuple[Any, ...], tuple[int, int]], call: LMCall, example: int) -> Any:
    """The call's messages, or its last turn and a reference to an earlier call with the same prefix."""
    messages = call.messages
    if len(messages) < 2:
        return messages
    key = (call.predictor, *((m.get("role"), str(m.get("content"))) for m in messages[:-1]))
    first = prefixes.get(key)
    if first is None:
        prefixes[key] = (example, call.seq)
        return messages
    return {"prefix_of": list(first), "prefix_len": len(messages) - 1, "tail": messages[-1:]}


def _messages(db: Any, evaluation_id: int, stored: Any) -> list[dict[str, Any]]:
    if not isinstance(stored, dict):
        return stored or []
    example, seq = stored["prefix_of"]
    row = db.execute("select messages from lm_calls where evaluation_id = ? and example_index = ? and seq = ?",
                     [evaluation_id, example, seq]).fetchone()
    prefix = _loads(row[0])[: stored["prefix_len"]] if row else [{"role": "?", "content": "(prefix not found)"}]
    return [*prefix, *stored["tail"]]


def add_training_rows(store: Store, run_id: int, round_index: int, model: str, rows: Sequence[TrainingRow]) -> None:
    """Record the rows a weight step (round ``round_index``) trained ``model`` on."""
    values = [(run_id, round_index, model, i, r.predictor, r.source, _json(r.messages), _json(r.outputs))
              for i, r in enumerate(rows)]
    with store._write() as db:
        db.conn.executemany(
            "insert or replace into training_rows (run_id, round_index, model, row_index, predictor, source, "
            "messages, outputs) values (?, ?, ?, ?, ?, ?, ?, ?)", values)


# -- reading ----------------------------------------------------------------------------------------


def _evaluation(row: dict[str, Any]) -> Evaluation:
    return Evaluation(id=row["id"], run_id=row["run_id"], split=row["split"], round_index=row["round_index"],
                      label=row["label"], program=row["program"], started_at=row["started_at"],
                      finished_at=row["finished_at"], examples=row["examples"], score=row["score"],
                      error=row["error"])


def list_evaluations(store: Store, run_id: int, split: str | None = None) -> list[Evaluation]:
    """Evaluations of a run, rounds in order (a round evaluated twice keeps only its latest)."""
    sql = "select * from evaluations where run_id = ?"
    params: list[Any] = [run_id]
    if split is not None:
        sql += " and split = ?"
        params.append(split)
    rows = [_evaluation(r) for r in store.db.query(sql + " order by id", params)]
    latest: dict[tuple[str, int | None, str | None], Evaluation] = {}
    for e in rows:
        key = (e.split, e.round_index, e.label) if e.round_index is not None else (e.split, None, e.label)
        latest[key] = e
    return sorted(latest.values(), key=lambda e: (SPLITS.index(e.split), e.round_index or 0, e.id))


def has_evidence(store: Store, run_id: int) -> bool:
    return store.db.execute("select 1 from evaluations where run_id = ? limit 1", [run_id]).fetchone() is not None


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _matrix_sql(columns: Sequence[Evaluation], query: MatrixQuery) -> tuple[str, list[Any]]:
    """The pivot (one row per example, three values per column) and its filter, all parameterised."""
    n = len(columns)
    a = query.a % n
    b = query.b % n
    parts = ["example_index", "min(substr(inputs, 1, 240)) as inputs", "min(substr(gold, 1, 160)) as gold"]
    params: list[Any] = []
    for i, column in enumerate(columns):
        parts += [f"max(case when evaluation_id = ? then passed end) as p{i}",
                  f"max(case when evaluation_id = ? then score end) as s{i}",
                  f"max(case when evaluation_id = ? then error_kind end) as k{i}",
                  f"max(case when evaluation_id = ? then 1 else 0 end) as e{i}"]
        params += [column.id] * 4
    if query.search.strip():
        parts.append("max(case when inputs like ? escape '\\' or gold like ? escape '\\' "
                     "or outputs like ? escape '\\' then 1 else 0 end) as hit")
        params += [_like(query.search.strip())] * 3
    ids = [c.id for c in columns]
    inner = (f"select {', '.join(parts)} from example_results where run_id = ? and split = ? "
             f"and evaluation_id in ({', '.join('?' for _ in ids)}) group by example_index")
    params += [columns[0].run_id, query.split, *ids]
    where = []
    if query.filter == "changed":
        where.append(f"coalesce(p{a}, -1) != coalesce(p{b}, -1)")
    elif query.filter == "regressions":
        where.append(f"p0 = 1 and coalesce(p{b}, 0) = 0")
    elif query.filter == "still_failing":
        where.append(f"coalesce(p0, 0) = 0 and coalesce(p{b}, 0) = 0")
    elif query.filter == "errors":
        where.append("(" + " or ".join(f"k{i} is not null" for i in range(n)) + ")")
    if query.search.strip():
        where.append("hit = 1")
    sql = f"select * from ({inner})" + (f" where {' and '.join(where)}" if where else "")
    return sql, params


def matrix_page(store: Store, run_id: int, query: MatrixQuery, *, limit: int = 50, offset: int = 0) -> MatrixPage:
    """One page of the example matrix of a run (rows: examples; columns: the split's evaluations)."""
    if query.filter not in FILTERS:
        raise StoreError(f"unknown matrix filter {query.filter!r}; allowed: {', '.join(FILTERS)}")
    if query.split not in SPLITS:
        raise StoreError(f"unknown split {query.split!r}; allowed: {', '.join(SPLITS)}")
    limit = max(1, min(int(limit), MAX_PAGE))
    offset = max(0, int(offset))
    columns = tuple(list_evaluations(store, run_id, query.split))
    if not columns:
        return MatrixPage((), (), 0, offset, limit)
    sql, params = _matrix_sql(columns, query)
    db = store.db
    total = db.execute(f"select count(*) from ({sql})", params).fetchone()[0]
    rows = []
    for row in db.query(f"{sql} order by example_index limit ? offset ?", [*params, limit, offset]):
        cells = tuple(
            Cell(None if row[f"p{i}"] is None else bool(row[f"p{i}"]), row[f"s{i}"], row[f"k{i}"])
            if row[f"e{i}"] else None
            for i in range(len(columns))
        )
        rows.append(MatrixRow(row["example_index"], row["inputs"] or "", row["gold"] or "", cells))
    return MatrixPage(columns, tuple(rows), int(total), offset, limit)


def get_evaluation(store: Store, evaluation_id: int) -> Evaluation:
    """Evaluation ``evaluation_id`` (of any run); ``StoreError`` when there is none."""
    rows = list(store.db.query("select * from evaluations where id = ?", [evaluation_id]))
    if not rows:
        raise StoreError(f"no evaluation with id {evaluation_id}")
    return _evaluation(rows[0])


def paired_rows(store: Store, a: int, b: int) -> list[MatrixRow]:
    """The examples of evaluations ``a`` and ``b`` (of any runs: two strategies of a sweep) side by side,
    one row per example index with the cells (a, b); None where an evaluation has no such example."""
    sql = ("select example_index, min(substr(inputs, 1, 240)) as inputs, min(substr(gold, 1, 160)) as gold, "
           + ", ".join(f"max(case when evaluation_id = ? then {c} end) as {c}{i}" for i in (0, 1)
                       for c in ("passed", "score", "error_kind"))
           + ", max(case when evaluation_id = ? then 1 else 0 end) as e0, max(case when evaluation_id = ? then 1 "
             "else 0 end) as e1 from example_results where evaluation_id in (?, ?) group by example_index "
             "order by example_index")
    rows = store.db.query(sql, [a, a, a, b, b, b, a, b, a, b])
    return [MatrixRow(r["example_index"], r["inputs"] or "", r["gold"] or "", tuple(
        Cell(None if r[f"passed{i}"] is None else bool(r[f"passed{i}"]), r[f"score{i}"], r[f"error_kind{i}"])
        if r[f"e{i}"] else None for i in (0, 1))) for r in rows]


def example_trace(store: Store, evaluation_id: int, example_index: int) -> ExampleResult:
    """One example of one evaluation with its LM calls in call (pipeline) order."""
    db = store.db
    rows = list(db.query("select * from example_results where evaluation_id = ? and example_index = ?",
                         [evaluation_id, example_index]))
    if not rows:
        raise StoreError(f"evaluation {evaluation_id} has no example {example_index}")
    row = rows[0]
    calls = tuple(
        LMCall(seq=c["seq"], predictor=c["predictor"], model=c["model"],
               messages=_messages(db, evaluation_id, _loads(c["messages"])),
               completion=c["completion"], input_tokens=c["input_tokens"], output_tokens=c["output_tokens"],
               latency_ms=c["latency_ms"], error=c["error"])
        for c in db.query("select * from lm_calls where evaluation_id = ? and example_index = ? order by seq",
                          [evaluation_id, example_index])
    )
    return ExampleResult(index=row["example_index"], inputs=_loads(row["inputs"]), gold=_loads(row["gold"]),
                         outputs=_loads(row["outputs"]), score=row["score"],
                         passed=None if row["passed"] is None else bool(row["passed"]), error=row["error"],
                         error_kind=row["error_kind"], calls=calls)


def training_sets(store: Store, run_id: int) -> list[TrainingSet]:
    """Each (weight step, small LM) of a run with its row count and rows per source."""
    sets: dict[tuple[int, str], dict[str, int]] = {}
    for row in store.db.query(
        "select round_index, model, source, count(*) as n from training_rows where run_id = ? "
        "group by round_index, model, source order by round_index, model", [run_id]
    ):
        sets.setdefault((row["round_index"], row["model"]), {})[row["source"]] = row["n"]
    return [TrainingSet(r, m, sum(s.values()), s) for (r, m), s in sets.items()]


def _training_where(run_id: int, round_index: int, model: str, search: str) -> tuple[str, list[Any]]:
    where = "run_id = ? and round_index = ? and model = ?"
    params: list[Any] = [run_id, round_index, model]
    if search.strip():
        where += " and (messages like ? escape '\\' or outputs like ? escape '\\')"
        params += [_like(search.strip())] * 2
    return where, params


def _training_row(row: dict[str, Any]) -> TrainingRow:
    return TrainingRow(predictor=row["predictor"], messages=_loads(row["messages"]) or [],
                       outputs=_loads(row["outputs"]), source=row["source"], index=row["row_index"])


def training_rows_page(store: Store, run_id: int, round_index: int, model: str, *, search: str = "",
                       limit: int = 50, offset: int = 0) -> tuple[list[TrainingRow], int]:
    """One page of a training set (and the number of rows matching ``search``)."""
    where, params = _training_where(run_id, round_index, model, search)
    db = store.db
    total = db.execute(f"select count(*) from training_rows where {where}", params).fetchone()[0]
    rows = db.query(f"select * from training_rows where {where} order by row_index limit ? offset ?",
                    [*params, max(1, min(int(limit), MAX_PAGE)), max(0, int(offset))])
    return [_training_row(r) for r in rows], int(total)


def iter_training_rows(store: Store, run_id: int, round_index: int, model: str) -> Iterator[TrainingRow]:
    where, params = _training_where(run_id, round_index, model, "")
    for row in store.db.query(f"select * from training_rows where {where} order by row_index", params):
        yield _training_row(row)


def training_jsonl(store: Store, run_id: int, round_index: int, model: str) -> str:
    """The training set in the chat format it was trained in: one ``{"messages": [...]}`` per line."""
    return "".join(_json({"messages": r.messages}) + "\n" for r in iter_training_rows(store, run_id, round_index, model))


def label_distribution(store: Store, run_id: int, round_index: int, model: str,
                       max_length: int = 40) -> dict[str, dict[str, int]]:
    """How often each short output value occurs in a training set, per output field (labels)."""
    out: dict[str, dict[str, int]] = {}
    for row in store.db.query(
        "select j.key as field, j.value as value, count(*) as n from training_rows, json_each(training_rows.outputs) j "
        "where run_id = ? and round_index = ? and model = ? and j.type = 'text' and length(j.value) <= ? "
        "and j.key != 'reasoning' group by j.key, j.value order by j.key, n desc",
        [run_id, round_index, model, max_length],
    ):
        out.setdefault(row["field"], {})[row["value"]] = row["n"]
    return out


def cell_outputs(store: Store, run_id: int, split: str, max_chars: int = 400) -> Iterator[tuple[int, int, str, str | None]]:
    """(evaluation id, example index, outputs JSON cut to ``max_chars``, error) of every result of a split."""
    for row in store.db.execute(
        "select evaluation_id, example_index, substr(outputs, 1, ?), substr(error, 1, ?) from example_results "
        "where run_id = ? and split = ? order by example_index, evaluation_id", [max_chars, max_chars, run_id, split]
    ):
        yield row[0], row[1], row[2], row[3]
