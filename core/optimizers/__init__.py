"""Optimizers used as BetterTogether steps: prompt steps that keep per-predictor LMs, and our
role-aware weight step."""
