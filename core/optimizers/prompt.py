"""Prompt-step optimizers that keep each predictor's own LM.

DSPy 3.4.1's ``BootstrapFewShotWithRandomSearch`` deep-copies the student with ``reset_copy()``,
which sets every predictor's ``lm`` to None, so the whole search silently runs on the context LM
(measured: all calls went to the small LM although a predictor was assigned the large one).
``KeepLMsRandomSearch`` restores each predictor's LM on every reset copy made while it compiles.

With ``stratify`` (the default for the ``random_search`` step) it searches what helps tiny models
instead of DSPy's bootstrapped sets: each candidate gives every *label predictor* (all outputs are
label fields) a labeled demo set that covers every label value (``core.optimizers.stratify``),
its inputs taken from the program's own upstream trace, trimmed to a prompt length that fits the
model's context. Candidates are the current program, the same without demos on the label
predictors (when it has some: a model fine-tuned without demos may do best without them) and
``num_candidate_programs`` stratified sets; the best on the validation set wins (ties keep the
earlier one, the current program first).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Any

import dspy
from dspy.predict.predict import Predict
from dspy.teleprompt import BootstrapFewShotWithRandomSearch, MIPROv2

from core.errors import StudioError
from core.optimizers.stratify import label_predictors, stratified_candidate

logger = logging.getLogger(__name__)

_keep = threading.local()
_original_reset = Predict.reset


def _reset_keeping_lm(self: Predict) -> None:
    keep = getattr(_keep, "active", 0) and "lm" in self.__dict__
    lm = self.__dict__.get("lm")
    _original_reset(self)
    if keep:
        self.lm = lm


Predict.reset = _reset_keeping_lm  # only changes behaviour inside ``keep_predictor_lms()``


@contextmanager
def keep_predictor_lms():
    """Within this block (this thread only), ``Predict.reset()`` keeps the predictor's LM."""
    _keep.active = getattr(_keep, "active", 0) + 1
    try:
        yield
    finally:
        _keep.active -= 1


class KeepLMsRandomSearch(BootstrapFewShotWithRandomSearch):
    """Random search over few-shot sets (stratified labeled sets by default), every predictor on its LM."""

    def __init__(self, *args: Any, stratify: bool = False, max_prompt_tokens: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.stratify = stratify
        self.max_prompt_tokens = max_prompt_tokens
        self.candidate_scores: list[float | None] = []

    def compile(
        self, student: dspy.Module, *, teacher: Any = None, trainset: list, valset: list | None = None
    ) -> dspy.Module:
        with keep_predictor_lms():
            if self.stratify:
                targets = label_predictors(student, trainset)
                if targets:
                    return self._stratified_search(student, targets, trainset, valset or trainset)
            return super().compile(student, teacher=teacher, trainset=trainset, valset=valset)

    def _stratified_search(self, student: dspy.Module, targets: dict[str, list[str]], trainset: list,
                           valset: list) -> dspy.Module:
        candidates = [student.deepcopy()]
        named = dict(student.named_predictors())
        if any(named[name].demos for name in targets):  # e.g. after a weight step trained without demos
            bare = student.deepcopy()
            for name, predictor in bare.named_predictors():
                if name in targets:
                    predictor.demos = []
            candidates.append(bare)
        for seed in range(self.num_candidate_sets):
            candidates.append(stratified_candidate(student, targets, trainset, seed=seed,
                                                   max_prompt_tokens=self.max_prompt_tokens, sample=valset[0]))
        evaluate = dspy.Evaluate(devset=valset, metric=self.metric, num_threads=self.num_threads,
                                 display_progress=False, display_table=False, max_errors=len(valset) + 1,
                                 provide_traceback=False)
        self.candidate_scores = []
        for program in candidates:
            try:
                self.candidate_scores.append(float(evaluate(program).score))
            except Exception as e:  # noqa: BLE001 - one broken candidate does not end the search
                logger.warning("a stratified candidate failed to evaluate: %s", e)
                self.candidate_scores.append(None)
        scored = [(s, i) for i, s in enumerate(self.candidate_scores) if s is not None]
        if not scored:
            raise StudioError(f"every one of the {len(candidates)} prompt candidates failed to evaluate")
        best = max(scored, key=lambda t: (t[0], -t[1]))[1]
        logger.info("stratified search: scores %s, kept candidate %d", self.candidate_scores, best)
        return candidates[best]


class SmallValsetMIPRO(MIPROv2):
    """MIPROv2 with settings that work on small validation sets (no minibatching by default)."""

    def __init__(self, *, num_trials: int, minibatch: bool, **kwargs: Any):
        super().__init__(**kwargs)
        self._num_trials = num_trials
        self._minibatch = minibatch

    def compile(
        self, student: dspy.Module, *, trainset: list, teacher: Any = None, valset: list | None = None
    ) -> dspy.Module:
        with keep_predictor_lms():
            return super().compile(
                student,
                trainset=trainset,
                teacher=teacher,
                valset=valset,
                num_trials=self._num_trials,
                minibatch=self._minibatch,
            )
