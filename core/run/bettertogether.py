"""DSPy's BetterTogether with exact round boundaries recorded through a RoundRecorder.

A resumed run replays its finished rounds (``set_replay``, see ``core.run.resume``): the same loop
runs with the same seed, but a replayed step hands back the recorded program and score instead of
running its optimizer, and is not recorded again; so the shuffles of the training set, the round
indexes and the candidate list are those of an uninterrupted run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dspy
from dspy.teleprompt import BetterTogether
from dspy.teleprompt.bootstrap_finetune import launch_lms

from core.config.strategy import last_step
from core.errors import RunCancelled, StepCancelled
from core.evidence.capture import evidence_scope
from core.lms.registry import engine_of
from core.run.recorder import RoundRecorder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One program BetterTogether evaluated on the validation set: the baseline (``strategy`` "") or the
    program after a step. DSPy keeps these as dicts inside ``compile``; ours read them as records."""

    program: dspy.Module
    strategy: str
    score: float | None  # None: the evaluation failed (never a silent 0)

    @classmethod
    def from_dspy(cls, entry: dict[str, Any]) -> Candidate:
        """A record of one of DSPy's ``candidate_programs`` entries."""
        return cls(program=entry["program"], strategy=entry["strategy"], score=entry["score"])


def candidates_of(compiled: dspy.Module) -> list[Candidate]:
    """The candidates BetterTogether attached to its compiled program (``candidate_programs``), one per
    evaluated program, as records. Callers find a candidate by its strategy; the list keeps DSPy's order,
    which nothing here relies on."""
    return [Candidate.from_dspy(entry) for entry in compiled.candidate_programs]


class StudioBetterTogether(BetterTogether):
    """BetterTogether that records each round through a ``RoundRecorder``."""

    def __init__(self, metric: Callable, recorder: RoundRecorder, **optimizers: Any):
        super().__init__(metric, **optimizers)
        self.recorder = recorder
        self._step_index = 0
        self._replay: list[Any] = []

    def set_replay(self, rounds: list[Any]) -> None:
        """Replay these finished rounds (``core.run.resume.ReplayedRound``, baseline first) instead of
        running them again."""
        self._replay = list(rounds)

    def _evaluate_on_valset(self, program, valset, rng, num_threads, effective_max_errors, provide_traceback):
        if not valset:
            return None
        if self._step_index == 0 and self._replay:
            return self._replay[0].score  # the baseline of a resumed run: recorded already
        self.recorder.evaluation_started()
        evaluate = dspy.Evaluate(
            devset=valset,
            metric=self.metric,
            num_threads=num_threads,
            max_errors=effective_max_errors,
            display_progress=False,
            display_table=False,
            provide_traceback=False,
        )
        with evidence_scope(self.recorder.evidence, "val", self.recorder.current_step, program, valset) as scope:
            try:
                result = scope.result = evaluate(program)
            except Exception as e:  # noqa: BLE001 - recorded as a failed evaluation, not as 0
                scope.error = f"evaluation crashed: {type(e).__name__}: {e}"
                self.recorder.evaluation_failed(scope.error)
                return None
            if self.recorder.evaluation_errors() >= len(valset):
                scope.error = (f"all {len(valset)} validation examples failed; "
                               f"last LM error: {self.recorder.last_lm_error}")
                self.recorder.evaluation_failed(scope.error)
                return None
            scope.score = float(result.score)
            return scope.score

    def _run_and_evaluate_step(self, optimizer, student, teacher, trainset, valset, compile_args,
                               candidate_programs, current_strategy, *args, **kwargs):
        self._step_index += 1
        if self._step_index < len(self._replay):
            return self._replay_step(student, candidate_programs, current_strategy)
        key = last_step(current_strategy)
        self.recorder.step_started(self._step_index, current_strategy, key)
        _notify_round_start(student, self._step_index)
        try:
            return super()._run_and_evaluate_step(
                optimizer, student, teacher, trainset, valset, compile_args,
                candidate_programs, current_strategy, *args, **kwargs,
            )
        except RunCancelled as e:
            self.recorder.event("cancelled", f"cancelled during step '{current_strategy}'")
            raise StepCancelled(f"cancelled during step '{current_strategy}'") from e
        except StepCancelled:
            self.recorder.event("cancelled", f"cancelled during step '{current_strategy}'")
            raise
        except Exception as e:
            if self.recorder.cancel_requested:
                raise StepCancelled(f"cancelled during step '{current_strategy}'") from e
            self.recorder.step_failed(current_strategy, e)
            raise

    def _replay_step(self, student, candidate_programs, strategy):
        """A finished round of a resumed run: its recorded program and score, not recorded again."""
        replayed = self._replay[self._step_index]
        models_before = [getattr(p.lm, "model", None) for p in student.predictors()]
        student = replayed.program
        self._add_candidate(candidate_programs, student, strategy, replayed.score)
        relaunched = [getattr(p.lm, "model", None) for p in student.predictors()] != models_before
        if relaunched:
            launch_lms(student)
        scores = [c.score for c in map(Candidate.from_dspy, candidate_programs) if c.score is not None]
        is_new_best = replayed.score is not None and replayed.score >= max(scores)
        return student, replayed.score, is_new_best, relaunched

    def _add_candidate(self, candidate_programs, student, strategy, score):
        super()._add_candidate(candidate_programs, student, strategy, score)
        if len(candidate_programs) <= len(self._replay):
            return  # a replayed round of a resumed run: recorded by the earlier attempt
        added = Candidate.from_dspy(candidate_programs[-1])
        self.recorder.round_finished(len(candidate_programs) - 1, added.strategy, added.score, added.program)


def _notify_round_start(student: dspy.Module, index: int) -> None:
    """Tell the engines serving the student that round ``index`` starts (only test engines listen)."""
    seen = set()
    for predictor in student.predictors():
        engine = engine_of(predictor.lm)
        hook = getattr(engine, "on_round_start", None)
        if hook is not None and id(engine) not in seen:
            seen.add(id(engine))
            hook(index)
