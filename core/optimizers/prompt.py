"""Prompt-step optimizers that keep each predictor's own LM.

DSPy 3.4.1's ``BootstrapFewShotWithRandomSearch`` deep-copies the student with ``reset_copy()``,
which sets every predictor's ``lm`` to None, so the whole search silently runs on the context LM
(measured: all calls went to the small LM although a predictor was assigned the large one).
``KeepLMsRandomSearch`` restores each predictor's LM on every reset copy made while it compiles.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Any

import dspy
from dspy.predict.predict import Predict
from dspy.teleprompt import BootstrapFewShotWithRandomSearch, MIPROv2

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
    """Random search over bootstrapped few-shot sets, with every predictor on its assigned LM."""

    def compile(
        self, student: dspy.Module, *, teacher: Any = None, trainset: list, valset: list | None = None
    ) -> dspy.Module:
        with keep_predictor_lms():
            return super().compile(student, teacher=teacher, trainset=trainset, valset=valset)


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
