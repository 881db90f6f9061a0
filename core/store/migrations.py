"""Schema migrations of the run store. Append new ones; never edit or reorder those already applied."""

from __future__ import annotations

import logging

from sqlite_utils import Database, Migrations

logger = logging.getLogger(__name__)

MIGRATIONS = Migrations("bettertogether_studio")


@MIGRATIONS()
def m001_initial_schema(db: Database) -> None:
    """Runs, their rounds, events and artifacts."""
    db["runs"].create(
        {
            "id": int,
            "name": str,
            "status": str,
            "created_at": str,
            "started_at": str,
            "finished_at": str,
            "config": str,
            "error": str,
            "best_strategy": str,
            "best_score": float,
            "baseline_score": float,
            "test_baseline_score": float,
            "test_best_score": float,
            "flagged": int,
            "owner_pid": int,
            "owner_started": float,
        },
        pk="id",
        not_null={"name", "status", "created_at", "config", "flagged"},
        defaults={"flagged": 0, "config": "{}"},
    )
    db["runs"].create_index(["status"])
    db["rounds"].create(
        {
            "run_id": int,
            "round_index": int,
            "strategy": str,
            "step_key": str,
            "optimizer": str,
            "score": float,
            "eval_failed": int,
            "eval_error": str,
            "is_best": int,
            "started_at": str,
            "finished_at": str,
            "lm_usage": str,
            "predictor_models": str,
            "demos": str,
            "instructions": str,
            "details": str,
        },
        pk=("run_id", "round_index"),
        not_null={"strategy", "eval_failed", "is_best"},
        defaults={"strategy": "", "eval_failed": 0, "is_best": 0},
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["events"].create(
        {"id": int, "run_id": int, "time": str, "kind": str, "message": str, "data": str},
        pk="id",
        not_null={"run_id", "time", "kind", "message", "data"},
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["events"].create_index(["run_id", "id"])
    db["events"].create_index(["run_id", "kind", "id"])
    db["artifacts"].create(
        {"id": int, "run_id": int, "kind": str, "path": str, "meta": str, "created_at": str},
        pk="id",
        not_null={"run_id", "kind", "path", "meta"},
        foreign_keys=[("run_id", "runs", "id")],
    )
    db["artifacts"].create_index(["run_id", "kind"])
