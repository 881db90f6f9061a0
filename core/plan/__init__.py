"""Before a run: the cheap checks and the full preparation, and the pre-run estimate."""
