"""``RoleAwareFinetune``: the weight step, fine-tuning only the predictors whose role is ``small``.

Why not DSPy's ``BootstrapFinetune`` (see the dspy-3.4.1 notes): it fine-tunes every LM found on
the predictors (a large hosted LM fails or starts a paid job), trains each LM on other LMs' rows
with ``multitask``, needs ``num_threads >= jobs``, and crashes on one unparseable answer or one LM
error during trace collection. This step:

* collects rows per small predictor from its trace source (``core.optimizers.traces``: ``self``,
  ``teacher``, ``gold``, ``auto``), keeping ``self``/``teacher`` traces whose metric score is at
  least ``min_score`` (failed parses are dropped), and balances them per label value;
* builds chat rows with the adapter's ``format_finetune_data`` for small predictors only, grouped by
  the model serving them: one fine-tuning job per small LM, trained on its own predictors' rows;
* hands each small LM's rows to ``hooks.on_rows`` (the run records them as the step's evidence: what
  each model trained on, with its source, ``self`` for rows from the program's own traces);
* runs the jobs one after the other (CPU training does not parallelise well), reporting progress
  and honouring cancel between training steps;
* raises a clear error when zero traces are usable.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dspy
from dspy.clients.utils_finetune import TrainDataFormat
from dspy.teleprompt.teleprompt import Teleprompter

from core.config.steps import FinetuneSettings
from core.errors import LMError, StepCancelled, StudioError, shown
from core.optimizers.traces import (
    Collected,
    TraceRow,
    balance_rows,
    categorical_fields,
    collect_rows,
    label_distribution,
    plan_sources,
)
from core.programs.build import label_keys
from core.store.records import TraceStats, TrainingRow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneJob:
    """One fine-tuning job of the weight step: a small LM, the predictors it serves, and what it trains on.
    Built once, when every row is known."""

    model: str  # the LM's model name (one job per name)
    lm: Any  # the dspy.LM whose ``finetune`` runs the job
    predictors: tuple[Any, ...]  # small predictors served by ``lm``
    rows: tuple[dict, ...]  # chat rows, as the adapter formats them
    evidence: tuple[TrainingRow, ...]  # the same rows with their source, for the run


@dataclass
class WeightStepHooks:
    """How the runner observes and steers a weight step (all optional)."""

    output_dir: Path
    on_traces: Callable[[TraceStats], None] = lambda stats: None
    on_job_start: Callable[[str, int], None] = lambda model, rows: None
    on_progress: Callable[[str, int, int, float], None] = lambda model, step, total, loss: None
    on_checkpoint: Callable[[str, dict[str, Any]], None] = lambda model, data: None
    """A checkpoint scored on held-out rows, then the one kept (``core.lms.lora.train.train_lora``)."""
    on_finetuned: Callable[[str, Any], None] = lambda old_model, new_lm: None
    on_rows: Callable[[str, list[TrainingRow]], None] = lambda model, rows: None
    on_phase: Callable[[str, float], None] = lambda phase, seconds: None
    should_stop: Callable[[], bool] = lambda: False
    extra_train_kwargs: dict[str, Any] = field(default_factory=dict)


def _content_key(row: TraceRow) -> str:
    """A row's content as one string: the canonical order of training rows."""
    return json.dumps([row.predictor, row.source, row.inputs, row.outputs], sort_keys=True, default=str)


class RoleAwareFinetune(Teleprompter):
    """Fine-tune the LMs of the ``small`` predictors on traces of the whole program."""

    def __init__(
        self,
        metric: Callable,
        small_predictors: Sequence[str],
        settings: FinetuneSettings,
        hooks: WeightStepHooks,
        *,
        num_threads: int | None = 1,
        adapter: dspy.Adapter | None = None,
        seed: int = 0,
        teacher_lm: Any = None,
        valset: Sequence[dspy.Example] = (),
    ):
        super().__init__()
        if not small_predictors:
            raise StudioError("the weight step needs at least one predictor with the role 'small'")
        self.metric = metric
        self.small_predictors = tuple(small_predictors)
        self.settings = settings
        self.hooks = hooks
        self.num_threads = num_threads
        self.adapter = adapter
        self.seed = seed
        self.teacher_lm = teacher_lm
        self.valset = list(valset)
        self.last_stats: TraceStats | None = None
        self.finetuned: dict[str, str] = {}

    def compile(self, student: dspy.Module, *, trainset: list[dspy.Example], teacher: Any = None) -> dspy.Module:
        student = student.deepcopy()
        small = self._small_predictors(student)
        started = time.monotonic()
        traces, stats = self._collect_rows(student, small, trainset)
        validation = self._validation_rows(student, small)
        self.hooks.on_phase("trace collection", time.monotonic() - started)
        for job in self._jobs_by_model(traces, small, stats).values():
            self.hooks.on_rows(job.model, list(job.evidence))
            new_lm = self._finetune(job, validation.get(job.model, []))
            for predictor in job.predictors:
                predictor.lm = new_lm
                if self.settings.exclude_demos:  # served as trained, without demos (as DSPy's BootstrapFinetune)
                    predictor.demos = []
            self.finetuned[job.model] = new_lm.model
            self.hooks.on_finetuned(job.model, new_lm)
        return student

    # -- steps -----------------------------------------------------------------------------------
    def _small_predictors(self, student: dspy.Module) -> dict[int, tuple[str, Any]]:
        named = dict(student.named_predictors())
        missing = [n for n in self.small_predictors if n not in named]
        if missing:
            raise StudioError(f"small-role predictors {missing} are not in the program; it has {sorted(named)}")
        small = {id(named[n]): (n, named[n]) for n in self.small_predictors}
        for name, predictor in small.values():
            lm = predictor.lm
            if lm is None:
                raise StudioError(f"predictor {shown(name)} has no LM assigned")
            if not getattr(getattr(lm, "provider", None), "finetunable", False):
                raise LMError(f"predictor {shown(name)} has the role 'small' but its LM {shown(lm.model)} cannot be fine-tuned")
        return small

    def _collect_rows(
        self, student: dspy.Module, small: dict[int, tuple[str, Any]], trainset: list[dspy.Example]
    ) -> tuple[list[TraceRow], TraceStats]:
        """The balanced rows of the small predictors, and their statistics (rows per model not yet known)."""
        by_name = {name: predictor for name, predictor in small.values()}
        plan = plan_sources(self.settings.trace_source, by_name, label_keys(trainset), self.teacher_lm)
        collected: Collected = collect_rows(
            student, trainset, plan=plan, metric=self.metric, min_score=self.settings.min_score,
            teacher_lm=self.teacher_lm, num_threads=self.num_threads,
        )
        categorical = {name: categorical_fields(p) for name, p in by_name.items()}
        # BetterTogether shuffles the trainset before each step: the same rows in another order gave
        # another model (measured: test 45 vs 82.5 on the support tickets from one row set). Rows in
        # content order make the fine-tune a function of the row set and the seed alone.
        ordered = sorted(collected.rows, key=_content_key)
        rows = balance_rows(ordered, categorical, self.settings.balance, self.seed)
        stats = TraceStats(
            collected.collected, collected.kept, collected.failed, rows={}, sources=dict(plan),
            balance=self.settings.balance, labels=label_distribution(rows, categorical),
            labels_before=label_distribution(collected.rows, categorical),
        )
        return rows, stats

    def _validation_rows(self, student: dspy.Module, small: dict[int, tuple[str, Any]]) -> dict[str, list[dict]]:
        """Chat rows of the run's validation examples per small LM, from the same trace sources as the training
        rows (unbalanced, never trained on): the weight step scores its checkpoints on them, so its budget is chosen
        on the examples the run chooses its programs on, and every training row trains. The upstream calls they
        need were made by the evaluations on the validation set: the run's call cache answers them. Empty without
        a validation set or with ``validation_fraction`` 0 (the provider then holds out part of the training rows,
        or trains the whole budget)."""
        if not self.valset or self.settings.validation_fraction <= 0:
            return {}
        by_name = {name: predictor for name, predictor in small.values()}
        plan = plan_sources(self.settings.trace_source, by_name, label_keys(self.valset), self.teacher_lm)
        collected = collect_rows(student, self.valset, plan=plan, metric=self.metric,
                                 min_score=self.settings.min_score, teacher_lm=self.teacher_lm,
                                 num_threads=self.num_threads)
        adapter = self.adapter or dspy.settings.adapter or dspy.ChatAdapter()
        rows: dict[str, list[dict]] = {}
        for item in sorted(collected.rows, key=_content_key):
            predictor = by_name[item.predictor]
            rows.setdefault(predictor.lm.model, []).append(self._chat_row(adapter, predictor, item))
        return rows

    def _chat_row(self, adapter: dspy.Adapter, predictor: Any, item: TraceRow) -> dict:
        """One trace as the chat row its LM trains on (or is scored on), with the predictor's demos unless
        ``exclude_demos``."""
        demos = [] if self.settings.exclude_demos else predictor.demos
        return adapter.format_finetune_data(signature=predictor.signature, demos=demos, inputs=item.inputs,
                                            outputs=item.outputs)

    def _jobs_by_model(
        self, traces: list[TraceRow], small: dict[int, tuple[str, Any]], stats: TraceStats
    ) -> dict[str, FinetuneJob]:
        """One job per small LM (by model name), with the chat rows of its own predictors' traces;
        reports the statistics (``hooks.on_traces``) and refuses a step with nothing to train on."""
        adapter = self.adapter or dspy.settings.adapter or dspy.ChatAdapter()
        lms: dict[str, Any] = {}  # model name -> the LM of the first predictor it serves
        predictors: dict[str, list[Any]] = {}
        for _, predictor in small.values():
            model = predictor.lm.model
            lms.setdefault(model, predictor.lm)
            predictors.setdefault(model, []).append(predictor)
        rows: dict[str, list[dict]] = {model: [] for model in lms}
        evidence: dict[str, list[TrainingRow]] = {model: [] for model in lms}
        by_name = {name: predictor for name, predictor in small.values()}
        for item in traces:
            predictor = by_name[item.predictor]
            model = predictor.lm.model
            row = self._chat_row(adapter, predictor, item)
            evidence[model].append(TrainingRow(
                predictor=item.predictor, messages=list(row.get("messages", [])),
                outputs=dict(item.outputs), source=item.source, index=len(rows[model]),
            ))
            rows[model].append(row)
        jobs = {model: FinetuneJob(model, lm, tuple(predictors[model]), tuple(rows[model]), tuple(evidence[model]))
                for model, lm in lms.items()}
        stats = replace(stats, rows={model: len(job.rows) for model, job in jobs.items()})
        self.last_stats = stats
        self.hooks.on_traces(stats)
        if stats.kept == 0:
            raise StudioError(
                f"the weight step has nothing to train on: 0 of {stats.collected} training examples gave a usable "
                f"trace (parsed, metric score >= {self.settings.min_score}; {stats.failed} failed or did not parse). "
                "Put a prompt step before it (e.g. 'p -> w'), lower min_score, or use a stronger LM upstream."
            )
        empty = [model for model, job in jobs.items() if not job.rows]
        if empty:
            raise StudioError(f"no training rows for the small LM(s) {empty}: their predictors never ran on kept traces")
        return jobs

    def _finetune(self, job: FinetuneJob, validation: list[dict]) -> Any:
        model, rows = job.model, job.rows
        train_kwargs = {
            **self.settings.train_kwargs(),
            "seed": self.seed,
            "output_dir": str(self.hooks.output_dir),
            "progress": lambda step, total, loss: self.hooks.on_progress(model, step, total, loss),
            "should_stop": self.hooks.should_stop,
            "on_checkpoint": lambda data: self.hooks.on_checkpoint(model, data),
            **({"validation_data": validation} if validation else {}),
            **self.hooks.extra_train_kwargs,
        }
        self.hooks.on_job_start(model, len(rows))
        logger.info("fine-tuning %s on %d rows", model, len(rows))
        started = time.monotonic()
        last_step = [started]
        report = train_kwargs["progress"]

        def progress(step: int, total: int, loss: float) -> None:
            last_step[0] = time.monotonic()
            report(step, total, loss)

        train_kwargs["progress"] = progress
        training = job.lm.finetune(train_data=list(rows), train_data_format=TrainDataFormat.CHAT, train_kwargs=train_kwargs)
        result = training.result()
        if training.thread is not None:
            training.thread.join()
        # training ends at the last reported step; what follows is writing the model (GGUF export)
        self.hooks.on_phase("training", last_step[0] - started)
        self.hooks.on_phase("GGUF export", time.monotonic() - last_step[0])
        if isinstance(result, StepCancelled):
            raise result
        if isinstance(result, BaseException):
            raise LMError(f"fine-tuning {model} failed: {result}") from result
        return result
