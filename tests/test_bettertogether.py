"""Candidates of BetterTogether as records: DSPy's dict entries read as frozen ``Candidate`` s, in DSPy's order."""

from __future__ import annotations

import dataclasses

import dspy
import pytest

from core.run.bettertogether import Candidate, candidates_of


def test_candidates_are_read_from_dspy_entries_best_first() -> None:
    baseline, prompted, tuned = (dspy.Predict("question -> answer") for _ in range(3))
    compiled = prompted.deepcopy()
    # DSPy's BetterTogether.compile attaches its sorted list: best score first, None last
    compiled.candidate_programs = [
        {"score": 0.8, "program": prompted, "strategy": "p"},
        {"score": 0.5, "program": baseline, "strategy": ""},
        {"score": None, "program": tuned, "strategy": "p -> w"},
    ]
    candidates = candidates_of(compiled)
    assert [(c.strategy, c.score) for c in candidates] == [("p", 0.8), ("", 0.5), ("p -> w", None)]
    assert [c.program for c in candidates] == [prompted, baseline, tuned]
    assert candidates[1] == Candidate(program=baseline, strategy="", score=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        candidates[0].score = 1.0  # type: ignore[misc]
