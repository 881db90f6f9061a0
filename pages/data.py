"""Data: upload a dataset or pick a bundled sample, preview it, map columns to fields, split it."""

from __future__ import annotations

import hashlib

import pandas as pd
import streamlit as st

from core import document
from core.config import trust
from core.config.schema import RunDraft
from core.data import ALLOWED_EXTENSIONS, MAX_FILE_BYTES, Table
from core.errors import StudioError
from core.paths import studio_home
from core.programs import program_fields
from core.views.charts import label_figure
from pages._ui import allowed_files, doc, guarded, rerun_with

UPLOAD_DONE = "upload_digest"
UPLOAD_ERROR = "upload_error"


def accept_upload(current: RunDraft, data: bytes, filename: str) -> None:
    """Check and store an uploaded file; the core message is kept to show next to the uploader."""
    digest = hashlib.sha256(data).hexdigest()
    if st.session_state.get(UPLOAD_DONE) == digest:
        return
    st.session_state[UPLOAD_DONE] = digest
    try:
        path, table = document.save_upload(data, filename)
    except StudioError as e:
        st.session_state[UPLOAD_ERROR] = str(e)
        return
    st.session_state.pop(UPLOAD_ERROR, None)
    allowed_files().add(str(path.resolve()))  # the user picked this file
    rerun_with(document.use_file(current, path, table), structural=True)


def source_section(current: RunDraft) -> bool:
    """Pick the dataset; False while an upload is awaited."""
    source = current.data.source
    kinds = ["sample", "file"]
    kind = st.radio("Dataset", kinds, index=kinds.index(source.kind), horizontal=True,
                    format_func={"sample": "Bundled sample", "file": "Upload a file"}.get)
    if kind == "sample":
        samples = document.list_samples()
        name = source.name if source.kind == "sample" else samples[0]
        choice = st.selectbox("Sample", samples, index=samples.index(name) if name in samples else 0)
        if source.kind != "sample" or source.name != choice:
            rerun_with(document.use_sample(current, choice), structural=True)
        return True
    uploaded = st.file_uploader(
        f"CSV, JSONL or JSON file (up to {MAX_FILE_BYTES // (1024 * 1024)} MB; "
        f"{', '.join(ALLOWED_EXTENSIONS)})",
    )
    if uploaded is not None:
        accept_upload(current, uploaded.getvalue(), uploaded.name)
    if message := st.session_state.get(UPLOAD_ERROR):
        st.error(message)
    if source.kind == "file":
        return review_file(current)
    if uploaded is None:
        st.info("Upload a file, or switch back to a bundled sample.")
    return False


def review_file(current: RunDraft) -> bool:
    """A data file the user did not pick here (e.g. named by an uploaded config) is shown before it is read."""
    pending = trust.file_to_review(current, allowed_files())
    if pending is None:
        path = trust.resolved_file(current)
        uploaded = (studio_home() / "uploads").resolve() in path.parents
        st.caption(f"Using the {'uploaded ' if uploaded else ''}file `{path}`.")
        return True
    st.warning(f"This configuration reads the file `{pending}` on this machine. It has not been read yet.",
               icon=":material/folder_open:")
    if st.button("Allow reading this file", icon=":material/check:"):
        allowed_files().add(str(pending))
        st.rerun()
    return False


def preview(table: Table, current: RunDraft) -> None:
    st.subheader("Preview")
    c1, c2 = st.columns(2)
    c1.metric("Rows", len(table))
    c2.metric("Columns", len(table.columns))
    st.dataframe(pd.DataFrame(list(table.rows[:8]), columns=list(table.columns)), hide_index=True,
                 width="stretch", height=240)
    distribution = document.label_distribution(table, current.data.mapping, current.data.labels)
    if distribution:
        st.plotly_chart(label_figure(distribution), width="stretch")


def mapping_section(current: RunDraft, table: Table) -> None:
    st.subheader("Columns for the program's fields")
    data = current.data
    fields = program_fields(document.program_spec(current), allow_user_code=current.allow_user_code)
    labels = st.multiselect("Label fields (outputs the metric compares)", list(fields.outputs),
                            default=[f for f in data.labels if f in fields.outputs])
    if labels and labels != data.labels:
        rerun_with(document.set_labels(current, labels), structural=True)
    options = ["", *table.columns]
    mapping = {}
    cols = st.columns(3)
    for i, field in enumerate([*data.inputs, *data.labels]):
        kind = "input" if field in data.inputs else "label"
        value = data.mapping.get(field, "")
        mapping[field] = cols[i % 3].selectbox(f"{field} ({kind})", options,
                                               index=options.index(value) if value in options else 0)
    if mapping != {f: data.mapping.get(f, "") for f in mapping}:
        rerun_with(document.set_mapping(current, mapping))
    if message := document.check_data(current, table).mapping:
        st.error(message)


def split_section(current: RunDraft, table: Table) -> None:
    st.subheader("Split")
    split = current.data.split
    c1, c2, c3, c4 = st.columns(4)
    train = c1.number_input("Train", min_value=0.0, value=float(split.train), step=1.0,
                            help="a count (e.g. 40) or, with all three below 1, a ratio (e.g. 0.6)")
    val = c2.number_input("Validation", min_value=0.0, value=float(split.val), step=1.0)
    test = c3.number_input("Test", min_value=0.0, value=float(split.test), step=1.0)
    seed = c4.number_input("Seed", min_value=0, value=split.seed, step=1)
    if (train, val, test, seed) != (float(split.train), float(split.val), float(split.test), split.seed):
        try:
            rerun_with(document.set_split(current, train, val, test, int(seed)))
        except StudioError as e:
            st.error(str(e))
            return
    check = document.check_data(current, table)
    if check.mapping:
        st.warning("Fix the column mapping above to see the split.")
    elif check.split:
        st.error(check.split)
    else:
        n_train, n_val, n_test = check.sizes
        st.success(f"{n_train} train, {n_val} validation and {n_test} test examples "
                   f"({len(table) - n_train - n_val - n_test} rows unused).")


def body() -> None:
    st.title("Data")
    current = doc()
    if not source_section(current):
        return
    try:
        table = document.load_document_table(current)
    except StudioError as e:
        st.error(str(e))
        return
    preview(table, current)
    if notice := trust.user_code_notice(current):
        st.warning(notice)
        return
    mapping_section(current, table)
    split_section(current, table)


guarded(body)
