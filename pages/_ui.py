"""Streamlit glue shared by the pages: the session's run draft, the run manager, errors.

Only UI plumbing lives here; every rule about configs, data or runs is in ``core``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import streamlit as st

from core.config.schema import RunDraft
from core.document import new_document
from core.errors import StudioError
from core.paths import db_path
from core.run import RunManager, get_manager
from core.run.sweep import SweepManager, get_sweep_manager
from core.store import RESUMABLE, Store
from core.store.records import RunStatus

logger = logging.getLogger("studio.pages")

DOC = "config_doc"
KEYS = "api_keys"  # LM name -> API key typed in this browser session (never saved)
REV = "doc_rev"
FILES = "allowed_files"


def doc() -> RunDraft:
    """The run draft being edited (the product default on first use)."""
    if DOC not in st.session_state:
        st.session_state[DOC] = new_document()
        st.session_state[REV] = 0
    return st.session_state[DOC]


def set_doc(new: RunDraft, *, structural: bool = False) -> None:
    """Replace the draft; ``structural`` resets keyed widgets (stages, steps) to the new values."""
    # every edit goes through core.document, which returns a draft; a RunConfig (a RunDraft subclass)
    # would run the checks across fields on every later edit, so the exact type is required
    if type(new) is not RunDraft:
        raise TypeError(f"the session's run document must be a RunDraft (core.document.draft_of turns a "
                        f"RunConfig into one), got {type(new).__name__}")
    st.session_state[DOC] = new
    if structural:
        st.session_state[REV] = st.session_state.get(REV, 0) + 1


def rev() -> int:
    return st.session_state.get(REV, 0)


def allowed_files() -> set[str]:
    """Resolved paths of data files the user picked or allowed in this session (others are shown first)."""
    if FILES not in st.session_state:
        st.session_state[FILES] = set()
    return st.session_state[FILES]


def api_keys() -> dict[str, str]:
    if KEYS not in st.session_state:
        st.session_state[KEYS] = {}
    return st.session_state[KEYS]


@st.cache_resource(show_spinner=False)
def _manager(path: str) -> RunManager:
    return get_manager(path)


def manager() -> RunManager:
    """The process-wide run manager of the current database (``$STUDIO_HOME``)."""
    return _manager(str(db_path()))


def store() -> Store:
    return manager().store


def sweeps() -> SweepManager:
    """The process-wide sweep manager of the current database (on the same run manager)."""
    return get_sweep_manager(db_path())


def _through_entry_point() -> None:
    """Make sure the page runs inside ``app.py``'s navigation.

    Streamlit treats a ``pages/`` folder beside the entry point as an old-style multipage app until
    the entry point has called ``st.navigation`` once in this server process; a first visit straight
    to ``/run`` would run the page file alone (no layout, no sidebar). Rerun through ``app.py``.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def guarded(body: Callable[[], None]) -> None:
    """Run a page body: project errors become ``st.error`` with their message, others a short note."""
    _through_entry_point()
    try:
        body()
    except StudioError as e:
        st.error(str(e))
    except Exception as e:  # noqa: BLE001 - never show a raw traceback
        logger.exception("page error")
        st.error(f"Unexpected error: {type(e).__name__}: {e}; see the log for details.")


def resume_button(run_id: int, status: RunStatus) -> None:
    """A Resume button for a failed, cancelled or interrupted run: it continues after its last finished round."""
    if status not in RESUMABLE:
        return
    if st.button("Resume run (continues after its last finished round)", icon=":material/replay:",
                 key=f"resume_{run_id}"):
        manager().resume(run_id, api_keys=api_keys())
        st.rerun()


def show_problem(message: str | None) -> None:
    if message:
        st.error(message)


def rerun_with(new: RunDraft, *, structural: bool = False) -> None:
    set_doc(new, structural=structural)
    st.rerun()


def pick_in_url(label: str, param: str, records: list) -> int:
    """A selectbox of runs or sweeps (``#id name (status)``) that starts on the one named by the URL's
    ``param`` (else the first) and writes the pick back to the URL; returns its id."""
    ids = [r.id for r in records]
    wanted = st.query_params.get(param)
    current = int(wanted) if wanted and wanted.isdigit() and int(wanted) in ids else ids[0]
    labels = {r.id: f"#{r.id} {r.name} ({r.status.value})" for r in records}
    picked = st.selectbox(label, ids, index=ids.index(current), format_func=labels.get)
    if str(picked) != st.query_params.get(param):
        st.query_params[param] = str(picked)
    return picked
