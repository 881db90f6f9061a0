"""Run: start the configured run (or sweep) and watch it live (the view reads the store every second)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import document
from core.config import trust
from core.config.schema import RunDraft
from core.store import RESUMABLE
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
from core.views.monitor import RunSnapshot, run_snapshot, tracking_warning, training_notes, truncation_notes
from core.views.rounds import round_table
from core.views.sweep import children_rows, current_summary, live_children, sweep_progress, verdicts
from pages._ui import allowed_files, api_keys, doc, guarded, manager, pick_in_url, resume_button, store, sweeps

FOLLOWED = "sweep_followed"  # session: sweep id -> the child run the live view last followed

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
    if current.sweep is not None:
        plan = (f"**Sweep** {', '.join(f'`{s}`' for s in current.sweep.strategies)} x seeds "
                f"{', '.join(str(s) for s in current.sweep.seeds)}")
    else:
        plan = f"**Strategy** `{current.strategy}`"
    st.markdown(f"**Program** `{what}` · **Data** `{data}` · {plan} · **LMs** {lms}")


def start_section() -> None:
    current = doc()
    summary(current)
    if urls := trust.endpoints(current):
        st.caption("On Start, requests (with the LM's API key) go to " + ", ".join(f"`{u}`" for u in urls) + ".")
    if target := tracking_target(current):
        st.caption(f"The run is logged to MLflow ({target.describe()}): config `tracking`, or `MLFLOW_TRACKING_URI`.")
    problems = document.run_problems(current, api_keys(), allowed_files())  # cheap and local: no LM, no network
    what = "run" if current.sweep is None else "sweep"
    clicked = st.button(f"Start {what}", type="primary", disabled=bool(problems), icon=":material/play_arrow:")
    if problems:
        st.error(f"The {what} cannot start yet:\n\n" + "\n".join(f"- {p}" for p in problems))
    if clicked and current.sweep is not None:
        with st.spinner("Checking the configuration once for every run of the sweep..."):
            sweep_id = sweeps().start(document.build_config(current, api_keys()))  # typed keys reach every run
        st.query_params["sweep"] = str(sweep_id)
        st.query_params.pop("run", None)  # the live view follows the sweep's running child
        st.rerun()
    if clicked:
        with st.spinner("Checking the configuration and loading the models..."):
            run_id = manager().start(document.build_config(current, api_keys()))
        st.query_params["run"] = str(run_id)
        st.rerun()


def chosen_run() -> int | None:
    runs = store().list_runs(50)
    if not runs:
        return None
    return pick_in_url("Run", "run", runs)


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
    for line in training_notes(snap.rounds):
        st.caption(line)
    for message in truncation_notes(snap.rounds):
        st.warning(message, icon=":material/content_cut:")
    if tracking := tracking_warning(snap.log):
        st.warning(tracking, icon=":material/cloud_off:")
    with st.expander("Event log", expanded=False):
        st.dataframe(pd.DataFrame([
            {"time": e.time[11:19], "kind": e.kind, "message": e.message} for e in reversed(snap.log)
        ]), hide_index=True, width="stretch", height=260)


def chosen_sweep(current: RunDraft) -> int | None:
    """The sweep to show: the one in the URL; else the newest, while it runs or when the draft is a sweep."""
    found = store().list_sweeps(50)
    if not found:
        return None
    wanted = st.query_params.get("sweep")
    named = wanted and wanted.isdigit() and int(wanted) in {s.id for s in found}
    if not named and current.sweep is None and found[0].status.is_terminal:
        return None
    return pick_in_url("Sweep", "sweep", found)  # the URL's sweep, else the newest


def _follow(sweep_id: int, running: int | None) -> None:
    """Show the sweep's running child below while the user watches the one it ran before (or none)."""
    followed = st.session_state.setdefault(FOLLOWED, {})
    last = followed.get(sweep_id)
    if running is None or running == last:
        return
    followed[sweep_id] = running
    if last is None or st.query_params.get("run") in (None, str(last)):
        st.query_params["run"] = str(running)
        st.rerun()


def sweep_view(sweep_id: int) -> None:
    sweep = store().get_sweep(sweep_id)
    st.markdown(f"### {STATUS_ICONS.get(sweep.status, '')} Sweep #{sweep.id}: {sweep.status.value}")
    if sweep.error:
        (st.warning if sweep.status == RunStatus.CANCELLED else st.error)(sweep.error)
    children = live_children(store(), sweep)
    progress = sweep_progress(children)
    st.progress(progress.fraction, text=progress.text)
    st.dataframe(pd.DataFrame(children_rows(children)), hide_index=True, width="stretch")
    c1, c2, c3 = st.columns(3)
    if not sweep.status.is_terminal and c1.button("Cancel sweep (keeps the finished runs)", icon=":material/stop:",
                                                  key=f"cancel_sweep_{sweep_id}"):
        if sweeps().cancel(sweep_id):
            st.toast("Cancel requested: the running run stops, no other one starts.")
        else:
            st.warning("This sweep has already ended.")
    if sweep.status in RESUMABLE and c1.button("Resume sweep (runs what did not finish)", icon=":material/replay:",
                                               key=f"resume_sweep_{sweep_id}"):
        sweeps().resume(sweep_id, api_keys=api_keys())
        st.rerun()
    started = [c.run_id for c in children if c.run_id is not None]
    if started:
        labels = {c.run_id: f"#{c.run_id} '{c.strategy}' seed {c.seed} ({c.status})" for c in children if c.run_id}
        shown_run = st.query_params.get("run")
        options = [None, *started]
        index = options.index(int(shown_run)) if shown_run and shown_run.isdigit() and int(shown_run) in started else 0
        picked = c2.selectbox("Watch a run of this sweep", options, index=index, key=f"watch_{sweep_id}_{shown_run}",
                              format_func=lambda i: "(another run)" if i is None else labels[i])
        if picked is not None and str(picked) != shown_run:
            st.query_params["run"] = str(picked)
            st.rerun()
    if sweep.status.is_terminal:
        for line in verdicts(current_summary(store(), sweep)):
            (st.success if line.kind == "beats" else st.info)(line.text)
        if c3.button("Open the Sweep view (Results)", icon=":material/leaderboard:", key=f"results_{sweep_id}"):
            st.switch_page("pages/results.py", query_params={"sweep": str(sweep_id)})
    else:
        _follow(sweep_id, next((c.run_id for c in progress.running), None))


def body() -> None:
    st.title("Run")
    start_section()
    st.divider()
    sweep_id = chosen_sweep(doc())
    if sweep_id is not None:
        sweep_active = not store().sweep_status(sweep_id).is_terminal

        @st.fragment(run_every=1.0 if sweep_active else None)
        def sweep_refresh() -> None:
            guarded(lambda: sweep_view(sweep_id))
            if sweep_active and store().sweep_status(sweep_id).is_terminal:
                st.rerun()

        sweep_refresh()
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
