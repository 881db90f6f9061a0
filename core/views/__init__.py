"""What pages show, computed without streamlit: live snapshots, figures, the round table."""
