"""Records read from and written to the run store.

Every record is a frozen dataclass; a run's status is an enum with an explicit set of
terminal states. Times are ISO 8601 strings in UTC (``None`` until the moment happens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # records are read by the optimizers, which the config's table of optimizers imports
    from core.config import RunConfig


class RunStatus(StrEnum):
    """Where a run stands. Once terminal, a run's status never changes again.

    A ``str`` enum: ``RunStatus.QUEUED == "queued"`` and ``str(RunStatus.QUEUED) == "queued"``.
    """

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def is_terminal(self) -> bool:
        """True for finished, failed, cancelled and interrupted."""
        return self in TERMINAL


TERMINAL: frozenset[RunStatus] = frozenset(
    {RunStatus.FINISHED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.INTERRUPTED}
)


@dataclass(frozen=True)
class Run:
    """One optimisation run: its config (without secrets), status and headline results.

    ``flagged`` is True when a step failed and the run ended early with the best program so far.
    ``owner_pid``/``owner_started``/``owner_host`` say which process supervises the run (for
    people; liveness is the ``heartbeat_at`` time, in epoch seconds, that the owner refreshes).
    ``cancel_requested`` is True once any process asked the run to stop. ``queue_position`` is
    computed on read: 1 is the next queued run to start, ``None`` unless the run is queued.
    ``config`` is the typed configuration, parsed once when the row is read; it is ``None`` only when
    the stored document no longer validates (a run saved by another version), and
    ``config_problem`` then says why.
    """

    id: int
    name: str
    status: RunStatus
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    config: RunConfig | None = None
    error: str | None = None
    best_strategy: str | None = None
    best_score: float | None = None
    baseline_score: float | None = None
    test_baseline_score: float | None = None
    test_best_score: float | None = None
    flagged: bool = False
    owner_pid: int | None = None
    owner_started: float | None = None
    queue_position: int | None = None
    owner_host: str | None = None
    heartbeat_at: float | None = None
    cancel_requested: bool = False
    local_cpu: bool = False
    config_problem: str | None = None

    @property
    def strategy(self) -> str:
        """The planned strategy (``""`` when the config cannot be read)."""
        return self.config.strategy if self.config is not None else ""

    def require_config(self) -> RunConfig:
        """The typed config; ``StoreError`` naming the run and the problem when it cannot be read."""
        if self.config is None:
            from core.errors import StoreError

            raise StoreError(f"run {self.id}: its saved configuration cannot be read: {self.config_problem}")
        return self.config


@dataclass(frozen=True)
class Round:
    """One evaluated program of a run: the baseline (index 0) or the result of a strategy prefix.

    ``strategy`` is the prefix that produced the program (``"p -> w"``; ``""`` for the baseline)
    and ``step_key`` the last step of it (``None`` for the baseline). ``score`` is ``None`` when
    the evaluation failed (``eval_failed`` and ``eval_error`` then say why).
    ``lm_usage`` maps a model name to ``{"calls", "input_tokens", "output_tokens", "cost"}``;
    ``predictor_models`` maps a predictor to the model serving it, ``demos`` a predictor to its
    number of demos and ``instructions`` a predictor to its instruction text. ``details`` is
    free-form (for example traces collected/kept by a weight step).
    """

    run_id: int
    index: int
    strategy: str = ""
    step_key: str | None = None
    optimizer: str | None = None
    score: float | None = None
    eval_failed: bool = False
    eval_error: str | None = None
    is_best: bool = False
    started_at: str | None = None
    finished_at: str | None = None
    lm_usage: dict[str, dict[str, Any]] = field(default_factory=dict)
    predictor_models: dict[str, str] = field(default_factory=dict)
    demos: dict[str, int] = field(default_factory=dict)
    instructions: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingRow:
    """One chat row a weight step trained a small LM on; ``source`` says where it came from
    (``self``: the program's own traces, ``teacher``: a teacher LM's traces, ``gold``: gold labels)."""

    predictor: str | None
    messages: list[dict[str, Any]]
    outputs: dict[str, Any]
    source: str = "self"
    index: int = 0


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: its terminal status and results, written in one go by ``Store.finish_run``.

    ``best_strategy`` is ``""`` for the baseline and None when no round finished; scores are on the
    0-100 scale, None where there is none (never a silent 0); ``flagged`` says a step failed and
    the best program so far was kept.
    """

    status: RunStatus
    best_strategy: str | None = None
    best_score: float | None = None
    baseline_score: float | None = None
    test_baseline_score: float | None = None
    test_best_score: float | None = None
    flagged: bool = False
    error: str | None = None


@dataclass(frozen=True)
class Event:
    """A timestamped event of a run.

    ``kind`` is a short word such as ``"step_start"``, ``"step_end"``, ``"progress"``,
    ``"train"``, ``"log"``, ``"error"`` or ``"status"``; ``data`` carries its values.
    """

    id: int
    run_id: int
    time: str
    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Artifact:
    """A file or folder a run produced (``"program"``, ``"weights"``, ``"export"`` ...)."""

    id: int
    run_id: int
    kind: str
    path: str
    meta: dict[str, Any] = field(default_factory=dict)
