"""Conversions between records and database rows, and small JSON helpers."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from core.config.schema import RunConfig, parse_config
from core.errors import ConfigError, StoreError
from core.store.records import TERMINAL, Artifact, Event, Round, RoundDetails, Run, RunStatus

logger = logging.getLogger(__name__)

TERMINAL_VALUES = tuple(sorted(status.value for status in TERMINAL))
ACTIVE_VALUES = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)


def now_iso() -> str:
    """The current UTC time as an ISO 8601 string with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def to_json(value: Any, what: str) -> str:
    """Encode a JSON column; a value JSON cannot hold is an error, never silently replaced."""
    try:
        return json.dumps(value if value is not None else {}, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise StoreError(
            f"{what} cannot be stored: it must be JSON (dicts, lists, str, numbers, bool, None): {e}"
        ) from e


def from_json(text: str | None) -> Any:
    return json.loads(text) if text else {}


def parse_status(status: RunStatus | str) -> RunStatus:
    try:
        return RunStatus(status)
    except ValueError as e:
        allowed = ", ".join(s.value for s in RunStatus)
        raise StoreError(f"unknown run status {status!r}; allowed: {allowed}") from e


def optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def stored_config(text: str | None) -> tuple[RunConfig | None, str | None]:
    """The typed config of a run row, or ``(None, why)`` when it no longer validates."""
    try:
        return parse_config(from_json(text)), None
    except (ConfigError, ValueError) as e:
        return None, str(e)


def run_from_row(row: Mapping[str, Any], queue_position: int | None) -> Run:
    config, problem = stored_config(row["config"])
    return Run(
        id=row["id"],
        name=row["name"],
        status=RunStatus(row["status"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        config=config,
        config_problem=problem,
        error=row["error"],
        best_strategy=row["best_strategy"],
        best_score=optional_float(row["best_score"]),
        baseline_score=optional_float(row["baseline_score"]),
        test_baseline_score=optional_float(row["test_baseline_score"]),
        test_best_score=optional_float(row["test_best_score"]),
        flagged=bool(row["flagged"]),
        owner_pid=row["owner_pid"],
        owner_started=optional_float(row["owner_started"]),
        queue_position=queue_position,
        owner_host=row.get("owner_host"),
        heartbeat_at=optional_float(row.get("heartbeat_at")),
        cancel_requested=row.get("cancel_requested_at") is not None,
        local_cpu=bool(row.get("local_cpu")),
    )


def round_from_row(row: Mapping[str, Any]) -> Round:
    return Round(
        run_id=row["run_id"],
        index=row["round_index"],
        strategy=row["strategy"],
        step_key=row["step_key"],
        optimizer=row["optimizer"],
        score=optional_float(row["score"]),
        eval_failed=bool(row["eval_failed"]),
        eval_error=row["eval_error"],
        is_best=bool(row["is_best"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        lm_usage=from_json(row["lm_usage"]),
        predictor_models=from_json(row["predictor_models"]),
        demos=from_json(row["demos"]),
        instructions=from_json(row["instructions"]),
        details=RoundDetails.from_json(from_json(row["details"])),
    )


def round_to_row(round_: Round) -> dict[str, Any]:
    where = f"round {round_.index} of run {round_.run_id}"
    row: dict[str, Any] = {
        "run_id": round_.run_id,
        "round_index": round_.index,
        "strategy": round_.strategy,
        "step_key": round_.step_key,
        "optimizer": round_.optimizer,
        "score": round_.score,
        "eval_failed": int(round_.eval_failed),
        "eval_error": round_.eval_error,
        "is_best": int(round_.is_best),
        "started_at": round_.started_at,
        "finished_at": round_.finished_at,
    }
    for column in ("lm_usage", "predictor_models", "demos", "instructions"):
        row[column] = to_json(getattr(round_, column), f"{column} of {where}")
    row["details"] = to_json(round_.details.to_json(), f"details of {where}")
    return row


def event_from_row(row: Mapping[str, Any]) -> Event:
    return Event(
        id=row["id"],
        run_id=row["run_id"],
        time=row["time"],
        kind=row["kind"],
        message=row["message"],
        data=from_json(row["data"]),
    )


def artifact_from_row(row: Mapping[str, Any]) -> Artifact:
    return Artifact(
        id=row["id"], run_id=row["run_id"], kind=row["kind"], path=row["path"], meta=from_json(row["meta"])
    )


def placeholders(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)
