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


@MIGRATIONS()
def m003_evidence(db: Database) -> None:
    """Per-example evidence: evaluations, their example results, each result's LM calls, and the
    training rows of weight steps. Rows go with their run (``ON DELETE CASCADE``); runs recorded
    before this migration simply have none."""
    # One statement at a time: ``executescript`` would commit the store's migration transaction.
    statements = """
        CREATE TABLE IF NOT EXISTS evaluations (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            split TEXT NOT NULL,
            round_index INTEGER,
            label TEXT NOT NULL,
            program TEXT,
            started_at TEXT,
            finished_at TEXT,
            examples INTEGER NOT NULL DEFAULT 0,
            score REAL,
            error TEXT
        );
        CREATE INDEX IF NOT EXISTS idx_evaluations_run ON evaluations (run_id, split, id);
        CREATE TABLE IF NOT EXISTS example_results (
            evaluation_id INTEGER NOT NULL REFERENCES evaluations(id) ON DELETE CASCADE,
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            split TEXT NOT NULL,
            example_index INTEGER NOT NULL,
            inputs TEXT NOT NULL,
            gold TEXT NOT NULL,
            outputs TEXT NOT NULL,
            score REAL,
            passed INTEGER,
            error TEXT,
            error_kind TEXT,
            PRIMARY KEY (evaluation_id, example_index)
        );
        CREATE INDEX IF NOT EXISTS idx_example_results_matrix ON example_results (run_id, split, example_index);
        CREATE TABLE IF NOT EXISTS lm_calls (
            id INTEGER PRIMARY KEY,
            evaluation_id INTEGER NOT NULL REFERENCES evaluations(id) ON DELETE CASCADE,
            example_index INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            predictor TEXT,
            model TEXT,
            messages TEXT NOT NULL,
            completion TEXT,
            input_tokens INTEGER,
            output_tokens INTEGER,
            latency_ms REAL,
            error TEXT
        );
        CREATE INDEX IF NOT EXISTS idx_lm_calls_example ON lm_calls (evaluation_id, example_index, seq);
        CREATE TABLE IF NOT EXISTS training_rows (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            round_index INTEGER NOT NULL,
            model TEXT NOT NULL,
            row_index INTEGER NOT NULL,
            predictor TEXT,
            source TEXT NOT NULL DEFAULT 'self',
            messages TEXT NOT NULL,
            outputs TEXT NOT NULL,
            PRIMARY KEY (run_id, round_index, model, row_index)
        )
    """
    for statement in statements.split(";"):
        if statement.strip():
            db.execute(statement)


@MIGRATIONS()
def m002_worker_ownership(db: Database) -> None:
    """Runs supervised across processes: heartbeats, cancel requests, the CPU queue and its lease.

    ``heartbeat_at`` (epoch seconds) is refreshed by the supervising process; a run whose heartbeat is
    too old has lost its owner (pids mean nothing across containers). ``cancel_requested_at`` is a
    request any process may write and the worker polls. ``local_cpu``/``queued_at`` order the CPU
    queue; the ``leases`` row named ``cpu`` says which run holds the embedded CPU models.
    """
    db["runs"].add_column("heartbeat_at", float)
    db["runs"].add_column("cancel_requested_at", float)
    db["runs"].add_column("local_cpu", int, not_null_default=0)
    db["runs"].add_column("queued_at", float)
    db["runs"].add_column("base_dir", str)
    db["runs"].add_column("owner_host", str)
    db["runs"].add_column("worker_pid", int)
    db.execute("update runs set queued_at = id")
    db["leases"].create({"name": str, "run_id": int, "heartbeat_at": float, "acquired_at": float}, pk="name")


@MIGRATIONS()
def m004_sweeps(db: Database) -> None:
    """Sweeps (strategies x seeds as one job) and their child runs; ``runs.test_plan`` says which rounds a
    run evaluates on the test split (NULL: the baseline and the best, as before) and ``runs.kept_rounds``
    which round each strategy read from the run keeps. A child's run row stays a run like any other;
    deleting it leaves the child without a run (``ON DELETE SET NULL``)."""
    statements = """
        CREATE TABLE IF NOT EXISTS sweeps (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT,
            config TEXT NOT NULL,
            error TEXT,
            summary TEXT,
            base_dir TEXT,
            owner_pid INTEGER,
            owner_host TEXT,
            heartbeat_at REAL,
            cancel_requested_at REAL
        );
        CREATE INDEX IF NOT EXISTS idx_sweeps_status ON sweeps (status);
        CREATE TABLE IF NOT EXISTS sweep_children (
            sweep_id INTEGER NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            seed INTEGER NOT NULL,
            strategy TEXT NOT NULL,
            covers TEXT NOT NULL,
            baseline_from INTEGER,
            run_id INTEGER REFERENCES runs(id) ON DELETE SET NULL,
            PRIMARY KEY (sweep_id, position)
        );
        CREATE INDEX IF NOT EXISTS idx_sweep_children_run ON sweep_children (run_id)
    """
    for statement in statements.split(";"):
        if statement.strip():
            db.execute(statement)
    db["runs"].add_column("test_plan", str)
    db["runs"].add_column("kept_rounds", str)
