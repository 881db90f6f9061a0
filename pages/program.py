"""Program: pick a template, compose stages or load a Python file; assign an LM and role per predictor."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import document
from core.config import trust
from core.config.schema import RunDraft
from core.errors import ProgramError
from core.programs import STAGE_MODULES, TEMPLATES, Stage, parse_stage_signature
from pages._ui import api_keys, doc, guarded, rerun_with, rev, set_doc

MODES = {"template": "Built-in template", "stages": "Compose stages", "user_file": "Python file"}


def template_picker(current: RunDraft) -> None:
    keys = list(TEMPLATES)
    name = current.program.name if current.program.kind == "template" else keys[0]
    choice = st.selectbox(
        "Template", keys, index=keys.index(name) if name in keys else 0,
        format_func=lambda k: f"{TEMPLATES[k].title} ({k})",
    )
    st.caption(TEMPLATES[choice].description + f" Sample data: `{TEMPLATES[choice].sample}`.")
    if current.program.kind != "template" or current.program.name != choice:
        rerun_with(document.set_template(current, choice), structural=True)


def stage_editor(current: RunDraft) -> bool:
    """The stage composer; False while the stages do not form a valid pipeline."""
    if current.program.kind != "stages":
        rerun_with(document.set_stages(current, document.stages_of(current)), structural=True)
    stages = document.stages_of(current)
    edited, r = [], rev()
    for i, stage in enumerate(stages):
        with st.container(border=True):
            c1, c2, c3, c4 = st.columns([2, 2, 6, 2])
            name = c1.text_input("Stage name", stage.name, key=f"stage_name_{r}_{i}")
            module = c2.selectbox("Module", STAGE_MODULES, index=STAGE_MODULES.index(stage.module),
                                  key=f"stage_module_{r}_{i}")
            signature = c3.text_input("Signature", stage.signature, key=f"stage_sig_{r}_{i}",
                                      help='inputs -> outputs, e.g. "text -> label: str"')
            with c4:
                st.write("")
                b1, b2, b3 = st.columns(3)
                if b1.button("↑", key=f"up_{r}_{i}", disabled=i == 0, help="move up"):
                    _restage(current, document.move_step(stages, i, -1))
                if b2.button("↓", key=f"down_{r}_{i}", disabled=i == len(stages) - 1, help="move down"):
                    _restage(current, document.move_step(stages, i, 1))
                if b3.button("✕", key=f"del_{r}_{i}", disabled=len(stages) == 1, help="remove this stage"):
                    _restage(current, stages[:i] + stages[i + 1:])
            instructions = st.text_input("Instructions (optional)", stage.instructions or "",
                                         key=f"stage_ins_{r}_{i}")
            try:
                parse_stage_signature(signature)
            except ProgramError as e:
                st.error(str(e))
            edited.append({"name": name, "module": module, "signature": signature, "instructions": instructions})
    if st.button("Add stage", icon=":material/add:"):
        _restage(current, [*stages, Stage(name=f"stage{len(stages) + 1}", module="Predict",
                                          signature="input -> output")])
    try:
        updated = document.set_stages(current, edited)
    except ProgramError as e:
        st.error(str(e))
        return False
    if updated.program != current.program:
        set_doc(updated)
        st.rerun()
    st.success(f"Pipeline is valid: inputs {', '.join(updated.data.inputs)}; "
               f"final outputs {', '.join(updated.data.labels)}.")
    return True


def _restage(current: RunDraft, stages: list[Stage]) -> None:
    try:
        rerun_with(document.set_stages(current, stages), structural=True)
    except ProgramError as e:
        st.session_state["stage_problem"] = str(e)
        rerun_with(document.keep_stages(current, stages), structural=True)  # the user goes on fixing it


def code_consent(current: RunDraft) -> bool:
    """The opt-in for this configuration's code: lists what would run; True once the user allowed it."""
    items = trust.user_code_items(current)
    allowed = current.allow_user_code
    if items and not allowed:
        st.warning("This configuration runs code on this machine; **nothing of it has run yet**:\n\n"
                   + "\n".join(f"- {item}" for item in items), icon=":material/warning:")
    ticked = st.checkbox("I trust this code: allow running my Python code", value=allowed,
                         help="Needed for a Python program file or an LM factory of your own.")
    if ticked != allowed:
        rerun_with(trust.with_user_code(current, ticked))
    return ticked


def user_file(current: RunDraft) -> bool:
    st.warning("Loading a Python file **runs its code** on this machine, now and in every run. "
               "Only load files you trust.", icon=":material/warning:")
    allowed = code_consent(current)
    uploaded = st.file_uploader("Program file (.py) defining one dspy.Module subclass", type=["py"],
                                disabled=not allowed)
    class_name = st.text_input("Class name (only when the file defines several modules)", "")
    if uploaded is not None and allowed and st.button("Load program"):
        path = document.save_user_program(uploaded.getvalue(), uploaded.name)
        with st.spinner("Loading the program..."):
            rerun_with(document.set_user_file(current, str(path), class_name or None), structural=True)
    if current.program.kind == "user_file":
        st.info(f"Using `{current.program.path}`.")
    return allowed


def predictors_table(current: RunDraft) -> None:
    st.subheader("Predictors")
    st.caption("Each predictor runs on an LM with a role: **large** predictors are improved by prompt steps; "
               "**small** ones are also fine-tuned by weight steps (their LM must be fine-tunable).")
    rows = document.predictor_rows(current)
    c1, c2, c3, _ = st.columns([3, 3, 3, 1])
    presets = [(c1, "Last predictor small, others large", "last_small", "the BetterTogether default"),
               (c2, "All small (fine-tune every module)",  "all_small",
                "the paper's setting: one LM for every module; the default of templates whose large role has "
                "no larger model"),
               (c3, "All large (prompts only)", "all_large", None)]
    for column, label, preset, help_text in presets:
        if column.button(label, help=help_text):
            try:
                rerun_with(document.role_preset(current, preset), structural=True)
            except ProgramError as e:
                column.error(str(e))
    frame = pd.DataFrame([
        {"predictor": r.predictor, "module": r.module, "signature": r.signature, "lm": r.lm, "role": r.role,
         "fine-tunable": r.finetunable, "capability": r.note} for r in rows
    ])
    edited = st.data_editor(
        frame, key=f"predictors_{rev()}", hide_index=True, width="stretch",
        disabled=["predictor", "module", "signature", "fine-tunable", "capability"],
        column_config={
            "lm": st.column_config.SelectboxColumn("LM", options=list(current.lms), required=True),
            "role": st.column_config.SelectboxColumn("role", options=["large", "small"], required=True),
            "fine-tunable": st.column_config.CheckboxColumn("fine-tunable"),
        },
    )
    changes = [
        {"predictor": row.predictor, "lm": row.lm, "role": row.role}
        for row, old in zip(edited.itertuples(index=False), rows, strict=True)
        if (row.lm, row.role) != (old.lm, old.role)
    ]
    if changes:
        updated, problems = document.assign_predictors(current, changes)
        st.session_state["role_problems"] = problems
        rerun_with(updated, structural=True)
    for problem in st.session_state.pop("role_problems", []):
        st.error(problem)
    if api_keys():
        st.caption("API keys typed on the Models page are kept for this browser session only.")


def body() -> None:
    st.title("Program")
    current = doc()
    kind = current.program.kind
    mode = st.radio("How is the program defined?", list(MODES), index=list(MODES).index(kind),
                    format_func=MODES.get, horizontal=True)
    if problem := st.session_state.pop("stage_problem", None):
        st.error(problem)
    if mode == "template":
        template_picker(current)
    elif mode == "stages":
        if not stage_editor(current):
            return
    else:
        allowed = user_file(current)
        if current.program.kind != "user_file":
            st.info("Load a file to see its predictors.")
            return
        if not allowed:
            st.info("The predictors appear once you allow this configuration's code.")
            return
    if mode != "user_file" and trust.user_code_items(current):
        code_consent(current)
    predictors_table(doc())


guarded(body)
