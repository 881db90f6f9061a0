"""DSPy's BetterTogether with exact round boundaries recorded through a RoundRecorder."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import dspy
from dspy.teleprompt import BetterTogether

from core.errors import RunCancelled, StepCancelled
from core.evidence.capture import evidence_scope
from core.run.recorder import RoundRecorder

logger = logging.getLogger(__name__)


class StudioBetterTogether(BetterTogether):
    """BetterTogether that records each round through a ``RoundRecorder``."""

    def __init__(self, metric: Callable, recorder: RoundRecorder, **optimizers: Any):
        super().__init__(metric, **optimizers)
        self.recorder = recorder
        self._step_index = 0

    def _evaluate_on_valset(self, program, valset, rng, num_threads, effective_max_errors, provide_traceback):
        if not valset:
            return None
        self.recorder.begin_eval()
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
                self.recorder.eval_error = scope.error = f"evaluation crashed: {type(e).__name__}: {e}"
                return None
            errors = self.recorder.eval_errors()
            if errors >= len(valset):
                self.recorder.eval_error = scope.error = (
                    f"all {len(valset)} validation examples failed; last LM error: {self.recorder.observer.last_error}"
                )
                return None
            scope.score = float(result.score)
            return scope.score

    def _run_and_evaluate_step(self, optimizer, student, teacher, trainset, valset, compile_args,
                               candidate_programs, current_strategy, *args, **kwargs):
        self._step_index += 1
        key = current_strategy.split(" -> ")[-1]
        self.recorder.step_started(self._step_index, current_strategy, key)
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
            if self.recorder.cancel.is_set():
                raise StepCancelled(f"cancelled during step '{current_strategy}'") from e
            self.recorder.step_failed(current_strategy, e)
            raise

    def _add_candidate(self, candidate_programs, student, strategy, score):
        super()._add_candidate(candidate_programs, student, strategy, score)
        self.recorder.round_finished(len(candidate_programs) - 1, strategy, score, candidate_programs[-1]["program"])
