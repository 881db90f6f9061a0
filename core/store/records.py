"""Records read from and written to the run store.

Every record is a frozen dataclass; a run's status is an enum with an explicit set of
terminal states. Times are ISO 8601 strings in UTC (``None`` until the moment happens).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from core.config.schema import RunConfig


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


def _count(value: Any) -> int:
    return int(value or 0)


def _counts(value: Any) -> dict[str, int]:
    return {str(k): int(v or 0) for k, v in (value or {}).items()}


@dataclass(frozen=True)
class TraceStats:
    """What a weight step's trace collection gave: ``collected`` training examples run through the
    program, ``kept`` usable traces (parsed, metric score >= min_score), ``failed`` runs that crashed or
    did not parse, ``rows`` training rows per model, ``sources`` the trace source per predictor,
    ``balance`` the label balancing, ``labels`` training rows per label value (``{field: {value: rows}}``)
    and ``labels_before`` the same before balancing."""

    collected: int
    kept: int
    failed: int
    rows: dict[str, int]
    sources: dict[str, str] = field(default_factory=dict)
    balance: str = "off"
    labels: dict[str, dict[str, int]] = field(default_factory=dict)
    labels_before: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The stored form (also the ``traces`` event's data)."""
        return {"collected": self.collected, "kept": self.kept, "failed": self.failed, "rows": dict(self.rows),
                "sources": dict(self.sources), "balance": self.balance,
                "labels": {k: dict(v) for k, v in self.labels.items()},
                "labels_before_balance": {k: dict(v) for k, v in self.labels_before.items()}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TraceStats:
        """Read the stored form; rows written before sources, balance and labels were kept read as none."""
        return cls(
            collected=_count(data.get("collected")), kept=_count(data.get("kept")), failed=_count(data.get("failed")),
            rows=_counts(data.get("rows")), sources={str(k): str(v) for k, v in (data.get("sources") or {}).items()},
            balance=str(data.get("balance") or "off"),
            labels={str(k): _counts(v) for k, v in (data.get("labels") or {}).items()},
            labels_before={str(k): _counts(v) for k, v in (data.get("labels_before_balance") or {}).items()},
        )


@dataclass(frozen=True)
class Truncation:
    """What ``max_length`` cut from the rows a fine-tune trained on: ``truncated`` of ``rows`` rows were
    longer than ``max_length`` tokens; a row averaged ``row_tokens`` tokens, a cut row lost ``cut_tokens``
    on average and ``max_cut_tokens`` at most (0 for fine-tunes from before these were counted)."""

    truncated: int
    rows: int
    max_length: int
    row_tokens: float = 0.0
    cut_tokens: float = 0.0
    max_cut_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"truncated": self.truncated, "rows": self.rows, "max_length": self.max_length,
                "row_tokens": self.row_tokens, "cut_tokens": self.cut_tokens, "max_cut_tokens": self.max_cut_tokens}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Truncation:
        return cls(truncated=_count(data.get("truncated")), rows=_count(data.get("rows")),
                   max_length=_count(data.get("max_length")), row_tokens=float(data.get("row_tokens") or 0),
                   cut_tokens=float(data.get("cut_tokens") or 0), max_cut_tokens=_count(data.get("max_cut_tokens")))


@dataclass(frozen=True)
class RoundDetails:
    """What a round recorded beside its score: ``phases`` seconds per phase in the order they ran
    ("baseline evaluation", "prompt search", "trace collection", "training", "GGUF export",
    "evaluation", "other"), ``lm_errors`` LM errors during its evaluation and, for a weight step,
    ``traces`` (its trace collection), ``finetuned`` (base model -> fine-tuned model), ``truncated``
    (base model -> what ``max_length`` cut from its training rows) and ``trained_on`` (base model -> where and
    how it trained: device, precision, batch plan, memory; ``core.lms.lora.device.train_line``)."""

    phases: dict[str, float] = field(default_factory=dict)
    lm_errors: int = 0
    traces: TraceStats | None = None
    finetuned: dict[str, str] = field(default_factory=dict)
    truncated: dict[str, Truncation] = field(default_factory=dict)
    trained_on: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The stored form: ``{"phases", "lm_errors"}`` and, when there are any, ``"traces"``,
        ``"finetuned"``, ``"truncated_rows"`` (the keys the rounds column has always held) and ``"trained_on"``."""
        out: dict[str, Any] = {}
        if self.traces is not None:
            out["traces"] = self.traces.to_json()
        if self.finetuned:
            out["finetuned"] = dict(self.finetuned)
        if self.truncated:
            out["truncated_rows"] = {model: cut.to_json() for model, cut in self.truncated.items()}
        if self.trained_on:
            out["trained_on"] = dict(self.trained_on)
        out["lm_errors"] = self.lm_errors
        out["phases"] = dict(self.phases)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> RoundDetails:
        """Read a stored ``details`` column, whichever version wrote it: rows from before phases, trace
        sources, labels or token counts were recorded read those as empty (or 0); keys this version does
        not know are ignored."""
        data = data or {}
        traces = data.get("traces")
        return cls(
            phases={str(k): float(v or 0) for k, v in (data.get("phases") or {}).items()},
            lm_errors=_count(data.get("lm_errors")),
            traces=TraceStats.from_json(traces) if traces else None,
            finetuned={str(k): str(v) for k, v in (data.get("finetuned") or {}).items()},
            truncated={str(k): Truncation.from_json(v) for k, v in (data.get("truncated_rows") or {}).items()},
            trained_on={str(k): str(v) for k, v in (data.get("trained_on") or {}).items()},
        )


@dataclass(frozen=True)
class Round:
    """One evaluated program of a run: the baseline (index 0) or the result of a strategy prefix.

    ``strategy`` is the prefix that produced the program (``"p -> w"``; ``""`` for the baseline)
    and ``step_key`` the last step of it (``None`` for the baseline). ``score`` is ``None`` when
    the evaluation failed (``eval_failed`` and ``eval_error`` then say why).
    ``lm_usage`` maps a model name to ``{"calls", "input_tokens", "output_tokens", "cost"}``;
    ``predictor_models`` maps a predictor to the model serving it, ``demos`` a predictor to its
    number of demos and ``instructions`` a predictor to its instruction text. ``details`` is what
    else the round recorded: its phases, LM errors and, for a weight step, its traces and fine-tunes.
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
    details: RoundDetails = field(default_factory=RoundDetails)


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
