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

A label predictor whose LM is a fine-tune and that holds no demos (a weight step trained it without
demos, ``exclude_demos``) is served as it was trained: the stratified sets leave it without demos.
Measured on the saved ``p -> w`` programs (test split of 40, ``bench/final_prompt_step.py``, results
in bench/results/final_prompt_step.json): 15 stratified sets on the fine-tuned label predictor of
the classifier (seeds 0, 1) and of support triage (seed 0) all scored at or below the program
without demos, by up to 62.5 points; the set the search used to keep on support triage seed 2 won
on the 10 validation examples (50 against 40) and lost on test (47.5 against 62.5).

When every label predictor is served as trained, the step searches the prompted predictors upstream
of them instead (``_upstream_search``): C sets of bootstrapped demos taken from training examples the
fine-tuned program now gets right, the paper's prompt step after a weight step. The current program
competes; with no upstream predictor (a one-module program) or no passing example, it is kept. On
support triage (``bench/quality.py``, 3 seeds) this took ``p -> w -> p`` from 67.5 to 75.8 on test.
"""

from __future__ import annotations

import logging
import random
import threading
from contextlib import contextmanager
from typing import Any

import dspy
from dspy.predict.predict import Predict
from dspy.teleprompt import BootstrapFewShotWithRandomSearch, MIPROv2

from core.errors import StudioError
from core.optimizers.stratify import stratified_candidate
from core.optimizers.traces import TraceRow, collect_rows
from core.programs.build import label_keys, label_predictors

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

    def __init__(self, *args: Any, stratify: bool = False, max_prompt_tokens: int | None = None, seed: int = 0,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.stratify = stratify
        self.max_prompt_tokens = max_prompt_tokens
        self.candidate_scores: list[float | None] = []

    def compile(
        self, student: dspy.Module, *, teacher: Any = None, trainset: list, valset: list | None = None
    ) -> dspy.Module:
        with keep_predictor_lms():
            if self.stratify:
                labelled = label_predictors(student, label_keys(trainset))
                kept = served_as_trained(student, labelled)
                targets = {name: fields for name, fields in labelled.items() if name not in kept}
                if targets:
                    return self._stratified_search(student, targets, trainset, valset or trainset)
                if kept:
                    logger.info("prompt step: %s fine-tuned without demos, served as trained", ", ".join(kept))
                    return self._upstream_search(student, list(labelled), trainset, valset or trainset)
            return super().compile(student, teacher=teacher, trainset=trainset, valset=valset)

    def _upstream_search(self, student: dspy.Module, labelled: list[str], trainset: list,
                         valset: list) -> dspy.Module:
        """Bootstrapped demos for the prompted predictors upstream of the label predictors, from training
        traces the current program gets right; the current program competes (ties keep it). With no
        such predictor or no passing trace, the program is kept."""
        names = [n for n, _ in student.named_predictors() if n not in labelled]
        kept = set(served_as_trained(student, names))
        upstream = [n for n in names if n not in kept]
        k = self.max_num_samples
        self.candidate_scores = []
        if not upstream or k < 1:
            return student.deepcopy()
        pool = passing_demos(student, upstream, trainset, self.metric, wanted=k * (self.num_candidate_sets + 1),
                             seed=self.seed, num_threads=self.num_threads)
        if not any(pool.values()):
            logger.info("prompt step: no training trace passed; program kept")
            return student.deepcopy()
        candidates = [student.deepcopy()]
        for seed in range(self.num_candidate_sets):
            program = student.deepcopy()
            rng = random.Random(self.seed + seed)
            for name, predictor in program.named_predictors():
                if pool.get(name):
                    predictor.demos = rng.sample(pool[name], min(k, len(pool[name])))
            candidates.append(program)
        return self._pick(candidates, valset, "upstream search")

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
        return self._pick(candidates, valset, "stratified search")

    def _pick(self, candidates: list[dspy.Module], valset: list, what: str) -> dspy.Module:
        """The candidate with the best validation score (ties keep the earlier one, the current program first)."""
        evaluate = dspy.Evaluate(devset=valset, metric=self.metric, num_threads=self.num_threads,
                                 display_progress=False, display_table=False, max_errors=len(valset) + 1,
                                 provide_traceback=False)
        self.candidate_scores = []
        for program in candidates:
            try:
                self.candidate_scores.append(float(evaluate(program).score))
            except Exception as e:  # noqa: BLE001 - one broken candidate does not end the search
                logger.warning("a prompt candidate failed to evaluate: %s", e)
                self.candidate_scores.append(None)
        scored = [(s, i) for i, s in enumerate(self.candidate_scores) if s is not None]
        if not scored:
            raise StudioError(f"every one of the {len(candidates)} prompt candidates failed to evaluate")
        best = max(scored, key=lambda t: (t[0], -t[1]))[1]
        logger.info("%s: scores %s, kept candidate %d", what, self.candidate_scores, best)
        return candidates[best]


def passing_demos(program: dspy.Module, names: list[str], trainset: list, metric: Any, *, wanted: int,
                  seed: int, num_threads: int | None = 1) -> dict[str, list[dspy.Example]]:
    """Demos of the predictors ``names``: what each was asked and answered on the first ``wanted`` training
    examples (in a seeded order) that the program gets fully right (metric score 1). The program runs in
    chunks of ``wanted`` examples, as the weight step's ``self`` traces (``traces.collect_rows``), until
    enough passed."""
    order = list(trainset)
    random.Random(seed).shuffle(order)
    plan = dict.fromkeys(names, "self")
    passing: list[list[TraceRow]] = []  # the rows of each passing example, in order
    for start in range(0, len(order), max(wanted, 1)):
        if len(passing) >= wanted:
            break
        chunk = order[start:start + wanted]
        rows = collect_rows(program, chunk, plan=plan, metric=metric, min_score=1.0,
                            num_threads=num_threads).rows
        for index in sorted({row.example for row in rows}):
            passing.append([row for row in rows if row.example == index])
    pool: dict[str, list[dspy.Example]] = {n: [] for n in names}
    for rows in passing[:wanted]:
        for row in rows:
            pool[row.predictor].append(dspy.Example(augmented=True, **row.inputs, **row.outputs))
    logger.info("bootstrapping: %d of %d examples passed", min(len(passing), wanted), len(order))
    return pool


def served_as_trained(program: dspy.Module, names: Any) -> list[str]:
    """The predictors among ``names`` whose LM is a fine-tune and that hold no demos: a weight step
    trained them without demos, and demos would change the prompts they learned."""
    from core.lms.hosted import base_model_of

    out = []
    for name, predictor in program.named_predictors():
        model = getattr(getattr(predictor, "lm", None), "model", None)
        if name in names and isinstance(model, str) and base_model_of(model) != model and not predictor.demos:
            out.append(name)
    return out


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
