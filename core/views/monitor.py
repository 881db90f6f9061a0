"""What the live run view shows, read from the store (the worker writes, pages read).

``run_snapshot`` gathers a run's status, rounds, current step and progress inside it from the
recorded rounds and events; status is the stored status, never inferred from threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.config.schema import RunConfig
from core.config.strategy import strategy_prefixes
from core.store import Store
from core.store.records import Event, Round, Run, RunStatus
from core.views.charts import LOSS_KINDS

LOG_KINDS = ("status", "step_start", "round", "traces", "train_start", "checkpoint", "finetuned", "truncated",
             "candidates", "cancelled", "error", "tracking")


@dataclass(frozen=True)
class StepProgress:
    """Where the run is inside its current step."""

    label: str  # "p -> w" or "baseline"
    text: str
    fraction: float | None  # None when unknown


@dataclass(frozen=True)
class RunSnapshot:
    run: Run
    rounds: list[Round]
    planned: list[str]
    step_kinds: dict[str, str]  # step key -> "prompt" | "weight"
    progress: StepProgress | None
    train_events: list[Event]
    log: list[Event]

    @property
    def is_active(self) -> bool:
        return not self.run.status.is_terminal

    @property
    def in_weight_step(self) -> bool:
        return self.progress is not None and bool(self.train_events) and self.progress.label == (
            self.train_events[-1].data.get("strategy")
        )


def _kinds(config: RunConfig | None) -> dict[str, str]:
    return dict(config.step_kinds()) if config else {}


def _progress(store: Store, run: Run, rounds: list[Round], planned: list[str]) -> StepProgress | None:
    if run.status == RunStatus.QUEUED:
        where = f"position {run.queue_position} in the queue" if run.queue_position else "in the queue"
        return StepProgress("queued", f"waiting for the CPU models ({where})", None)
    if run.status.is_terminal:
        return None
    label = planned[len(rounds)] if len(rounds) < len(planned) else "test"
    shown = label or "baseline"
    train = store.latest_event(run.id, "train")
    if train is not None and train.data.get("strategy") == label and train.data.get("total"):
        step, total = int(train.data["step"]), int(train.data["total"])
        return StepProgress(shown, f"{shown}: fine-tuning step {step}/{total}, loss {train.data.get('loss', 0):.4f}",
                            min(step / total, 1.0))
    gepa = store.latest_event(run.id, "gepa")
    if gepa is not None and gepa.data.get("strategy") == label:
        return gepa_progress(shown, gepa.data)
    progress = store.latest_event(run.id, "progress")
    if progress is not None and progress.data.get("step") in (label, shown):
        return StepProgress(shown, f"{shown}: {progress.data.get('calls', 0)} LM calls so far", None)
    return StepProgress(shown, f"{shown}: starting", None)


def gepa_progress(label: str, data: dict) -> StepProgress:
    """A GEPA step's progress (its latest ``gepa`` event): instructions proposed, candidates kept, the best
    validation score so far and the metric calls spent of its budget."""
    calls, budget = int(data.get("calls") or 0), data.get("budget")
    best = data.get("best")
    text = (f"{label}: GEPA, {data.get('proposed', 0)} instructions proposed, {data.get('candidates', 0)} kept"
            + ("" if best is None else f", best {best:.1f} on validation")
            + (f", {calls}/{budget} metric calls" if budget else f", {calls} metric calls"))
    return StepProgress(label, text, min(calls / budget, 0.99) if budget else None)


def run_snapshot(store: Store, run_id: int, log_limit: int = 200) -> RunSnapshot:
    run = store.get_run(run_id)
    rounds = store.list_rounds(run_id)
    planned = strategy_prefixes(run.strategy) if run.strategy else [""]
    train = store.list_events(run_id, kinds=LOSS_KINDS)
    log = store.list_events(run_id, kinds=list(LOG_KINDS))[-log_limit:]
    return RunSnapshot(run, rounds, planned, _kinds(run.config), _progress(store, run, rounds, planned),
                       train, log)


def expected_progress(calls: int, expected_calls: int) -> float:
    """Fraction of a step done from its calls so far and the estimate (capped below 1)."""
    if expected_calls <= 0:
        return 0.0
    return min(calls / expected_calls, 0.99)


def truncation_notes(rounds: Sequence[Round]) -> list[str]:
    """One message per fine-tune whose training rows ``max_length`` cut, named by its round."""
    from core.lms.lora.provider import truncation_message

    return [f"Round {r.index} ('{r.strategy}'): " + truncation_message(model, cut.to_json())
            for r in rounds for model, cut in r.details.truncated.items()]


def training_notes(rounds: Sequence[Round]) -> list[str]:
    """Where and how each fine-tune trained (device, precision, batch plan, memory), named by its round."""
    return [f"Round {r.index} ('{r.strategy}'): {model} {line}"
            for r in rounds for model, line in r.details.trained_on.items()]


def tracking_warning(log: Sequence[Event]) -> str | None:
    """The latest MLflow tracking event (``core.tracking.follow``) when it is a failure, else None."""
    latest = next((e for e in reversed(log) if e.kind == "tracking"), None)
    return latest.message if latest is not None and not latest.data.get("ok", True) else None
