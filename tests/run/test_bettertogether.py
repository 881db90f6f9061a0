"""Candidates of BetterTogether as records: a real compile of ``StudioBetterTogether`` on the scripted LM
gives one frozen ``Candidate`` per recorded round, each with the program and score of that round."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.run.bettertogether import candidates_of
from tests.compile_helpers import compile_recorded


def test_candidates_of_a_real_compile_are_the_recorded_rounds(tmp_path: Path) -> None:
    run = compile_recorded(parse_config(scripted_config_dict("analyze_classify", tag="candidates")), tmp_path,
                           "candidates")
    store, run_id, recorder, compiled = run.store, run.run_id, run.recorder, run.program

    candidates = {c.strategy: c for c in candidates_of(compiled)}
    rounds = store.list_rounds(run_id)
    assert [r.strategy for r in rounds] == ["", "p", "p -> w", "p -> w -> p"]
    assert sorted(candidates) == sorted(r.strategy for r in rounds)
    for round_ in rounds:  # each candidate is the program and score of the round with its strategy
        candidate = candidates[round_.strategy]
        assert candidate.score == round_.score
        predictors = candidate.program.named_predictors()
        assert {n: p.lm.model for n, p in predictors} == round_.predictor_models
        assert {n: len(p.demos) for n, p in predictors} == round_.demos
    # the rounds differ where the checks above look: a fine-tuned model and a new score after the weight step
    assert not any(":ft-" in m for m in rounds[1].predictor_models.values())
    assert any(":ft-" in m for m in rounds[2].predictor_models.values())
    assert rounds[0].score != rounds[2].score
    # what execute_run does with them: the candidate of the recorder's best round is the program DSPy returned
    best = candidates[recorder.best.strategy]
    assert best.score == max(r.score for r in rounds)
    assert {n: p.lm.model for n, p in compiled.named_predictors()} == {
        n: p.lm.model for n, p in best.program.named_predictors()}
    with pytest.raises(dataclasses.FrozenInstanceError):
        candidates[""].score = 1.0  # type: ignore[misc]
