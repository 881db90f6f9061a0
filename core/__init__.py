"""BetterTogether Studio core: everything but the UI. Never imports streamlit."""
