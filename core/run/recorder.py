"""Recording rounds, events and per-round program snapshots of one run in the store.

After every round the best program so far is written to the run folder (``best.json``, with an
artifact naming its round): a worker that dies, is killed or is cancelled mid-step leaves a best
program that export can bundle (the fine-tuned weights it needs are already in the run folder).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from core.config import RunConfig, optimizer_kind
from core.errors import StudioError
from core.evidence.capture import EvidenceCollector
from core.lms.registry import engine_of
from core.optimizers.weights import TraceStats, WeightStepHooks
from core.records import Round
from core.run.build import with_costs
from core.run.observer import RunObserver, usage_delta
from core.store import Store, now_iso

logger = logging.getLogger(__name__)

PROGRESS_EVERY_S = 0.5


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
    strategies: list[str] = field(default_factory=list)
    evidence: EvidenceCollector | None = None  # per-example evidence of evaluations and training rows
    _last_progress: float = 0.0
    _saved_best: int | None = None
    _step_clock: float = field(default_factory=time.monotonic)  # when the current round began (monotonic)
    _eval_clock: float | None = None  # when its evaluation began

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
        self._eval_clock = time.monotonic()

    def eval_errors(self) -> int:
        return self.observer.total_errors() - self.errors_before_eval

    # steps
    def step_started(self, index: int, strategy: str, key: str) -> None:
        self.round_started_at = now_iso()
        self._step_clock, self._eval_clock = time.monotonic(), None
        self.usage_before = self.observer.snapshot()
        self.step_details = {}
        self.current_step = strategy
        if self.evidence is not None:
            self.evidence.round_index = index
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
                "sources": stats.sources, "balance": stats.balance, "labels": stats.labels,
                "labels_before_balance": stats.labels_before,
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

        def on_rows(model: str, rows: list) -> None:
            if self.evidence is not None:
                self.evidence.training_rows(model, rows)

        def on_phase(name: str, seconds: float) -> None:
            phases = self.step_details.setdefault("phases", {})
            phases[name] = round(phases.get(name, 0.0) + seconds, 2)

        return WeightStepHooks(
            output_dir=self.folder / "weights",
            on_phase=on_phase,
            on_rows=on_rows,
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
        details["phases"] = self._phases(index, key)
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
        if index == 0:
            shutil.copyfile(snapshot, self.folder / "baseline.json")
            self.store.add_artifact(self.run_id, "baseline_program", str(self.folder / "baseline.json"), {})
        self.scores.append(score)
        self.strategies.append(strategy)
        best = best_index(self.scores)
        if best is not None:
            self.store.mark_best(self.run_id, best)
            self.save_best_so_far(best)
        shown = "evaluation failed" if score is None else f"{score:.1f}"
        self.event("round", f"round {index} '{strategy or 'baseline'}': {shown}", {
            "index": index, "strategy": strategy, "score": score, "best_index": best,
        })
        self.round_started_at = now_iso()
        self._step_clock, self._eval_clock = time.monotonic(), None
        self.usage_before = self.observer.snapshot()
        self.step_details = {}

    def _phases(self, index: int, key: str | None) -> dict[str, float]:
        """Seconds per phase of the round ending now: the weight step's own phases (trace collection,
        training, GGUF export), the prompt search (the rest of a prompt step) and the evaluation."""
        now = time.monotonic()
        phases = dict(self.step_details.get("phases", {}))
        evaluated = self._eval_clock is not None and self._eval_clock >= self._step_clock
        if index == 0:
            return {"baseline evaluation": round(now - (self._eval_clock if evaluated else self._step_clock), 2)}
        rest = (self._eval_clock if evaluated else now) - self._step_clock - sum(phases.values())
        if key and optimizer_kind(self.config.optimizers[key].type) == "prompt":
            phases["prompt search"] = round(max(rest, 0.0), 2)
        elif rest > 0.5:
            phases["other"] = round(rest, 2)
        if evaluated:
            phases["evaluation"] = round(now - self._eval_clock, 2)
        return phases

    def save_best_so_far(self, index: int) -> None:
        """Make round ``index``'s program the run's ``best.json`` (atomically) and record which round it is."""
        if index == self._saved_best:
            return
        snapshot = self.folder / "rounds" / f"{index}.json"
        target = self.folder / "best.json"
        partial = target.with_suffix(".json.partial")
        shutil.copyfile(snapshot, partial)
        os.replace(partial, target)
        self.store.add_artifact(self.run_id, "best_program", str(target),
                                {"strategy": self.strategies[index], "round": index, "so_far": True})
        self._saved_best = index


def best_index(scores: list[float | None]) -> int | None:
    """Index of the best score; ties go to the earlier round (as in BetterTogether); None if all failed."""
    best = None
    for i, score in enumerate(scores):
        if score is not None and (best is None or score > scores[best]):
            best = i
    return best
