"""Strategy: compose prompt and weight steps, their settings, the metric; compare strategies (a sweep);
estimate; config download/upload."""

from __future__ import annotations

import hashlib
from typing import Any

import pandas as pd
import streamlit as st

from core import document
from core.config import trust
from core.config.schema import RunConfig, RunDraft, config_to_json
from core.config.strategy import MAX_STEPS, PRESETS, split_strategy
from core.config.sweep import MAX_SWEEP_SEEDS
from core.data import Table
from core.errors import StudioError
from core.optimizers.table import step_warnings
from core.plan.estimate import estimate, format_duration
from core.programs.metrics import METRICS
from pages._ui import allowed_files, doc, guarded, rerun_with, rev

CONFIG_DONE = "config_upload_digest"
CONFIG_ERROR = "config_upload_error"


def _apply_steps(current: RunDraft, steps: list[str]) -> None:
    try:
        rerun_with(document.set_steps(current, steps), structural=True)
    except StudioError as e:
        st.session_state["strategy_problem"] = str(e)
        st.rerun()


def presets(current: RunDraft) -> None:
    st.caption("Presets")
    cols = st.columns(len(PRESETS))
    for col, (text, description) in zip(cols, PRESETS.items(), strict=True):
        if col.button(text, key=f"preset_{'_'.join(split_strategy(text))}", help=description, width="stretch"):
            _apply_steps(current, split_strategy(text))


def step_blocks(current: RunDraft) -> None:
    steps = document.strategy_steps(current)
    cols = st.columns(max(len(steps), 4))
    for i, key in enumerate(steps):
        with cols[i], st.container(border=True):
            kind = current.step_kind(key)
            st.markdown(f"**{i + 1}. {key}** {':green[weight]' if kind == 'weight' else ':blue[prompt]'}")
            st.caption(document.step_label(current, key))
            b1, b2, b3 = st.columns(3)
            if b1.button("←", key=f"left_{rev()}_{i}", disabled=i == 0, help="move left"):
                _apply_steps(current, document.move_step(steps, i, -1))
            if b2.button("→", key=f"right_{rev()}_{i}", disabled=i == len(steps) - 1, help="move right"):
                _apply_steps(current, document.move_step(steps, i, 1))
            if b3.button("✕", key=f"remove_{rev()}_{i}", disabled=len(steps) == 1, help="remove this step"):
                _apply_steps(current, steps[:i] + steps[i + 1:])
    st.caption("Add a step")
    keys = list(current.optimizers)
    add_cols = st.columns(max(len(keys), 4))
    for col, key in zip(add_cols, keys, strict=False):
        if col.button(f"+ {key} ({document.step_label(current, key)})", key=f"add_{key}",
                      disabled=len(steps) >= MAX_STEPS, width="stretch"):
            _apply_steps(current, [*steps, key])


def strategy_text(current: RunDraft) -> None:
    c1, c2 = st.columns([3, 2])
    c1.markdown(f"Strategy: `{current.strategy}`")
    typed = c2.text_input("...or type a strategy", current.strategy, key=f"strategy_text_{rev()}")
    if typed != current.strategy:
        try:
            rerun_with(document.set_strategy_text(current, typed), structural=True)
        except StudioError as e:
            st.error(str(e))


def sweep_section(current: RunDraft) -> None:
    """Compare strategies: each picked strategy run with each seed, as one job (the draft's ``sweep``)."""
    on = st.toggle("Compare strategies: a sweep of several strategies x seeds, as one job", current.sweep is not None,
                   key=f"sweep_on_{rev()}", help="Which strategy wins on your program and data, by how much, and "
                   "is it more than noise? Each strategy is scored on the test split with every seed.")
    if on != (current.sweep is not None):
        try:
            rerun_with(document.turn_sweep_on(current, on), structural=True)
        except StudioError as e:
            st.error(str(e))
        return
    if current.sweep is None:
        return
    sweep = current.sweep
    c1, c2 = st.columns([3, 1])
    picked = c1.multiselect("Strategies to compare", document.sweep_choices(current), default=sweep.strategies,
                            key=f"sweep_strategies_{rev()}")
    count = c2.number_input("Seeds per strategy", min_value=1, max_value=MAX_SWEEP_SEEDS, value=len(sweep.seeds),
                            step=1, key=f"sweep_seeds_{rev()}")
    typed = c1.text_input("...or add a composed strategy", key=f"sweep_add_{rev()}", placeholder="e.g. p -> w -> p -> w")
    seeds = sweep.seeds if count == len(sweep.seeds) else document.first_seeds(int(count))
    strategies = [*picked, typed] if typed.strip() else picked
    c2.caption(f"seeds {', '.join(str(s) for s in seeds)}")
    if strategies != sweep.strategies or seeds != sweep.seeds:
        try:
            rerun_with(document.set_sweep(current, strategies, seeds), structural=True)
        except StudioError as e:
            st.error(str(e))
    st.caption("Start runs every strategy above with every seed (the strategy composed above is not run on its "
               "own). Per seed, a strategy that another one extends is read from that longer run, and the baseline "
               "is evaluated once.")


def new_key(current: RunDraft) -> None:
    with st.expander("Define a new step key"):
        with st.form("new_key"):
            c1, c2 = st.columns(2)
            key = c1.text_input("Key", "p2", help="lowercase letters, digits, _")
            optimizer = c2.selectbox("Optimizer", list(document.SETTINGS_MODELS),
                                     format_func=lambda t: document.OPTIMIZER_LABELS[t],
                                     help="\n".join(f"- **{document.OPTIMIZER_LABELS[t]}**: {summary}"
                                                    for t, summary in document.OPTIMIZER_SUMMARIES.items()))
            if st.form_submit_button("Define"):
                rerun_with(document.add_optimizer(current, key.strip(), optimizer), structural=True)


def settings_forms(current: RunDraft) -> None:
    st.subheader("Step settings")
    used = set(document.strategy_steps(current))
    for key, spec in current.optimizers.items():
        label = f"{key}: {document.step_label(current, key)}" + ("" if key in used else " (not in the strategy)")
        with st.expander(label):
            try:
                fields = document.settings_fields(spec.type)
            except StudioError as e:  # a settings model this page cannot show: say so, keep the other steps
                st.error(str(e))
                continue
            with st.form(f"settings_{key}_{rev()}"):
                values = {}
                cols = st.columns(3)
                for i, field in enumerate(fields):
                    value = getattr(spec.settings, field.name, field.default)
                    values[field.name] = setting_input(cols[i % 3], field, value,
                                                       document.setting_options(current, field))
                if st.form_submit_button("Save settings"):
                    rerun_with(document.set_settings(current, key, values), structural=True)
            for warning in step_warnings(current, key):
                st.warning(warning)


def setting_input(col: Any, field: document.SettingField, value: Any, options: tuple[Any, ...]) -> Any:
    """The widget of one setting (``field.kind``, see ``core.document.SETTING_KINDS``) in ``col``; returns
    the value it holds (None for an optional setting left unset)."""
    kind = field.kind.removeprefix("optional_")
    unset = f"({field.unset})"
    if kind == "bool" and not field.optional:
        return col.checkbox(field.name, bool(value), help=field.help)
    if kind in ("bool", "choice"):
        values = [None, *(options or (True, False))] if field.optional else list(options)
        return col.selectbox(field.name, values, index=values.index(value) if value in values else 0,
                             format_func=lambda v: unset if v is None else str(v), help=field.help)
    if kind == "text":
        text = col.text_input(field.name, "" if value is None else str(value), help=field.help,
                              placeholder=unset if field.optional else None)
        return None if field.optional and not text else text
    if kind == "float":
        return col.number_input(field.name, value=None if value is None else float(value), format="%g",
                                help=field.help, placeholder=field.unset if field.optional else None)
    return col.number_input(
        field.name, value=None if value is None else int(value), step=1,
        min_value=int(field.minimum) if field.minimum is not None else None,
        max_value=int(field.maximum) if field.maximum is not None else None, help=field.help,
        placeholder=field.unset if field.optional else None)


def metric(current: RunDraft) -> None:
    names = list(METRICS)
    name = st.selectbox("Metric", names, index=names.index(current.metric.name),
                        format_func=lambda n: f"{n}: {METRICS[n].description}")
    if name != current.metric.name:
        rerun_with(document.set_metric(current, name))


def estimate_section(current: RunDraft) -> None:
    st.subheader("Estimate before running")
    try:
        config = document.build_config(current)
    except StudioError as e:
        st.warning(f"No estimate while the configuration is incomplete: {e}")
        return
    table = None
    if (pending := trust.file_to_review(current, allowed_files())) is not None:
        st.caption(f"The estimate assumes the split sizes and typical field lengths: the data file `{pending}` "
                   "is read only after you allow it on the Data page.")
    else:
        try:
            table = document.load_document_table(current)
        except StudioError:
            table = None
    if config.sweep is not None:
        sweep_estimate(config, table)
        return
    result = estimate(config, table=table)
    c1, c2, c3 = st.columns(3)
    c1.metric("LM calls", f"~{result.calls:,}")
    c2.metric("Time", f"~{format_duration(result.seconds)}")
    c3.metric("Cost", "unknown" if result.cost is None else ("free (local)" if result.cost == 0 else
                                                             f"~${result.cost:.2f}"))
    st.dataframe(pd.DataFrame([
        {"round": s.label, "optimizer": s.optimizer, "LM calls": s.calls, "fine-tuning steps (at most)": s.train_steps,
         "time": format_duration(s.seconds)} for s in result.steps
    ]), hide_index=True, width="stretch")
    st.caption(f"Split {result.sizes[0]}/{result.sizes[1]}/{result.sizes[2]}; plus {result.test_calls} calls "
               "for the final test evaluation. " + "; ".join(result.notes))


def _cost(cost: float | None) -> str:
    return "unknown" if cost is None else ("free (local)" if cost == 0 else f"~${cost:.2f}")


def sweep_estimate(config: RunConfig, table: Table | None) -> None:
    """The whole sweep: its child runs, and what prefix sharing saves against separate runs."""
    result = document.estimate_sweep(config, table)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Runs", f"{result.child_runs}", help=f"instead of {result.standalone_runs} separate runs")
    c2.metric("LM calls", f"~{result.calls:,}")
    c3.metric("Time", f"~{format_duration(result.seconds)}")
    c4.metric("Cost", _cost(result.cost))
    st.dataframe(pd.DataFrame([
        {"seed": c.seed, "run": c.strategy, "reads": ", ".join(c.covers),
         "baseline": "reused" if c.reuses_baseline else "evaluated", "LM calls": c.calls,
         "time": format_duration(c.seconds)} for c in result.children
    ]), hide_index=True, width="stretch")
    st.caption(f"Prefix sharing: {result.child_runs} runs instead of {result.standalone_runs} separate runs, "
               f"~{format_duration(result.seconds)} instead of ~{format_duration(result.standalone_seconds)} "
               f"(saves ~{format_duration(result.saved_seconds)}; ~{result.standalone_calls:,} LM calls and "
               f"{_cost(result.standalone_cost)} for separate runs). Each run evaluates on test the round each "
               "strategy it holds keeps, and its baseline. " + "; ".join(result.notes))


def config_files(current: RunDraft) -> None:
    st.subheader("Configuration file")
    c1, c2 = st.columns(2)
    try:
        text = config_to_json(document.build_config(current))
        c1.download_button("Download config JSON", text, file_name="bettertogether-config.json",
                           mime="application/json", icon=":material/download:", on_click="ignore")
    except StudioError as e:
        c1.warning(f"Download needs a valid configuration: {e}")
    uploaded = c2.file_uploader("Upload a config JSON", type=["json"], key="config_upload")
    if uploaded is not None:
        digest = hashlib.sha256(uploaded.getvalue()).hexdigest()
        if st.session_state.get(CONFIG_DONE) != digest:
            st.session_state[CONFIG_DONE] = digest
            try:
                new = document.document_from_json(uploaded.getvalue().decode("utf-8", errors="replace"))
            except StudioError as e:
                st.session_state[CONFIG_ERROR] = str(e)
            else:
                st.session_state.pop(CONFIG_ERROR, None)
                rerun_with(new, structural=True)
    if message := st.session_state.get(CONFIG_ERROR):
        c2.error(message)
    if notice := trust.user_code_notice(current):
        st.warning(notice)
    if (pending := trust.file_to_review(current, allowed_files())) is not None:
        st.warning(f"This configuration reads the data file `{pending}`; it is read only after you allow it on "
                   "the Data page.")


def body() -> None:
    st.title("Strategy")
    current = doc()
    presets(current)
    if problem := st.session_state.pop("strategy_problem", None):
        st.error(problem)
    step_blocks(current)
    strategy_text(current)
    sweep_section(current)
    new_key(current)
    metric(current)
    settings_forms(current)
    estimate_section(current)
    config_files(current)


guarded(body)
