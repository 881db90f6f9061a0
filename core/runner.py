"""Background runs: one BetterTogether optimization per run, recorded round by round in the store.

A run is started with ``RunManager.start(config)``, which checks the configuration, creates the
run (status ``queued``) and returns its id at once; a worker thread does the rest inside its own
``dspy.context`` (never ``dspy.configure``). Runs that use the embedded CPU models wait in a FIFO
queue and run one at a time.

Recording: ``StudioBetterTogether`` subclasses DSPy's ``BetterTogether`` and overrides its step and
candidate hooks (``_run_and_evaluate_step``, ``_add_candidate``, ``_evaluate_on_valset``) so that
each round (baseline and each step) is written with its exact boundaries; a crashed evaluation is
recorded as a failed evaluation (score None), never as a silent 0.

Cancel: the ``RunObserver`` callback raises ``RunCancelled`` (a BaseException, passing DSPy's
``except Exception`` layers) from ``on_lm_start`` once the run's Event is set; the step boundary
turns it into ``StepCancelled`` so BetterTogether returns the best program so far. Fine-tuning
checks the same Event between training steps.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
from dspy.teleprompt import BetterTogether
from dspy.utils.callback import BaseCallback

from core.adapter import StudioChatAdapter
from core.config import FinetuneStep, LiteLLMSpec, MiproStep, RandomSearchStep, RunConfig, config_to_dict
from core.errors import RunCancelled, StepCancelled, StudioError
from core.lms.hosted import base_model_of, explain_lm_error, price_per_token
from core.lms.registry import engine_of
from core.optimizers.prompt import KeepLMsRandomSearch, SmallValsetMIPRO
from core.optimizers.weights import RoleAwareFinetune, TraceStats, WeightStepHooks
from core.paths import run_dir
from core.prepare import PreparedRun, prepare_run
from core.records import Round, RunStatus
from core.store import Store, now_iso, process_start_time

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5


# --- observing LM calls ----------------------------------------------------------------------------


@dataclass
class ModelUsage:
    calls: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "calls": self.calls,
            "errors": self.errors,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }


class RunObserver(BaseCallback):
    """Counts LM calls, errors and tokens per model; raises ``RunCancelled`` once cancel is set.

    It is also installed as DSPy's usage tracker (``__deepcopy__`` returns itself so threaded
    evaluations do not lose tokens).
    """

    def __init__(self, cancel: threading.Event, on_call: Callable[[], None] = lambda: None):
        self.cancel = cancel
        self.on_call = on_call
        self.usage: dict[str, ModelUsage] = {}
        self.last_error: str | None = None
        self._calls: dict[str, tuple[str, threading.Semaphore | None]] = {}
        self._limits: dict[str, threading.Semaphore] = {}
        self._lock = threading.Lock()

    def _limit_for(self, instance: Any) -> threading.Semaphore | None:
        """The semaphore capping parallel calls to this LM (``lm.studio_limit = (name, n)``)."""
        name, parallel = getattr(instance, "studio_limit", (None, 0))
        if not name or parallel <= 0:
            return None
        with self._lock:
            if name not in self._limits:
                self._limits[name] = threading.BoundedSemaphore(parallel)
            return self._limits[name]

    def __deepcopy__(self, memo: dict) -> RunObserver:
        return self

    # callbacks
    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if self.cancel.is_set():
            raise RunCancelled()
        model = getattr(instance, "model", "?")
        limit = self._limit_for(instance)
        if limit is not None:
            while not limit.acquire(timeout=0.1):
                if self.cancel.is_set():
                    raise RunCancelled()
        with self._lock:
            self._calls[call_id] = (model, limit)
            self.usage.setdefault(model, ModelUsage()).calls += 1
        self.on_call()

    def on_lm_end(self, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
        with self._lock:
            model, limit = self._calls.pop(call_id, ("?", None))
            if exception is not None and not isinstance(exception, RunCancelled):
                self.usage.setdefault(model, ModelUsage()).errors += 1
                self.last_error = explain_lm_error(exception, model)
        if limit is not None:
            limit.release()

    # usage tracker protocol
    def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
        entry = dict(usage_entry or {})
        tokens_in = entry.get("prompt_tokens", entry.get("input_tokens")) or 0
        tokens_out = entry.get("completion_tokens", entry.get("output_tokens")) or 0
        with self._lock:
            usage = self.usage.setdefault(lm, ModelUsage())
            usage.input_tokens += int(tokens_in)
            usage.output_tokens += int(tokens_out)

    def get_total_tokens(self) -> dict[str, dict[str, int]]:
        return self.snapshot()

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {model: usage.as_dict() for model, usage in self.usage.items()}

    def total_errors(self) -> int:
        with self._lock:
            return sum(u.errors for u in self.usage.values())


def usage_delta(after: dict[str, dict[str, int]], before: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    delta = {}
    for model, counts in after.items():
        base = before.get(model, {})
        diff = {k: v - base.get(k, 0) for k, v in counts.items()}
        if any(diff.values()):
            delta[model] = diff
    return delta


# --- recording rounds ------------------------------------------------------------------------------


@dataclass
class RoundRecorder:
    """Writes rounds, events and per-round program snapshots of one run to the store."""

    store: Store
    run_id: int
    config: RunConfig
    observer: RunObserver
    folder: Path
    cancel: threading.Event
    round_started_at: str = field(default_factory=now_iso)
    usage_before: dict = field(default_factory=dict)
    errors_before_eval: int = 0
    eval_error: str | None = None
    step_error: str | None = None
    step_details: dict[str, Any] = field(default_factory=dict)
    current_step: str = "baseline"
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)
    scores: list[float | None] = field(default_factory=list)
    _last_progress: float = 0.0

    def event(self, kind: str, message: str, data: dict | None = None) -> None:
        try:
            self.store.add_event(self.run_id, kind, message, data or {})
        except StudioError:  # an observer must never break the run
            logger.exception("cannot write event %s", kind)

    def progress(self) -> None:
        """Called on every LM call: a throttled 'progress' event with the calls made in this round."""
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = now
        calls = sum(u["calls"] for u in usage_delta(self.observer.snapshot(), self.usage_before).values())
        self.event("progress", f"{self.current_step}: {calls} LM calls", {"step": self.current_step, "calls": calls})

    # evaluation
    def begin_eval(self) -> None:
        self.errors_before_eval = self.observer.total_errors()
        self.eval_error = None

    def eval_errors(self) -> int:
        return self.observer.total_errors() - self.errors_before_eval

    # steps
    def step_started(self, index: int, strategy: str, key: str) -> None:
        self.round_started_at = now_iso()
        self.usage_before = self.observer.snapshot()
        self.step_details = {}
        self.current_step = strategy
        optimizer = self.config.optimizers[key].type
        self.event("step_start", f"step {index}: {key} ({optimizer}), strategy '{strategy}'", {
            "index": index, "strategy": strategy, "key": key, "optimizer": optimizer,
        })

    def step_failed(self, strategy: str, error: BaseException) -> None:
        self.step_error = f"step '{strategy}' failed: {error}"
        last = self.observer.last_error
        if last and last not in self.step_error:
            self.step_error += f" (last LM error: {last})"
        self.event("error", self.step_error, {"strategy": strategy, "type": type(error).__name__})

    # weight-step hooks
    def weight_hooks(self) -> WeightStepHooks:
        def on_traces(stats: TraceStats) -> None:
            self.step_details["traces"] = {
                "collected": stats.collected, "kept": stats.kept, "failed": stats.failed, "rows": stats.rows,
            }
            self.event("traces", f"traces: {stats.kept} kept of {stats.collected} collected", self.step_details["traces"])

        def on_job_start(model: str, rows: int) -> None:
            self.event("train_start", f"fine-tuning {model} on {rows} rows", {"model": model, "rows": rows})

        def on_progress(model: str, step: int, total: int, loss: float) -> None:
            self.event("train", f"{model}: step {step}/{total}, loss {loss:.4f}", {
                "model": model, "step": step, "total": total, "loss": loss, "strategy": self.current_step,
            })

        def on_finetuned(old: str, new_lm: Any) -> None:
            new = new_lm.model
            self.step_details.setdefault("finetuned", {})[old] = new
            self.event("finetuned", f"{old} fine-tuned as {new}", {"base": old, "model": new})
            engine = engine_of(new_lm)
            folder = engine.artifact_dir(new) if hasattr(engine, "artifact_dir") else None
            if folder is not None:
                self.store.add_artifact(self.run_id, "weights", str(folder), {
                    "model": new, "base": old, "engine": f"{type(engine).__module__}:{type(engine).__qualname__}",
                })

        return WeightStepHooks(
            output_dir=self.folder / "weights",
            on_traces=on_traces,
            on_job_start=on_job_start,
            on_progress=on_progress,
            on_finetuned=on_finetuned,
            should_stop=self.cancel.is_set,
        )

    # rounds
    def round_finished(self, index: int, strategy: str, score: float | None, program: dspy.Module) -> None:
        key = strategy.split(" -> ")[-1] if strategy else None
        predictors = program.named_predictors()
        snapshot = self.folder / "rounds" / f"{index}.json"
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        program.save(str(snapshot))
        details = dict(self.step_details)
        details["lm_errors"] = self.eval_errors()
        record = Round(
            run_id=self.run_id,
            index=index,
            strategy=strategy,
            step_key=key,
            optimizer=self.config.optimizers[key].type if key else None,
            score=score,
            eval_failed=score is None,
            eval_error=self.eval_error if score is None else None,
            is_best=False,
            started_at=self.round_started_at,
            finished_at=now_iso(),
            lm_usage=with_costs(usage_delta(self.observer.snapshot(), self.usage_before), self.prices),
            predictor_models={n: getattr(p.lm, "model", None) for n, p in predictors},
            demos={n: len(p.demos) for n, p in predictors},
            instructions={n: p.signature.instructions for n, p in predictors},
            details=details,
        )
        self.store.add_round(record)
        self.store.add_artifact(self.run_id, "round_program", str(snapshot), {"index": index, "strategy": strategy})
        self.scores.append(score)
        best = best_index(self.scores)
        if best is not None:
            self.store.mark_best(self.run_id, best)
        shown = "evaluation failed" if score is None else f"{score:.1f}"
        self.event("round", f"round {index} '{strategy or 'baseline'}': {shown}", {
            "index": index, "strategy": strategy, "score": score, "best_index": best,
        })
        self.round_started_at = now_iso()
        self.usage_before = self.observer.snapshot()
        self.step_details = {}


def best_index(scores: list[float | None]) -> int | None:
    """Index of the best score; ties go to the earlier round (as in BetterTogether); None if all failed."""
    best = None
    for i, score in enumerate(scores):
        if score is not None and (best is None or score > scores[best]):
            best = i
    return best


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
        try:
            result = evaluate(program)
        except Exception as e:  # noqa: BLE001 - recorded as a failed evaluation, not as 0
            self.recorder.eval_error = f"evaluation crashed: {type(e).__name__}: {e}"
            return None
        errors = self.recorder.eval_errors()
        if errors >= len(valset):
            self.recorder.eval_error = (
                f"all {len(valset)} validation examples failed; last LM error: {self.recorder.observer.last_error}"
            )
            return None
        return float(result.score)

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


# --- building optimizers ---------------------------------------------------------------------------


def build_optimizers(prepared: PreparedRun, recorder: RoundRecorder, adapter: dspy.Adapter) -> dict[str, Any]:
    config = prepared.config
    threads = effective_threads(prepared)
    optimizers: dict[str, Any] = {}
    for key, spec in config.optimizers.items():
        if isinstance(spec, RandomSearchStep):
            s = spec.settings
            optimizers[key] = KeepLMsRandomSearch(
                metric=prepared.metric,
                max_bootstrapped_demos=s.max_bootstrapped_demos,
                max_labeled_demos=s.max_labeled_demos,
                num_candidate_programs=s.num_candidate_programs,
                max_rounds=s.max_rounds,
                num_threads=threads,
            )
        elif isinstance(spec, MiproStep):
            s = spec.settings
            optimizers[key] = SmallValsetMIPRO(
                metric=prepared.metric,
                prompt_model=prepared.context_lm,
                task_model=prepared.context_lm,
                auto=None,
                num_candidates=s.num_candidates,
                max_bootstrapped_demos=s.max_bootstrapped_demos,
                max_labeled_demos=s.max_labeled_demos,
                num_threads=threads,
                seed=config.seed,
                num_trials=s.num_trials,
                minibatch=s.minibatch,
            )
        elif isinstance(spec, FinetuneStep):
            optimizers[key] = RoleAwareFinetune(
                metric=prepared.metric,
                small_predictors=prepared.small_predictors,
                settings=spec.settings,
                hooks=recorder.weight_hooks(),
                num_threads=threads,
                adapter=adapter,
                seed=config.seed,
            )
    return optimizers


def effective_threads(prepared: PreparedRun) -> int:
    """Evaluation threads: 1 whenever a CPU model is involved (it serves one call at a time); otherwise
    enough for the most parallel LM (each LM is capped by its own limit in ``RunObserver``)."""
    if prepared.uses_local_cpu:
        return 1
    return max([prepared.config.limits.num_threads] + [c.parallel_calls for c in prepared.capabilities.values()])


def make_adapter() -> dspy.Adapter:
    return StudioChatAdapter()


def model_prices(config: RunConfig) -> dict[str, tuple[float, float]]:
    """USD per (input, output) token of each hosted LM whose price is known."""
    prices = {}
    for spec in config.lms.values():
        if isinstance(spec, LiteLLMSpec):
            price = price_per_token(spec.model, spec.price_per_1m_input, spec.price_per_1m_output)
            if price is not None:
                prices[spec.model] = price
    return prices


def with_costs(usage: dict[str, dict[str, Any]], prices: dict[str, tuple[float, float]]) -> dict[str, dict[str, Any]]:
    """Adds ``cost`` (USD, or None when the price is unknown) to each model's usage."""
    out = {}
    for model, counts in usage.items():
        price = prices.get(model) or prices.get(base_model_of(model))
        cost = None
        if price is not None:
            cost = round(counts.get("input_tokens", 0) * price[0] + counts.get("output_tokens", 0) * price[1], 6)
        out[model] = {**counts, "cost": cost}
    return out


# --- executing one run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOutcome:
    status: RunStatus
    best_strategy: str | None
    best_score: float | None
    baseline_score: float | None
    test_baseline_score: float | None
    test_best_score: float | None
    flagged: bool
    error: str | None


def evaluate_score(program: dspy.Module, devset: list, metric: Callable, threads: int,
                   recorder: RoundRecorder) -> float | None:
    """Score on ``devset``; None (never a silent 0) when every example failed or the evaluation crashed."""
    recorder.begin_eval()
    evaluate = dspy.Evaluate(devset=devset, metric=metric, num_threads=threads, display_progress=False,
                             display_table=False, max_errors=len(devset) + 1, provide_traceback=False)
    try:
        score = float(evaluate(program).score)
    except Exception as e:  # noqa: BLE001 - recorded, not turned into a score
        recorder.event("error", f"test evaluation crashed: {type(e).__name__}: {e}")
        return None
    if recorder.eval_errors() >= len(devset):
        recorder.event("error", f"test evaluation failed on all {len(devset)} examples; last LM error: "
                                f"{recorder.observer.last_error}")
        return None
    return score


def execute_run(prepared: PreparedRun, store: Store, run_id: int, cancel: threading.Event) -> RunOutcome:
    """Run the optimization of ``prepared`` in this thread, recording it under ``run_id``."""
    config = prepared.config
    folder = run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    observer = RunObserver(cancel)
    recorder = RoundRecorder(store, run_id, config, observer, folder, cancel, prices=model_prices(config))
    observer.on_call = recorder.progress
    adapter = make_adapter()
    threads = effective_threads(prepared)
    with dspy.context(lm=prepared.context_lm, adapter=adapter, callbacks=[observer], usage_tracker=observer,
                      num_threads=threads, studio_cancel_event=cancel):
        optimizers = build_optimizers(prepared, recorder, adapter)
        optimizer = StudioBetterTogether(prepared.metric, recorder, **optimizers)
        recorder.event("setup", "label fields constrained to their values: "
                                + (", ".join(f"{k} ({len(v)})" for k, v in prepared.label_choices.items()) or "none"),
                       {"label_choices": prepared.label_choices})
        recorder.event("status", f"running '{config.strategy}' on {len(prepared.split.train)} train / "
                                 f"{len(prepared.split.val)} validation examples")
        try:
            best = optimizer.compile(
                prepared.program,
                trainset=list(prepared.split.train),
                valset=list(prepared.split.val),
                num_threads=threads,
                max_errors=config.limits.max_errors or len(prepared.split.val) + len(prepared.split.train),
                seed=config.seed,
                strategy=config.strategy,
            )
        except RunCancelled:
            recorder.event("cancelled", "cancelled during the baseline evaluation")
            return RunOutcome(RunStatus.CANCELLED, None, None, None, None, None, False, "cancelled by the user")
        candidates = best.candidate_programs
        baseline = next(c for c in candidates if c["strategy"] == "")
        best_candidate = candidates[0]
        best.save(str(folder / "best.json"))
        baseline["program"].save(str(folder / "baseline.json"))
        store.add_artifact(run_id, "best_program", str(folder / "best.json"), {"strategy": best_candidate["strategy"]})
        store.add_artifact(run_id, "baseline_program", str(folder / "baseline.json"), {})
        cancelled = cancel.is_set()
        flagged = bool(best.flag_compilation_error_occurred) and not cancelled
        test_base = test_best = None
        if not cancelled and best_candidate["score"] is not None:
            recorder.current_step = "test"
            recorder.event("status", f"evaluating baseline and best on {len(prepared.split.test)} test examples")
            try:
                test = prepared.split.test
                test_base = evaluate_score(baseline["program"], test, prepared.metric, threads, recorder)
                test_best = (test_base if best_candidate["strategy"] == "" else
                             evaluate_score(best, test, prepared.metric, threads, recorder))
            except RunCancelled:
                cancelled = True
        if cancelled:
            status, error = RunStatus.CANCELLED, "cancelled by the user; the best program so far was kept"
        elif flagged or best_candidate["score"] is None:
            status = RunStatus.FAILED
            error = recorder.step_error or "every evaluation failed; see the event log"
            if best_candidate["score"] is not None:
                error += f"; kept the best program so far ('{best_candidate['strategy'] or 'baseline'}')"
        else:
            status, error = RunStatus.FINISHED, None
        return RunOutcome(
            status=status,
            best_strategy=best_candidate["strategy"],
            best_score=best_candidate["score"],
            baseline_score=baseline["score"],
            test_baseline_score=test_base,
            test_best_score=test_best,
            flagged=flagged,
            error=error,
        )


# --- the manager -----------------------------------------------------------------------------------


class _CpuQueue:
    """FIFO admission for runs on the embedded CPU models: one at a time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: list[int] = []
        self._holder: int | None = None

    def enqueue(self, run_id: int) -> None:
        """Take a place in the queue (called when the run is created, so order follows run ids)."""
        with self._cond:
            self._waiting.append(run_id)

    def acquire(self, run_id: int, cancel: threading.Event) -> bool:
        """Wait for this run's turn (it must be enqueued); False if cancelled while waiting."""
        with self._cond:
            try:
                while not (self._holder is None and self._waiting[0] == run_id):
                    if cancel.is_set():
                        return False
                    self._cond.wait(0.2)
                self._holder = run_id
                return True
            finally:
                self._waiting.remove(run_id)
                self._cond.notify_all()

    def release(self, run_id: int) -> None:
        with self._cond:
            if self._holder == run_id:
                self._holder = None
            self._cond.notify_all()


class RunManager:
    """Starts, tracks and cancels runs of this process. One per process and store (see ``get_manager``)."""

    def __init__(self, store: Store):
        self.store = store
        self._cpu = _CpuQueue()
        self._threads: dict[int, threading.Thread] = {}
        self._cancels: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, config: RunConfig, *, base_dir: Path | None = None) -> int:
        """Check ``config``, create the run and start its worker; returns the run id at once."""
        prepared = prepare_run(config, base_dir=base_dir)
        run_id = self.store.create_run(config.name, config_to_dict(config), RunStatus.QUEUED)
        if prepared.uses_local_cpu:
            self._cpu.enqueue(run_id)
        cancel = threading.Event()
        thread = threading.Thread(target=self._work, args=(run_id, prepared, cancel), name=f"run-{run_id}",
                                  daemon=True)
        with self._lock:
            self._threads[run_id] = thread
            self._cancels[run_id] = cancel
        thread.start()
        return run_id

    def cancel(self, run_id: int) -> bool:
        """Ask a run of this process to stop; it keeps the best program so far. False if not active here."""
        with self._lock:
            event = self._cancels.get(run_id)
        if event is None:
            return False
        event.set()
        self.store.add_event(run_id, "status", "cancel requested")
        return True

    def is_active(self, run_id: int) -> bool:
        with self._lock:
            thread = self._threads.get(run_id)
        return thread is not None and thread.is_alive()

    def wait(self, run_id: int, timeout: float | None = None) -> bool:
        with self._lock:
            thread = self._threads.get(run_id)
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _work(self, run_id: int, prepared: PreparedRun, cancel: threading.Event) -> None:
        store = self.store
        local = prepared.uses_local_cpu
        try:
            if local:
                store.add_event(run_id, "status", "waiting for the embedded CPU models")
                if not self._cpu.acquire(run_id, cancel):
                    store.finish_run(run_id, RunStatus.CANCELLED, best_strategy=None, best_score=None,
                                     baseline_score=None, test_baseline_score=None, test_best_score=None,
                                     flagged=False, error="cancelled while queued")
                    return
            pid = os.getpid()
            store.claim_run(run_id, pid, process_start_time(pid))
            outcome = execute_run(prepared, store, run_id, cancel)
            store.finish_run(run_id, outcome.status, best_strategy=outcome.best_strategy,
                             best_score=outcome.best_score, baseline_score=outcome.baseline_score,
                             test_baseline_score=outcome.test_baseline_score,
                             test_best_score=outcome.test_best_score, flagged=outcome.flagged,
                             error=outcome.error)
            store.add_event(run_id, "status", f"run {outcome.status.value}", {"status": outcome.status.value})
        except BaseException as e:  # noqa: BLE001 - the worker must always leave a final status
            if isinstance(e, StudioError):
                message = str(e)
            else:
                message = f"unexpected error: {type(e).__name__}: {e}"
                logger.error("run %s failed\n%s", run_id, traceback.format_exc())
            status = RunStatus.CANCELLED if isinstance(e, RunCancelled | StepCancelled) else RunStatus.FAILED
            try:
                store.add_event(run_id, "error", message)
                store.finish_run(run_id, status, best_strategy=None, best_score=None, baseline_score=None,
                                 test_baseline_score=None, test_best_score=None, flagged=False, error=message)
            except StudioError:
                logger.exception("cannot record the failure of run %s", run_id)
        finally:
            if local:
                self._cpu.release(run_id)
            store.close()


_managers: dict[str, RunManager] = {}
_managers_lock = threading.Lock()


def get_manager(db_file: str | Path) -> RunManager:
    """The process-wide manager for a database file; recovers runs left by dead processes on first use."""
    key = str(Path(db_file).resolve())
    with _managers_lock:
        if key not in _managers:
            store = Store(key)
            store.recover_interrupted()
            _managers[key] = RunManager(store)
        return _managers[key]
