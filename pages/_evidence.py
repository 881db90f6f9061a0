"""The evidence sections of the Results page: example matrix and traces, round diffs, training rows, report.

Every query is paged in SQL by ``core.store.evidence``; this module only reads widgets and renders.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.evidence.diff import diff_html, proposed_candidates, round_diff
from core.evidence.report import build_report
from core.store.evidence import (
    FILTERS,
    SPLITS,
    Evaluation,
    MatrixQuery,
    example_trace,
    label_distribution,
    list_evaluations,
    matrix_page,
    training_jsonl,
    training_rows_page,
    training_sets,
)
from core.store.records import Round, Run
from core.views.charts import LOSS_KINDS, label_figure, loss_figure
from core.views.charts import round_label as strategy_label
from core.views.evidence import (
    FILTER_LABELS,
    cell_style,
    column_label,
    gold_vs_prediction,
    loss_events,
    matrix_records,
    sources_legend,
    trace_steps,
    training_record,
)
from pages._ui import store

PAGE_ROWS = 50
SPLIT_LABELS = {"val": "validation (rounds)", "test": "test"}


def _pager(key: str, total: int, size: int) -> int:
    """A page number input bounded by the row count; returns the offset."""
    pages = max(1, -(-total // size))
    if st.session_state.get(key, 1) > pages:
        st.session_state[key] = 1
    number = st.number_input(f"Page (of {pages})", min_value=1, max_value=pages, step=1, key=key)
    return (int(number) - 1) * size


def examples(run: Run) -> None:
    evaluations = list_evaluations(store(), run.id)
    if not evaluations:
        st.info("This run has no per-example results: it was recorded before they were kept, or it stopped "
                "before its first evaluation.")
        return
    splits = [s for s in SPLITS if any(e.split == s for e in evaluations)]
    top = st.columns([2, 3, 2, 2, 3])
    split = top[0].radio("Split", splits, format_func=SPLIT_LABELS.get, key=f"mx_split_{run.id}")
    columns = [e for e in evaluations if e.split == split]
    labels = [column_label(c) for c in columns]
    chosen = top[1].selectbox("Show", FILTERS, format_func=FILTER_LABELS.get, key=f"mx_filter_{run.id}")
    a = top[2].selectbox("A", range(len(columns)), format_func=labels.__getitem__, key=f"mx_a_{run.id}_{split}")
    b = top[3].selectbox("B", range(len(columns)), index=len(columns) - 1, format_func=labels.__getitem__,
                         key=f"mx_b_{run.id}_{split}")
    search = top[4].text_input("Search inputs, gold, outputs", key=f"mx_q_{run.id}")
    query = MatrixQuery(split=split, filter=chosen, a=a, b=b, search=search)
    total = matrix_page(store(), run.id, query, limit=1).total
    offset = _pager(f"mx_page_{run.id}_{split}_{chosen}_{a}_{b}_{search}", total, PAGE_ROWS)
    page = matrix_page(store(), run.id, query, limit=PAGE_ROWS, offset=offset)
    st.caption(f"{page.total} of {columns[0].examples} examples shown by this filter · ✓ pass · ✗ fail · "
               "⚠ parse or LM error · select a row (column B) or a cell to open its trace")
    if not page.rows:
        st.info("No example matches this filter.")
        return
    table = pd.DataFrame(matrix_records(page))
    event = st.dataframe(table.style.map(cell_style, subset=labels), hide_index=True, width="stretch",
                         on_select="rerun", selection_mode=["single-row", "single-cell"],
                         key=f"mx_table_{run.id}_{split}_{chosen}_{a}_{b}_{search}_{offset}")
    row, column = _selected(event, labels, b)
    indices = [r.example_index for r in page.rows]
    picked = st.selectbox("Trace of example", indices, index=row if row is not None else 0,
                          key=f"mx_pick_{run.id}_{offset}_{row}")
    column = st.selectbox("In", range(len(columns)), index=column, format_func=labels.__getitem__,
                          key=f"mx_col_{run.id}_{split}_{column}")
    trace(columns[column], picked)


def _selected(event, labels: list[str], default_column: int) -> tuple[int | None, int]:
    """(row position, column position) of the table selection; the column is B unless a cell was picked."""
    selection = getattr(event, "selection", None)
    if selection is None:
        return None, default_column
    cells = list(getattr(selection, "cells", []) or [])
    if cells:
        position, name = cells[0]
        return int(position), labels.index(name) if name in labels else default_column
    rows = list(getattr(selection, "rows", []) or [])
    return (int(rows[0]) if rows else None), default_column


def trace(evaluation: Evaluation, example_index: int) -> None:
    """The example's modules in pipeline order: each prompt as sent and its answer; gold next to prediction."""
    result = example_trace(store(), evaluation.id, example_index)
    verdict = "⚠ " + (result.error or "error") if result.error else ("✓ pass" if result.passed else "✗ fail")
    score = "-" if result.score is None else f"{result.score:.2f}"
    st.markdown(f"#### Trace: example {example_index} in {column_label(evaluation)}")
    st.caption(f"score {score} · {verdict} · {len(result.calls)} LM calls")
    st.dataframe(pd.DataFrame(gold_vs_prediction(result)), hide_index=True, width="stretch",
                 key=f"gold_{evaluation.id}_{example_index}")
    for step in trace_steps(result):
        title = f"{step.position}. {step.predictor} · {step.model} · {step.tokens} · {step.latency}"
        with st.expander(title, expanded=step.position <= 2):
            for message in step.messages:
                st.markdown(f"**{message.get('role', '?')}**")
                st.code(str(message.get("content", "")), language=None, wrap_lines=True)
            st.markdown("**answer**")
            if step.error:
                st.error(step.error)
            st.code(step.answer, language=None, wrap_lines=True)


def diffs(run: Run) -> None:
    rounds = store().list_rounds(run.id)
    if len(rounds) < 2:
        st.info("Diffs need two recorded rounds.")
        return
    indices = [r.index for r in rounds]
    names = {r.index: f"r{r.index} {strategy_label(r.strategy)}" for r in rounds}
    best = next((r.index for r in rounds if r.is_best), indices[-1])
    left, right = st.columns(2)
    a = left.selectbox("From round", indices, format_func=names.get, key=f"diff_a_{run.id}")
    b = right.selectbox("To round", indices, index=indices.index(best if best != a else indices[-1]),
                        format_func=names.get, key=f"diff_b_{run.id}")
    for d in round_diff(store(), run.id, a, b):
        st.markdown(f"##### {d.name}")
        st.caption(f"model: `{d.model_a}` ({d.served_a}) → `{d.model_b}` ({d.served_b}) · demos: "
                   f"{len(d.demos_added)} added, {len(d.demos_removed)} removed, {len(d.demos_kept)} kept")
        if d.instructions_changed:
            st.html(f"<div style='white-space:pre-wrap;border:1px solid #eee;padding:8px'>{diff_html(d.words)}</div>")
        else:
            st.caption("instructions unchanged")
        for title, demos in (("added", d.demos_added), ("removed", d.demos_removed), ("kept", d.demos_kept)):
            if demos:
                st.markdown(f"demos {title}")
                st.dataframe(pd.DataFrame(list(demos)), hide_index=True, width="stretch",
                             key=f"demos_{run.id}_{a}_{b}_{d.name}_{title}")
    candidates(run, next(r for r in rounds if r.index == b))


def candidates(run: Run, round_: Round) -> None:
    """The instructions the prompt step of ``round_`` tried (GEPA's candidates), with their scores."""
    tried = proposed_candidates(store(), run.id, round_.strategy)
    if not tried:
        return
    st.markdown(f"##### Candidates the step of round {round_.index} tried ({len(tried)})")
    for c in tried:
        with st.expander(c.label):
            if not c.changes:
                st.caption("instructions as the step started")
            for name, words in c.changes:
                st.markdown(f"`{name}`")
                st.html(f"<div style='white-space:pre-wrap;border:1px solid #eee;padding:8px'>{diff_html(words)}</div>")


def training(run: Run) -> None:
    sets = training_sets(store(), run.id)
    if not sets:
        st.info("No weight step of this run recorded training rows.")
        return
    rounds = {r.index: r for r in store().list_rounds(run.id)}
    options = list(range(len(sets)))

    def name(i: int) -> str:
        s = sets[i]
        strategy = rounds[s.round_index].strategy if s.round_index in rounds else "?"
        return f"r{s.round_index} {strategy}: {s.model}"

    chosen = sets[st.selectbox("Weight step and small LM", options, format_func=name, key=f"tr_set_{run.id}")]
    strategy = rounds[chosen.round_index].strategy if chosen.round_index in rounds else ""
    st.caption(f"{chosen.rows} training rows · sources: {sources_legend(chosen.sources)}")
    left, right = st.columns(2)
    distribution = label_distribution(store(), run.id, chosen.round_index, chosen.model)
    if distribution:
        left.plotly_chart(label_figure(distribution, "Labels trained on"), width="stretch",
                          key=f"tr_labels_{run.id}_{chosen.round_index}_{chosen.model}")
    events = loss_events(store().list_events(run.id, kinds=LOSS_KINDS), strategy, chosen.model)
    if events:
        right.plotly_chart(loss_figure(events, "Loss"), width="stretch",
                           key=f"tr_loss_{run.id}_{chosen.round_index}_{chosen.model}")
    search = st.text_input("Search the training rows", key=f"tr_q_{run.id}")
    total = training_rows_page(store(), run.id, chosen.round_index, chosen.model, search=search, limit=1)[1]
    offset = _pager(f"tr_page_{run.id}_{chosen.round_index}_{chosen.model}_{search}", total, PAGE_ROWS)
    rows, _ = training_rows_page(store(), run.id, chosen.round_index, chosen.model, search=search,
                                 limit=PAGE_ROWS, offset=offset)
    st.dataframe(pd.DataFrame([training_record(r) for r in rows]), hide_index=True, width="stretch",
                 key=f"tr_rows_{run.id}_{chosen.round_index}_{chosen.model}_{search}_{offset}")
    the_store, round_index, model = store(), chosen.round_index, chosen.model
    st.download_button("Download the training rows (JSONL, chat format)",
                       lambda: training_jsonl(the_store, run.id, round_index, model),
                       file_name=f"run-{run.id}-r{round_index}-{model.replace('/', '_')}.jsonl",
                       mime="application/jsonl", icon=":material/download:", key=f"tr_dl_{run.id}_{round_index}_{model}",
                       on_click="ignore")  # a download needs no rerun (one could replace a button being clicked)


def report_button(run: Run) -> None:
    """Download the run's self-contained HTML report (generated when clicked)."""
    the_store = store()
    st.download_button("Download report (.html)", lambda: build_report(the_store, run.id),
                       file_name=f"run-{run.id}-report.html", mime="text/html", icon=":material/summarize:",
                       key=f"report_{run.id}", on_click="ignore")
