"""Exported programs: writing bundles, loading them as data, and the saved programs of runs."""
