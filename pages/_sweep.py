"""The Sweep view of the Results page: which strategy won, by how much and with what confidence.

The view models are ``core.views.sweep``'s; this module only reads widgets and renders.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.evidence.sweep import compare_strategies
from core.evidence.sweep_report import build_sweep_report
from core.store.evidence import get_evaluation
from core.store.sweep_records import Sweep, SweepSummary
from core.views.evidence import cell_style
from core.views.sweep import (
    children_rows,
    cost_rows,
    current_summary,
    default_b,
    pair_columns,
    pair_counts,
    pair_records,
    paired_examples,
    paper_table,
    sharing_line,
    sweep_figure,
    table_markdown,
    verdicts,
)
from pages._evidence import trace
from pages._ui import pick_in_url, store

OUTCOME_COLORS = {"A wins": "background-color: #e3f6e3", "B wins": "background-color: #fde2e2"}


def pick_sweep(sweeps: list[Sweep]) -> Sweep:
    picked = pick_in_url("Sweep", "sweep", sweeps)
    return next(s for s in sweeps if s.id == picked)

def sweep_view(sweeps: list[Sweep]) -> None:
    sweep = pick_sweep(sweeps)
    summary = current_summary(store(), sweep)
    st.subheader(f"Sweep #{sweep.id}: {sweep.status.value}")
    if sweep.error:
        st.warning(sweep.error)
    if not sweep.status.is_terminal:
        st.info("The sweep is running: the results below are those of the runs that ended so far.")
    for line in verdicts(summary):
        (st.success if line.kind == "beats" else st.info)(line.text)
    st.markdown("#### Test score per strategy and seed")
    st.markdown(table_markdown(paper_table(summary)))
    st.caption("Each strategy's score is the round a run of it alone keeps (its best on validation), scored on "
               "the test split; the best of each column in bold.")
    st.plotly_chart(sweep_figure(summary), width="stretch", key=f"sweep_chart_{sweep.id}")
    st.markdown("#### Time and cost per strategy")
    st.dataframe(pd.DataFrame(cost_rows(summary)), hide_index=True, width="stretch")
    st.caption(sharing_line(summary))
    pair_matrix(sweep, summary)
    with st.expander("The sweep's runs", expanded=False):
        st.dataframe(pd.DataFrame(children_rows(summary.children)), hide_index=True, width="stretch")
    the_store = store()
    st.download_button("Download sweep report (.html)", lambda: build_sweep_report(the_store, sweep.id),
                       file_name=f"sweep-{sweep.id}-report.html", mime="text/html", icon=":material/summarize:",
                       key=f"sweep_report_{sweep.id}", on_click="ignore")


def pair_matrix(sweep: Sweep, summary: SweepSummary) -> None:
    """Two strategies on the same test examples: the comparison, then each example's marks and who won."""
    st.markdown("#### Two strategies, example by example")
    strategies = list(summary.strategies)
    if len(strategies) < 2:
        st.info("A sweep of one strategy has nothing to compare.")
        return
    first = summary.best or strategies[0]
    top = st.columns([2, 2, 3])
    a = top[0].selectbox("A", strategies, index=strategies.index(first), key=f"sw_a_{sweep.id}")
    others = [s for s in strategies if s != a]
    b = top[1].selectbox("B", others, index=others.index(default_b(summary, a)), key=f"sw_b_{sweep.id}_{a}")
    changed = top[2].radio("Show", ["wins and losses", "all paired examples"], horizontal=True,
                           key=f"sw_show_{sweep.id}") == "wins and losses"
    comparison = compare_strategies(store(), sweep.id, a, b)
    (st.success if comparison.significant else st.info)(comparison.sentence + ".")
    examples = paired_examples(store(), summary, a, b)
    counts = pair_counts(examples)
    st.caption(f"{counts['win']} examples where A ({a}) scores higher, {counts['loss']} where B ({b}) does, "
               f"{counts['tie']} ties, on {len(examples)} paired test answers (examples x seeds) · ✓ pass · ✗ fail · "
               "⚠ parse or LM error · select a row to open both traces")
    records = pair_records(examples, a, b, changed_only=changed)
    if not records:
        st.info("No example differs between A and B." if changed else "No paired test answers yet.")
        return
    col_a, col_b = pair_columns(a, b)
    table = pd.DataFrame(records)
    event = st.dataframe(table.style.map(cell_style, subset=[col_a, col_b]).map(
        lambda v: OUTCOME_COLORS.get(v, ""), subset=["outcome"]), hide_index=True, width="stretch",
        on_select="rerun", selection_mode="single-row", key=f"sw_matrix_{sweep.id}_{a}_{b}_{changed}")
    rows = list(getattr(getattr(event, "selection", None), "rows", []) or [])
    if rows:
        shown = [e for e in examples if not changed or e.outcome != "tie"][int(rows[0])]
        traces(shown.a_evaluation, shown.b_evaluation, shown.example_index, a, b)


def traces(a_evaluation: int, b_evaluation: int, example_index: int, a: str, b: str) -> None:
    if a_evaluation == b_evaluation:
        st.caption(f"{a} and {b} keep the same round here: one program, one trace.")
        trace(get_evaluation(store(), a_evaluation), example_index)
        return
    left, right = st.columns(2)
    for col, evaluation, name in ((left, a_evaluation, f"A: {a}"), (right, b_evaluation, f"B: {b}")):
        with col:
            st.markdown(f"**{name}**")
            trace(get_evaluation(store(), evaluation), example_index)
