"""Recording rounds, events and per-round program snapshots of one run in the store.

After every round the best program so far is written to the run folder (``best.json``, with an
artifact naming its round): a worker that dies, is killed or is cancelled mid-step leaves a best
program that export can bundle (the fine-tuned weights it needs are already in the run folder).

The recorder's state (the round in progress, the scores so far, why the last evaluation failed)
is its own: the optimizer and ``execute_run`` tell it what happened (``step_started``,
``evaluation_failed``, ``round_finished``, ``replayed``, ``testing_started``) and it keeps the
store in step. Which round is best is decided here and only here (``best_index``): the rounds'
``is_best``, the ``best.json`` so far and the run's ``best_*`` results all come from ``best``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy

from core.config.schema import RunConfig
from core.config.strategy import last_step
from core.errors import StudioError
from core.evidence.capture import EvidenceCollector
from core.lms.lora.provider import STOP_REASONS, trained_on, truncated_rows, truncation_message
from core.lms.registry import engine_of
from core.optimizers.weights import WeightStepHooks
from core.run.build import model_prices, with_costs
from core.run.observer import RunObserver, usage_delta
from core.run.resume import ReplayedRound
from core.store import Store, now_iso
from core.store.records import Round, RoundDetails, TraceStats, Truncation

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5


@dataclass(frozen=True)
class BestRound:
    """The best round so far: the highest validation score, the earlier round winning a tie."""

    index: int
    strategy: str
    score: float


class RoundRecorder:
    """Writes rounds, events and per-round program snapshots of one run to the store.

    ``evidence`` collects the per-example evidence of the run's evaluations and training rows;
    ``execute_run`` installs it as a DSPy callback and closes it when the run ends."""

    def __init__(self, store: Store, run_id: int, config: RunConfig, observer: RunObserver, folder: Path,
                 cancel: threading.Event) -> None:
        self._store = store
        self._run_id = run_id
        self._config = config
        self._observer = observer
        self._folder = folder
        self._cancel = cancel
        self._prices = model_prices(config)
        self._evidence = EvidenceCollector(store, run_id)
        # the rounds so far (replayed ones included), in order
        self._scores: list[float | None] = []
        self._strategies: list[str] = []
        self._saved_best: int | None = None  # the round whose program best.json holds
        # the step and round in progress
        self._step = "baseline"
        self._step_error: str | None = None
        self._round_started_at = now_iso()
        self._usage_before: dict = {}
        # what the round in progress recorded so far (its RoundDetails once it ends)
        self._phase_seconds: dict[str, float] = {}
        self._traces: TraceStats | None = None
        self._finetuned: dict[str, str] = {}
        self._truncated: dict[str, Truncation] = {}
        self._trained_on: dict[str, str] = {}
        self._step_clock = time.monotonic()  # when the current round began
        self._eval_clock: float | None = None  # when its evaluation began
        self._errors_before_eval = 0
        self._eval_error: str | None = None
        self._last_progress = 0.0

    # what the optimizer and execute_run read
    @property
    def evidence(self) -> EvidenceCollector:
        return self._evidence

    @property
    def current_step(self) -> str:
        """The strategy prefix being run ("baseline" before the first step, "test" at the end)."""
        return self._step

    @property
    def step_error(self) -> str | None:
        """Why the last step that failed failed (with the last LM error), if one did."""
        return self._step_error

    @property
    def last_lm_error(self) -> str | None:
        return self._observer.last_error

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def best(self) -> BestRound | None:
        """The best round recorded (or replayed) so far; None while every evaluation failed."""
        index = best_index(self._scores)
        return None if index is None else BestRound(index, self._strategies[index], self._scores[index])

    def best_of(self, steps: int) -> BestRound | None:
        """The best of rounds 0..``steps``: what a run of the strategy's first ``steps`` steps keeps (a sweep
        reads shorter strategies from a longer run); None until those rounds are all recorded, or when every
        one of them failed."""
        if not 0 <= steps < len(self._scores):
            return None
        index = best_index(self._scores[: steps + 1])
        return None if index is None else BestRound(index, self._strategies[index], self._scores[index])

    def event(self, kind: str, message: str, data: dict | None = None) -> None:
        try:
            self._store.add_event(self._run_id, kind, message, data or {})
        except StudioError:  # an observer must never break the run
            logger.exception("cannot write event %s", kind)

    def progress(self) -> None:
        """Called on every LM call: a throttled 'progress' event with the calls made in this round."""
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = now
        calls = sum(u["calls"] for u in usage_delta(self._observer.snapshot(), self._usage_before).values())
        self.event("progress", f"{self._step}: {calls} LM calls", {"step": self._step, "calls": calls})

    # evaluation
    def evaluation_started(self) -> None:
        self._errors_before_eval = self._observer.total_errors()
        self._eval_error = None
        self._eval_clock = time.monotonic()

    def evaluation_errors(self) -> int:
        """LM errors since the evaluation started."""
        return self._observer.total_errors() - self._errors_before_eval

    def evaluation_failed(self, reason: str) -> None:
        """The validation evaluation in progress crashed or failed on every example: its round records
        ``reason`` (and no score)."""
        self._eval_error = reason

    # steps
    def replayed(self, rounds: Sequence[ReplayedRound]) -> None:
        """A resumed run replays these rounds of its earlier attempt (baseline first): they count for
        the best round, and are not recorded again (nor their best saved again when ``best.json`` holds it)."""
        self._scores = [r.score for r in rounds]
        self._strategies = [r.strategy for r in rounds]
        self._saved_best = self._best_on_disk(best_index(self._scores))
        self.event("status", f"resuming after round {len(rounds) - 1}: rounds 0-{len(rounds) - 1} are replayed "
                             "from disk, not run again" if rounds else "resuming: no round was finished; "
                             "starting from the baseline", {"replayed": len(rounds)})

    def step_started(self, index: int, strategy: str, key: str) -> None:
        self._new_round()
        self._step = strategy
        self._evidence.round_index = index
        optimizer = self._config.optimizers[key].type
        self.event("step_start", f"step {index}: {key} ({optimizer}), strategy '{strategy}'", {
            "index": index, "strategy": strategy, "key": key, "optimizer": optimizer,
        })

    def step_failed(self, strategy: str, error: BaseException) -> None:
        self._step_error = f"step '{strategy}' failed: {error}"
        last = self._observer.last_error
        if last and last not in self._step_error:
            self._step_error += f" (last LM error: {last})"
        self.event("error", self._step_error, {"strategy": strategy, "type": type(error).__name__})

    def testing_started(self, examples: int, programs: str = "baseline and best") -> None:
        """The steps are over; ``programs`` are evaluated on ``examples`` test examples."""
        self._step = "test"
        self.event("status", f"evaluating {programs} on {examples} test examples")

    # weight-step hooks
    def weight_hooks(self) -> WeightStepHooks:
        def on_traces(stats: TraceStats) -> None:
            self._traces = stats
            self.event("traces", f"traces: {stats.kept} kept of {stats.collected} collected", stats.to_json())

        def on_job_start(model: str, rows: int) -> None:
            self.event("train_start", f"fine-tuning {model} on {rows} rows", {"model": model, "rows": rows})

        def on_progress(model: str, step: int, total: int, loss: float) -> None:
            self.event("train", f"{model}: step {step}/{total}, loss {loss:.4f}", {
                "model": model, "step": step, "total": total, "loss": loss, "strategy": self._step,
            })

        def on_checkpoint(model: str, data: dict[str, Any]) -> None:
            if "chosen_step" in data:
                message = (f"{model}: kept the LoRA of step {data['chosen_step']} (best on {data['held_out']} "
                           f"held-out rows; training ended: {STOP_REASONS.get(data['stopped'], data['stopped'])})")
            else:
                message = (f"{model}: checkpoint at step {data['step']}: held-out loss {data['val_loss']:.4f}, "
                           f"exact answers {100 * data['val_exact']:.0f}%{' (best so far)' if data['best'] else ''}")
            self.event("checkpoint", message, {"model": model, "strategy": self._step, **data})

        def on_finetuned(old: str, new_lm: Any) -> None:
            new = new_lm.model
            self._finetuned[old] = new
            self.event("finetuned", f"{old} fine-tuned as {new}", {"base": old, "model": new})
            engine = engine_of(new_lm)
            folder = engine.artifact_dir(new) if hasattr(engine, "artifact_dir") else None
            if folder is not None:
                self._store.add_artifact(self._run_id, "weights", str(folder), {
                    "model": new, "base": old, "engine": f"{type(engine).__module__}:{type(engine).__qualname__}",
                })
                if line := trained_on(Path(folder)):
                    self._trained_on[old] = line
                cut = truncated_rows(Path(folder))
                if cut:
                    self._truncated[old] = Truncation.from_json(cut)
                    self.event("truncated", truncation_message(old, cut), {"model": old, **cut})

        def on_rows(model: str, rows: list) -> None:
            self._evidence.training_rows(model, rows)

        def on_phase(name: str, seconds: float) -> None:
            self._phase_seconds[name] = round(self._phase_seconds.get(name, 0.0) + seconds, 2)

        return WeightStepHooks(
            output_dir=self._folder / "weights",
            on_phase=on_phase,
            on_rows=on_rows,
            on_traces=on_traces,
            on_job_start=on_job_start,
            on_progress=on_progress,
            on_checkpoint=on_checkpoint,
            on_finetuned=on_finetuned,
            should_stop=self._cancel.is_set,
        )

    # rounds
    def round_finished(self, index: int, strategy: str, score: float | None, program: dspy.Module) -> None:
        key = last_step(strategy)
        predictors = program.named_predictors()
        snapshot = self._folder / "rounds" / f"{index}.json"
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        program.save(str(snapshot))
        details = RoundDetails(phases=self._phases(index, key), lm_errors=self.evaluation_errors(),
                               traces=self._traces, finetuned=dict(self._finetuned), truncated=dict(self._truncated),
                               trained_on=dict(self._trained_on))
        record = Round(
            run_id=self._run_id,
            index=index,
            strategy=strategy,
            step_key=key,
            optimizer=self._config.optimizers[key].type if key else None,
            score=score,
            eval_failed=score is None,
            eval_error=self._eval_error if score is None else None,
            is_best=False,
            started_at=self._round_started_at,
            finished_at=now_iso(),
            lm_usage=with_costs(usage_delta(self._observer.snapshot(), self._usage_before), self._prices),
            predictor_models={n: getattr(p.lm, "model", None) for n, p in predictors},
            demos={n: len(p.demos) for n, p in predictors},
            instructions={n: p.signature.instructions for n, p in predictors},
            details=details,
        )
        self._store.add_round(record)
        self._store.add_artifact(self._run_id, "round_program", str(snapshot), {"index": index, "strategy": strategy})
        if index == 0:
            shutil.copyfile(snapshot, self._folder / "baseline.json")
            self._store.add_artifact(self._run_id, "baseline_program", str(self._folder / "baseline.json"), {})
        self._scores.append(score)
        self._strategies.append(strategy)
        best = self.best
        if best is not None:
            self._store.mark_best(self._run_id, best.index)
            self._save_best_so_far(best)
        shown = "evaluation failed" if score is None else f"{score:.1f}"
        self.event("round", f"round {index} '{strategy or 'baseline'}': {shown}", {
            "index": index, "strategy": strategy, "score": score, "best_index": best.index if best else None,
        })
        self._new_round()

    def _new_round(self) -> None:
        self._round_started_at = now_iso()
        self._step_clock, self._eval_clock = time.monotonic(), None
        self._usage_before = self._observer.snapshot()
        self._phase_seconds, self._traces, self._finetuned, self._truncated = {}, None, {}, {}
        self._trained_on = {}

    def _phases(self, index: int, key: str | None) -> dict[str, float]:
        """Seconds per phase of the round ending now: the weight step's own phases (trace collection,
        training, GGUF export), the prompt search (the rest of a prompt step) and the evaluation."""
        now = time.monotonic()
        phases = dict(self._phase_seconds)
        evaluated = self._eval_clock is not None and self._eval_clock >= self._step_clock
        if index == 0:
            return {"baseline evaluation": round(now - (self._eval_clock if evaluated else self._step_clock), 2)}
        rest = (self._eval_clock if evaluated else now) - self._step_clock - sum(phases.values())
        if key and self._config.step_kind(key) == "prompt":
            phases["prompt search"] = round(max(rest, 0.0), 2)
        elif rest > 0.5:
            phases["other"] = round(rest, 2)
        if evaluated:
            phases["evaluation"] = round(now - self._eval_clock, 2)
        return phases

    def _best_on_disk(self, index: int | None) -> int | None:
        """``index`` if ``best.json`` already holds round ``index`` (the last best_program artifact names it),
        else None: an earlier attempt that died between recording a round and saving it left an older best."""
        if index is None or not (self._folder / "best.json").is_file():
            return None
        saved = self._store.list_artifacts(self._run_id, "best_program")
        return index if saved and saved[-1].meta.get("round") == index else None

    def _save_best_so_far(self, best: BestRound) -> None:
        """Make the best round's program the run's ``best.json`` (atomically) and record which round it is."""
        if best.index == self._saved_best:
            return
        snapshot = self._folder / "rounds" / f"{best.index}.json"
        target = self._folder / "best.json"
        partial = target.with_suffix(".json.partial")
        shutil.copyfile(snapshot, partial)
        os.replace(partial, target)
        self._store.add_artifact(self._run_id, "best_program", str(target),
                                 {"strategy": best.strategy, "round": best.index, "so_far": True})
        self._saved_best = best.index


def best_index(scores: Sequence[float | None]) -> int | None:
    """Index of the best score; ties go to the earlier round (as in BetterTogether); None if all failed."""
    best = None
    for i, score in enumerate(scores):
        if score is not None and (best is None or score > scores[best]):
            best = i
    return best
