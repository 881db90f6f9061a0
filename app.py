"""BetterTogether Studio: jointly optimize the prompts and weights of DSPy programs, in the browser.

Run with ``streamlit run app.py`` (or ``make run``). Every screen is one file in ``pages/``;
all logic lives in ``core/``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from dotenv import load_dotenv

load_dotenv()  # API keys may come from a .env file next to the app (never written anywhere by the app)

HERE = Path(__file__).parent
PAGES = HERE / "pages"

st.set_page_config(page_title="BetterTogether Studio", page_icon=":material/join_inner:", layout="wide")

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
