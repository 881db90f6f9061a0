"""The run store: SQLite through sqlite-utils, shared by the background worker and the pages.

The database is the channel between the worker (which writes) and the pages (which read).
It runs in WAL mode so that readers in several browser tabs never block the writer, and it
sets a busy timeout so that concurrent writers wait for each other instead of failing.

A sqlite3 connection belongs to the thread that opened it, so a ``Store`` only holds the
path: every thread gets its own ``sqlite_utils.Database`` (see ``Store.db``).

The schema is built by ordered, named migrations (``sqlite_utils.Migrations``); opening a
store applies the pending ones, so opening it again changes nothing. Add a migration at the
end of ``core/store/migrations.py`` to change the schema; never edit one that has shipped.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from core.config.schema import RunConfig, config_to_dict
from core.errors import StoreError
from core.store.liveness import OwnershipMixin, host_name, process_start_time
from core.store.migrations import MIGRATIONS
from core.store.records import TERMINAL, Artifact, Event, Round, Run, RunOutcome, RunStatus
from core.store.rows import (
    TERMINAL_VALUES,
    artifact_from_row,
    event_from_row,
    now_iso,
    parse_status,
    placeholders,
    round_from_row,
    round_to_row,
    run_from_row,
    to_json,
)
from core.store.secrets import find_secrets, redact, redact_value
from core.store.sweeps import SweepsMixin

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000
"""How long a writer waits for another writer's transaction before giving up."""


class Store(OwnershipMixin, SweepsMixin):
    """The run store at one SQLite file; safe to share between threads.

    The object holds only the path; each thread that uses it gets its own connection.
    """

    def __init__(self, path: str | Path) -> None:
        """Open (or create) the store at ``path``: create the folder, enable WAL, migrate."""
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the folder of the run store {self.path}: {e}") from e
        self._local = threading.local()
        db = self.db
        try:
            db.enable_wal()
            with self._write(db):
                MIGRATIONS.apply(db)
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the run store {self.path}: {e}") from e

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # -- connections ---------------------------------------------------------------------

    @property
    def db(self) -> Database:
        """This thread's ``sqlite_utils.Database`` (opened on first use in the thread)."""
        db: Database | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
        return db

    def _connect(self) -> Database:
        """A new connection with a busy timeout and foreign keys enforced."""
        try:
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open the run store {self.path}: {e}") from e
        logger.debug("opened %s in thread %s", self.path, threading.current_thread().name)
        return Database(conn, execute_plugins=False)

    def close(self) -> None:
        """Close this thread's connection (other threads keep theirs); reopened on next use."""
        db: Database | None = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    @contextmanager
    def _write(self, db: Database | None = None) -> Iterator[Database]:
        """A write transaction taken with ``BEGIN IMMEDIATE``.

        Taking the write lock up front means the busy timeout applies: a writer that reads and
        then writes in a deferred transaction could fail at once with ``SQLITE_BUSY`` instead.
        SQLite errors (a lock held past the timeout, a full disk) become ``StoreError``.
        """
        db = db or self.db
        try:
            db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.conn.in_transaction:
                    db.conn.execute("ROLLBACK")
                raise
            db.conn.execute("COMMIT")
        except sqlite3.Error as e:
            if db.conn.in_transaction:
                db.conn.execute("ROLLBACK")
            raise StoreError(f"cannot write to the run store {self.path}: {e}") from e

    # -- schema --------------------------------------------------------------------------

    def applied_migrations(self) -> list[str]:
        """Names of the migrations applied to this database, in order."""
        return [migration.name for migration in MIGRATIONS.applied(self.db)]

    @property
    def schema_version(self) -> int:
        """The number of migrations applied."""
        return len(self.applied_migrations())

    # -- runs ----------------------------------------------------------------------------

    def create_run(self, name: str, config: RunConfig, status: RunStatus = RunStatus.QUEUED, *,
                   local_cpu: bool = False, base_dir: str | Path | None = None) -> int:
        """Record a new run owned by this process (heartbeat now) and return its id.

        ``local_cpu`` puts it in the database-wide CPU queue; ``base_dir`` is where relative data
        paths of its config resolve (kept so that a resume prepares the very same data).

        Typed API keys are never dumped; any other key named like a secret (``api_key``, ``token``,
        ``password`` ... in a factory's options, say) with a non-empty string value is refused.
        """
        status = parse_status(status)
        if not name or not name.strip():
            raise StoreError("a run needs a non-empty name")
        if not isinstance(config, RunConfig):
            raise StoreError(f"a run's config must be a RunConfig, got {type(config).__name__}")
        document = config_to_dict(config)
        secrets_found = find_secrets(document)
        if secrets_found:
            raise StoreError(
                f"the run config holds secret values at {', '.join(secrets_found)}; the store never "
                "keeps secrets: strip them (use an environment variable name instead) before saving"
            )
        now = now_iso()
        pid = os.getpid()
        row = {
            "name": name,
            "status": status.value,
            "created_at": now,
            "started_at": now if status is not RunStatus.QUEUED else None,
            "finished_at": now if status in TERMINAL else None,
            "config": to_json(redact_value(document), "the run config"),
            "flagged": 0,
            "owner_pid": pid,
            "owner_started": process_start_time(pid),
            "owner_host": host_name(),
            "heartbeat_at": time.time(),
            "queued_at": time.time(),
            "local_cpu": int(local_cpu),
            "base_dir": None if base_dir is None else str(base_dir),
        }
        with self._write() as db:
            run_id = db["runs"].insert(row).last_pk
        logger.info("created run %s (%s, %s)", run_id, name, status.value)
        return int(run_id)

    def get_run(self, run_id: int) -> Run:
        """The run ``run_id``; StoreError when there is none."""
        rows = list(self.db.query("select * from runs where id = ?", [run_id]))
        if not rows:
            raise StoreError(f"no run with id {run_id}")
        row = rows[0]
        position = None
        if row["status"] == RunStatus.QUEUED.value:
            position = self.db.execute(
                "select count(*) from runs where status = ? and (queued_at < ? or (queued_at = ? and id <= ?))",
                [RunStatus.QUEUED.value, row["queued_at"], row["queued_at"], run_id],
            ).fetchone()[0]
        return run_from_row(row, position)

    def list_runs(self, limit: int = 100) -> list[Run]:
        """The ``limit`` newest runs, newest first; queued ones carry their queue position."""
        db = self.db
        queued = [
            row["id"]
            for row in db.query("select id from runs where status = ? order by queued_at, id", [RunStatus.QUEUED.value])
        ]
        positions = {run_id: position for position, run_id in enumerate(queued, start=1)}
        rows = db.query("select * from runs order by id desc limit ?", [limit])
        return [run_from_row(row, positions.get(row["id"])) for row in rows]

    def queued_run_ids(self) -> list[int]:
        """Ids of the queued runs, next to start first."""
        rows = self.db.query("select id from runs where status = ? order by queued_at, id", [RunStatus.QUEUED.value])
        return [row["id"] for row in rows]

    def set_status(self, run_id: int, status: RunStatus, *, error: str | None = None) -> bool:
        """Move run ``run_id`` to ``status``; True when written, False when it was already terminal.

        Becoming running sets ``started_at`` (once); becoming terminal sets ``finished_at``.
        A terminal status never changes again, so a late writer cannot resurrect a run.
        """
        return self._update_active(run_id, parse_status(status), {"error": error} if error is not None else {})

    def claim_run(self, run_id: int, pid: int, started: float | None) -> bool:
        """Make process ``pid`` (started at ``started``) the owner of run ``run_id`` and mark it
        running; False when the run is already terminal (for example cancelled while queued)."""
        return self._update_active(run_id, RunStatus.RUNNING, {"owner_pid": pid, "owner_started": started,
                                                               "owner_host": host_name(), "heartbeat_at": time.time()})

    def finish_run(self, run_id: int, outcome: RunOutcome) -> bool:
        """End run ``run_id`` with the terminal status and results of ``outcome`` in one write.

        False (nothing written) when the run was already terminal.
        """
        status = parse_status(outcome.status)
        if status not in TERMINAL:
            allowed = ", ".join(sorted(s.value for s in TERMINAL))
            raise StoreError(f"finish_run needs a terminal status, got {status.value!r}; allowed: {allowed}")
        results = {
            "best_strategy": outcome.best_strategy,
            "best_score": outcome.best_score,
            "baseline_score": outcome.baseline_score,
            "test_baseline_score": outcome.test_baseline_score,
            "test_best_score": outcome.test_best_score,
            "flagged": int(outcome.flagged),
            "error": outcome.error,
        }
        return self._update_active(run_id, status, results)

    def _update_active(self, run_id: int, status: RunStatus, values: dict[str, Any]) -> bool:
        """Set ``status`` and ``values`` on a run that is not terminal yet, in one statement."""
        assignments = {"status": status.value, **values}
        if assignments.get("error"):
            assignments["error"] = redact(assignments["error"])  # provider errors may quote keys
        sets = [f"[{column}] = ?" for column in assignments]
        params: list[Any] = list(assignments.values())
        if status is RunStatus.RUNNING:
            sets.append("started_at = coalesce(started_at, ?)")
            params.append(now_iso())
        if status in TERMINAL:
            sets.append("finished_at = ?")
            params.append(now_iso())
        sql = (
            f"update runs set {', '.join(sets)} "
            f"where id = ? and status not in ({placeholders(TERMINAL_VALUES)})"
        )
        with self._write() as db:
            changed = db.execute(sql, [*params, run_id, *TERMINAL_VALUES]).rowcount
            if not changed:
                current = db.execute("select status from runs where id = ?", [run_id]).fetchone()
                if current is None:
                    raise StoreError(f"no run with id {run_id}")
        if not changed:
            logger.warning("run %s is already %s; not changing it to %s", run_id, current[0], status.value)
            return False
        logger.info("run %s is now %s", run_id, status.value)
        return True

    def delete_run(self, run_id: int) -> None:
        """Delete run ``run_id`` with its rounds, events and artifact rows (files stay)."""
        with self._write() as db:
            for table in ("rounds", "events", "artifacts", "leases"):
                db.execute(f"delete from {table} where run_id = ?", [run_id])
            if not db.execute("delete from runs where id = ?", [run_id]).rowcount:
                raise StoreError(f"no run with id {run_id}")
        logger.info("deleted run %s", run_id)

    def _require_run(self, db: Database, run_id: int) -> None:
        if db.execute("select 1 from runs where id = ?", [run_id]).fetchone() is None:
            raise StoreError(f"no run with id {run_id}")

    # -- rounds --------------------------------------------------------------------------

    def add_round(self, round_: Round) -> None:
        """Insert or replace round ``(round_.run_id, round_.index)``."""
        row = round_to_row(round_)
        if row.get("eval_error"):
            row["eval_error"] = redact(row["eval_error"])
        with self._write() as db:
            self._require_run(db, round_.run_id)
            db["rounds"].upsert(row, pk=("run_id", "round_index"))

    def list_rounds(self, run_id: int) -> list[Round]:
        """The rounds of run ``run_id`` by index (baseline first)."""
        rows = self.db.query("select * from rounds where run_id = ? order by round_index", [run_id])
        return [round_from_row(row) for row in rows]

    def mark_best(self, run_id: int, index: int) -> None:
        """Make round ``index`` the only best round of run ``run_id`` (one transaction)."""
        with self._write() as db:
            found = db.execute(
                "select 1 from rounds where run_id = ? and round_index = ?", [run_id, index]
            ).fetchone()
            if found is None:
                raise StoreError(f"run {run_id} has no round {index}")
            db.execute("update rounds set is_best = (round_index = ?) where run_id = ?", [index, run_id])

    # -- events --------------------------------------------------------------------------

    def add_event(self, run_id: int, kind: str, message: str, data: dict[str, Any] | None = None) -> int:
        """Append an event to run ``run_id`` and return its id (ids grow with time)."""
        row = {
            "run_id": run_id,
            "time": now_iso(),
            "kind": kind,
            "message": redact(message),
            "data": to_json(redact_value(data), f"the data of the {kind!r} event"),
        }
        with self._write() as db:
            self._require_run(db, run_id)
            return int(db["events"].insert(row).last_pk)

    def list_events(
        self,
        run_id: int,
        since_id: int = 0,
        kinds: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[Event]:
        """Events of run ``run_id`` with an id above ``since_id``, oldest first.

        ``kinds`` keeps only those kinds; ``limit`` keeps the first ``limit`` of them.
        """
        sql = "select * from events where run_id = ? and id > ?"
        params: list[Any] = [run_id, since_id]
        if kinds is not None:
            kinds = list(kinds)
            if not kinds:
                return []
            sql += f" and kind in ({placeholders(kinds)})"
            params.extend(kinds)
        sql += " order by id"
        if limit is not None:
            sql += " limit ?"
            params.append(limit)
        return [event_from_row(row) for row in self.db.query(sql, params)]

    def latest_event(self, run_id: int, kind: str) -> Event | None:
        """The newest event of ``kind`` for run ``run_id``, or None."""
        rows = list(
            self.db.query(
                "select * from events where run_id = ? and kind = ? order by id desc limit 1", [run_id, kind]
            )
        )
        return event_from_row(rows[0]) if rows else None

    # -- artifacts -----------------------------------------------------------------------

    def add_artifact(
        self, run_id: int, kind: str, path: str | Path, meta: dict[str, Any] | None = None
    ) -> int:
        """Record a file or folder ``path`` produced by run ``run_id``; returns its id."""
        row = {
            "run_id": run_id,
            "kind": kind,
            "path": str(path),
            "meta": to_json(meta, f"the meta of the {kind!r} artifact"),
            "created_at": now_iso(),
        }
        with self._write() as db:
            self._require_run(db, run_id)
            return int(db["artifacts"].insert(row).last_pk)

    def list_artifacts(self, run_id: int, kind: str | None = None) -> list[Artifact]:
        """Artifacts of run ``run_id`` (only ``kind`` when given), oldest first."""
        sql = "select * from artifacts where run_id = ?"
        params: list[Any] = [run_id]
        if kind is not None:
            sql += " and kind = ?"
            params.append(kind)
        rows = self.db.query(sql + " order by id", params)
        return [artifact_from_row(row) for row in rows]
