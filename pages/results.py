"""Results: run history, round table, the example matrix with traces, round diffs, training rows,
baseline vs best per predictor, playground, comparison, export and the shareable report; the Sweep
view (which strategy won, by how much, with what confidence) for sweeps."""

from __future__ import annotations

import json
from datetime import datetime

import pandas as pd
import streamlit as st

from core.bundles.export import export_run, predict
from core.bundles.saved import describe_program, load_run_program
from core.config.schema import config_to_json
from core.config.strategy import strategy_prefixes
from core.errors import StudioError
from core.paths import studio_home
from core.store.records import Run
from core.views.charts import compare_test_scores, comparison_figure, score_figure
from core.views.rounds import round_table
from pages._evidence import diffs, examples, report_button, training
from pages._sweep import sweep_view
from pages._ui import guarded, pick_in_url, store

LOAD_SNIPPET = '''from core.bundles.export import load_bundle, predict

program = load_bundle("{file}")          # the best program, with its fine-tuned weights
print(predict(program, {inputs}))
# or: python -m core predict {file} --input '{inputs_json}'
'''


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _duration(run: Run) -> str:
    if not run.started_at:
        return "-"
    end = datetime.fromisoformat(run.finished_at) if run.finished_at else None
    if end is None:
        return "running"
    seconds = (end - datetime.fromisoformat(run.started_at)).total_seconds()
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def history(runs: list[Run]) -> None:
    st.subheader("Run history")
    st.dataframe(pd.DataFrame([
        {"run": r.id, "name": r.name, "status": r.status.value, "strategy": r.strategy,
         "baseline (val)": _score(r.baseline_score), "best (val)": _score(r.best_score),
         "best strategy": (r.best_strategy or "baseline") if r.best_score is not None else "-",
         "test baseline": _score(r.test_baseline_score), "test best": _score(r.test_best_score),
         "duration": _duration(r), "created": r.created_at[:19].replace("T", " ")} for r in runs
    ]), hide_index=True, width="stretch")


def pick_run(runs: list[Run]) -> Run:
    picked = pick_in_url("Run details", "run", runs)
    return next(r for r in runs if r.id == picked)

def rounds_tab(run: Run) -> None:
    rounds = store().list_rounds(run.id)
    if not rounds:
        st.info("This run recorded no rounds (it stopped before its baseline was evaluated).")
        return
    planned = strategy_prefixes(run.strategy) if run.strategy else []
    cols = st.columns(2)
    cols[0].metric("Test: baseline", _score(run.test_baseline_score))
    cols[1].metric("Test: best", _score(run.test_best_score), help=f"strategy {run.best_strategy or 'baseline'}")
    if compared := compare_test_scores(run.test_baseline_score, run.test_best_score, run.best_strategy):
        getattr(st, compared[0])(compared[1])
    st.plotly_chart(score_figure(rounds, planned), width="stretch", key=f"detail_score_{run.id}")
    st.dataframe(pd.DataFrame(round_table(rounds)), hide_index=True, width="stretch")


def _programs(run: Run):
    cache = st.session_state.setdefault("loaded_programs", {})
    key = (str(store().path), run.id)
    if key not in cache:
        with st.spinner("Loading the baseline and best programs..."):
            cache[key] = (load_run_program(store(), run.id, "baseline_program"),
                          load_run_program(store(), run.id, "best_program"))
    return cache[key]


def compare_programs(run: Run) -> None:
    baseline, best = _programs(run)
    for before, after in zip(describe_program(baseline), describe_program(best), strict=True):
        with st.expander(f"{after.name}", expanded=False):
            left, right = st.columns(2)
            for col, view, title in ((left, before, "Baseline"), (right, after, f"Best ({run.best_strategy or 'baseline'})")):
                col.markdown(f"**{title}** · model `{view.model}` · {len(view.demos)} demos")
                col.text_area("Instructions", view.instructions, height=110, disabled=True,
                              key=f"ins_{run.id}_{view.name}_{title}")
                if view.demos:
                    col.dataframe(pd.DataFrame(view.demos), hide_index=True, width="stretch", height=180)


def playground(run: Run) -> None:
    if run.config is None:
        st.warning(f"This run's saved configuration cannot be read: {run.config_problem}")
        return
    config = run.config
    with st.form(f"playground_{run.id}"):
        inputs = {f: st.text_area(f, "", height=90) for f in config.data.inputs}
        go = st.form_submit_button("Run baseline and best", icon=":material/play_arrow:")
    if go:
        if not all(v.strip() for v in inputs.values()):
            st.error(f"Fill in every input field: {', '.join(config.data.inputs)}.")
            return
        baseline, best = _programs(run)
        left, right = st.columns(2)
        for col, program, title in ((left, baseline, "Baseline"), (right, best, "Best")):
            with col, st.spinner(f"{title}..."):
                try:
                    col.markdown(f"**{title}**")
                    col.json(predict(program, inputs))
                except StudioError as e:
                    col.error(str(e))
                except Exception as e:  # noqa: BLE001 - the LM may fail on an odd input
                    col.error(f"The program failed on this input: {type(e).__name__}: {e}")


def comparison(runs: list[Run]) -> None:
    with_rounds = [r for r in runs if r.baseline_score is not None or r.best_score is not None]
    if len(with_rounds) < 2:
        st.info("Finish two or more runs to compare them here.")
        return
    labels = {r.id: f"#{r.id} {r.strategy}" for r in with_rounds}
    picked = st.multiselect("Runs to compare", list(labels), default=list(labels)[:3], format_func=labels.get)
    if len(picked) >= 2:
        series = {labels[i]: store().list_rounds(i) for i in picked}
        st.plotly_chart(comparison_figure(series), width="stretch", key="comparison")


def export(run: Run) -> None:
    report_button(run)
    if run.config is not None:
        st.download_button("Download config JSON", config_to_json(run.config), file_name=f"run-{run.id}-config.json",
                           mime="application/json", key=f"cfg_{run.id}", on_click="ignore")
    if not store().list_artifacts(run.id, "best_program"):
        st.info("This run has no best program to export (it stopped before its baseline was evaluated).")
        return
    target = studio_home() / "exports" / f"run-{run.id}.zip"
    if st.button("Prepare bundle (.zip)", icon=":material/inventory_2:"):
        with st.spinner("Writing the bundle (program, weights, rounds, manifest)..."):
            export_run(store(), run.id, target)
    if target.is_file():
        st.download_button("Download bundle", target.read_bytes(), file_name=target.name, mime="application/zip",
                           icon=":material/download:", key=f"bundle_{run.id}", on_click="ignore")
        inputs = {f: "..." for f in (run.config.data.inputs if run.config else [])}
        st.code(LOAD_SNIPPET.format(file=target.name, inputs=inputs, inputs_json=json.dumps(inputs)), language="python")


VIEWS = ("Runs", "Sweeps")


def body() -> None:
    st.title("Results")
    found = store().list_sweeps(100)
    if found:
        view = st.radio("View", VIEWS, index=1 if st.query_params.get("sweep") else 0, horizontal=True,
                        key="results_view", label_visibility="collapsed")
        if view == "Sweeps":
            sweep_view(found)
            return
    runs = store().list_runs(100)
    if not runs:
        st.info("No runs yet. Configure a run (or keep the defaults) and start it on the **Run** page.")
        return
    history(runs)
    run = pick_run(runs)
    tabs = st.tabs(["Rounds", "Examples", "Diffs", "Training data", "Baseline vs best", "Playground", "Compare runs",
                    "Export"])
    with tabs[0]:
        guarded(lambda: rounds_tab(run))
    with tabs[1]:
        guarded(lambda: examples(run))
    with tabs[2]:
        guarded(lambda: diffs(run))
    with tabs[3]:
        guarded(lambda: training(run))
    with tabs[4]:
        guarded(lambda: compare_programs(run) if run.best_score is not None or store().list_artifacts(
            run.id, "best_program") else st.info("No saved programs for this run."))
    with tabs[5]:
        guarded(lambda: playground(run))
    with tabs[6]:
        guarded(lambda: comparison(runs))
    with tabs[7]:
        guarded(lambda: export(run))


guarded(body)
