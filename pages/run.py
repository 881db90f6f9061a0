"""Run: start the configured run and watch it live (the view reads the store every second)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import document
from core.config import trust
from core.config.schema import RunDraft
from core.store.records import RunStatus
from core.tracking import tracking_target
from core.views.charts import (
    compare_test_scores,
    label_figure,
    loss_figure,
    phases_figure,
    round_label,
    score_figure,
    timeline_figure,
    usage_figure,
    usage_rows,
)
from core.views.monitor import RunSnapshot, run_snapshot, tracking_warning, truncation_notes
from core.views.rounds import round_table
from pages._ui import allowed_files, api_keys, doc, guarded, manager, resume_button, store

STATUS_ICONS = {
    RunStatus.QUEUED: ":material/hourglass_top:", RunStatus.RUNNING: ":material/autorenew:",
    RunStatus.FINISHED: ":material/check_circle:", RunStatus.FAILED: ":material/error:",
    RunStatus.CANCELLED: ":material/cancel:", RunStatus.INTERRUPTED: ":material/power_off:",
}


def summary(current: RunDraft) -> None:
    program = current.program
    what = program.name if program.kind == "template" else program.kind
    lms = ", ".join(f"{n} ({document.lm_model(s).split(':')[0]})" for n, s in current.lms.items())
    source = current.data.source
    data = source.name if source.kind == "sample" else source.path.rsplit("/", 1)[-1]
    st.markdown(f"**Program** `{what}` · **Data** `{data}` · **Strategy** `{current.strategy}` · "
                f"**LMs** {lms}")


def start_section() -> None:
    current = doc()
    summary(current)
    if urls := trust.endpoints(current):
        st.caption("On Start, requests (with the LM's API key) go to " + ", ".join(f"`{u}`" for u in urls) + ".")
    if target := tracking_target(current):
        st.caption(f"The run is logged to MLflow ({target.describe()}): config `tracking`, or `MLFLOW_TRACKING_URI`.")
    problems = document.run_problems(current, api_keys(), allowed_files())  # cheap and local: no LM, no network
    clicked = st.button("Start run", type="primary", disabled=bool(problems), icon=":material/play_arrow:")
    if problems:
        st.error("The run cannot start yet:\n\n" + "\n".join(f"- {p}" for p in problems))
    if clicked:
        with st.spinner("Checking the configuration and loading the models..."):
            run_id = manager().start(document.build_config(current, api_keys()))
        st.query_params["run"] = str(run_id)
        st.rerun()


def chosen_run() -> int | None:
    runs = store().list_runs(50)
    if not runs:
        return None
    ids = [r.id for r in runs]
    wanted = st.query_params.get("run")
    current = int(wanted) if wanted and wanted.isdigit() and int(wanted) in ids else ids[0]
    labels = {r.id: f"#{r.id} {r.name} ({r.status.value})" for r in runs}
    picked = st.selectbox("Run", ids, index=ids.index(current), format_func=labels.get)
    if str(picked) != st.query_params.get("run"):
        st.query_params["run"] = str(picked)
    return picked


def status_line(snap: RunSnapshot) -> None:
    run = snap.run
    st.markdown(f"### {STATUS_ICONS.get(run.status, '')} Run #{run.id}: {run.status.value}")
    if run.status == RunStatus.QUEUED:
        st.info(f"Queued: position {run.queue_position or '?'} (runs on the embedded CPU models go one at a time).")
    if run.error:
        (st.warning if run.status == RunStatus.CANCELLED else st.error)(run.error)
    st.caption(f"{len(snap.rounds)} of {len(snap.planned)} rounds recorded")
    if snap.progress is not None:
        fraction = snap.progress.fraction
        if fraction is None:
            done = len(snap.rounds) / max(len(snap.planned), 1)
            st.progress(min(done, 1.0), text=f"Current step {snap.progress.text}")
        else:
            st.progress(fraction, text=f"Current step {snap.progress.text}")
    cols = st.columns(4)
    cols[0].metric("Baseline (val)", _score(run.baseline_score if run.baseline_score is not None
                                            else (snap.rounds[0].score if snap.rounds else None)))
    best = next((r for r in snap.rounds if r.is_best), None)  # the stored best, as everywhere else
    cols[1].metric("Best (val)", _score(run.best_score if run.best_score is not None else (best.score if best else None)),
                   help=f"strategy {(run.best_strategy or (best.strategy if best else '')) or 'baseline'}")
    cols[2].metric("Test: baseline", _score(run.test_baseline_score))
    cols[3].metric("Test: best", _score(run.test_best_score))
    if compared := compare_test_scores(run.test_baseline_score, run.test_best_score, run.best_strategy):
        getattr(st, compared[0])(compared[1])


def _score(value: float | None) -> str:
    """A score of 0-100 (the metric's mean, in percent) with one decimal, or "-" when there is none."""
    return "-" if value is None else f"{value:.1f} %"


def live_view(run_id: int) -> None:
    snap = run_snapshot(store(), run_id)
    status_line(snap)
    if snap.is_active and st.button("Cancel run (keeps the best program so far)", icon=":material/stop:"):
        if manager().cancel(run_id):
            st.toast("Cancel requested: the run stops after the current call or training step.")
        else:
            st.warning("This run has already ended.")
    resume_button(run_id, snap.run.status)
    left, right = st.columns(2)
    left.plotly_chart(score_figure(snap.rounds, snap.planned), width="stretch", key=f"score_{run_id}")
    right.plotly_chart(timeline_figure(snap.rounds, snap.step_kinds), width="stretch",
                       key=f"timeline_{run_id}")
    left, right = st.columns(2)
    if snap.train_events:
        left.plotly_chart(loss_figure(snap.train_events), width="stretch", key=f"loss_{run_id}")
    else:
        left.info("The fine-tuning loss appears here during weight steps.")
    if snap.rounds:
        right.plotly_chart(usage_figure(snap.rounds), width="stretch", key=f"usage_{run_id}")
        right.dataframe(pd.DataFrame(usage_rows(snap.rounds)), hide_index=True, width="stretch")
    if snap.rounds:
        left, right = st.columns(2)
        left.plotly_chart(phases_figure(snap.rounds), width="stretch", key=f"phases_{run_id}")
        trained = [r for r in snap.rounds if r.details.traces is not None and r.details.traces.labels]
        if trained:
            traces = trained[-1].details.traces
            right.plotly_chart(label_figure(traces.labels, title=f"Training rows per label value "
                                            f"('{round_label(trained[-1].strategy)}', balance {traces.balance})"),
                               width="stretch", key=f"labels_{run_id}")
    st.subheader("Rounds")
    if snap.rounds:
        st.dataframe(pd.DataFrame(round_table(snap.rounds)), hide_index=True, width="stretch")
    for message in truncation_notes(snap.rounds):
        st.warning(message, icon=":material/content_cut:")
    if tracking := tracking_warning(snap.log):
        st.warning(tracking, icon=":material/cloud_off:")
    with st.expander("Event log", expanded=False):
        st.dataframe(pd.DataFrame([
            {"time": e.time[11:19], "kind": e.kind, "message": e.message} for e in reversed(snap.log)
        ]), hide_index=True, width="stretch", height=260)


def body() -> None:
    st.title("Run")
    start_section()
    st.divider()
    run_id = chosen_run()
    if run_id is None:
        st.info("No runs yet. The defaults are ready: press **Start run** above.")
        return
    active = not store().get_run(run_id).status.is_terminal

    @st.fragment(run_every=1.0 if active else None)
    def refresh() -> None:
        guarded(lambda: live_view(run_id))
        if active and store().get_run(run_id).status.is_terminal:
            st.rerun()

    refresh()


guarded(body)
