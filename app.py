"""BetterTogether Studio: jointly optimize the prompts and weights of DSPy programs, in the browser.

Run with ``streamlit run app.py`` (or ``make run``). Every screen is one file in ``pages/``;
all logic lives in ``core/``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import streamlit as st
from dotenv import load_dotenv

from core.config.trust import TOKEN_ENV, needs_token, serve_problem, token_matches
from core.store.secrets import install_log_redaction

load_dotenv()  # API keys may come from a .env file next to the app (never written anywhere by the app)
install_log_redaction()  # log lines never carry a key

HERE = Path(__file__).parent
PAGES = HERE / "pages"
AUTHENTICATED = "studio_authenticated"

st.set_page_config(page_title="BetterTogether Studio", page_icon=":material/join_inner:", layout="wide")


def _stop_server(message: str) -> None:
    """Refuse to serve: say why on the terminal and in the browser, then shut the server down."""
    logging.getLogger("studio.app").error(message)
    print(f"error: {message}", file=sys.stderr, flush=True)
    st.error(message)
    from streamlit.runtime import Runtime

    if Runtime.exists() and type(Runtime.instance()) is Runtime:  # a real server, not AppTest's mock
        os.kill(os.getpid(), signal.SIGTERM)  # shut it down as Ctrl-C would
    st.stop()


def require_token() -> None:
    """Beyond localhost, nothing renders until the visitor gives STUDIO_TOKEN (checked once per session)."""
    address = st.get_option("server.address")
    if not needs_token(address) or st.session_state.get(AUTHENTICATED):
        return
    token = os.environ.get(TOKEN_ENV)
    if problem := serve_problem(address, token):
        _stop_server(problem)

    def sign_in() -> None:
        st.title("BetterTogether Studio")
        typed = st.text_input("Access token", type="password", help=f"the value of {TOKEN_ENV} on the server")
        if typed and token_matches(typed, token):
            st.session_state[AUTHENTICATED] = True
            st.rerun()
        if typed:
            st.error("That token is not right.")

    # The only page until the token is given: every URL (/run, /results...) lands here.
    st.navigation([st.Page(sign_in, title="Sign in", url_path="sign-in", default=True)], position="hidden").run()
    st.stop()


require_token()

navigation = st.navigation(
    {
        "Configure": [
            st.Page(PAGES / "program.py", title="Program", icon=":material/account_tree:", default=True),
            st.Page(PAGES / "models.py", title="Models", icon=":material/memory:"),
            st.Page(PAGES / "data.py", title="Data", icon=":material/table:"),
            st.Page(PAGES / "strategy.py", title="Strategy", icon=":material/route:"),
        ],
        "Optimize": [
            st.Page(PAGES / "run.py", title="Run", icon=":material/play_circle:"),
            st.Page(PAGES / "results.py", title="Results", icon=":material/leaderboard:"),
        ],
    }
)

with st.sidebar:
    st.caption(
        "BetterTogether Studio optimizes a DSPy program's prompts **and** weights. The defaults are "
        "ready to run: open **Run** and press Start, or adjust each step first."
    )

navigation.run()
