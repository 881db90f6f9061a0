"""The run store: SQLite through sqlite-utils, shared by the background worker and the pages.

The database is the channel between the worker (which writes) and the pages (which read).
It runs in WAL mode so that readers in several browser tabs never block the writer, and it
sets a busy timeout so that concurrent writers wait for each other instead of failing.

A sqlite3 connection belongs to the thread that opened it, so a ``Store`` only holds the
path: every thread gets its own ``sqlite_utils.Database`` (see ``Store.db``).

The schema is built by ordered, named migrations (``sqlite_utils.Migrations``); opening a
store applies the pending ones, so opening it again changes nothing. Add a migration at the
end of this module to change the schema; never edit one that has shipped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlite_utils import Database, Migrations

from core.errors import StoreError
from core.records import TERMINAL, Artifact, Event, Round, Run, RunStatus

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 30_000
"""How long a writer waits for another writer's transaction before giving up."""

MIGRATIONS = Migrations("bettertogether_studio")

_TERMINAL_VALUES = tuple(sorted(status.value for status in TERMINAL))
_ACTIVE_VALUES = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)

IsAlive = Callable[[int, "float | None"], bool]


# --------------------------------------------------------------------------------------------
# Migrations. Append new ones; never edit or reorder those already applied somewhere.
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def process_start_time(pid: int) -> float | None:
    """Start time of process ``pid`` in seconds since the epoch, or None where unknown.

    Read from ``/proc`` (Linux); returns None when ``/proc`` is missing or the process is gone.
    Two processes that share a pid at different times have different start times.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot_time = _boot_time()
    except (OSError, ValueError):
        return None
    if boot_time is None:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        start_ticks = int(fields[19])  # field 22 of proc(5); fields[0] is field 3
    except (IndexError, ValueError):
        return None
    return boot_time + start_ticks / os.sysconf("SC_CLK_TCK")


def _boot_time() -> float | None:
    """Boot time in seconds since the epoch, from ``/proc/stat``."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return None


def _is_zombie(pid: int) -> bool:
    """True when ``/proc`` says the process has exited and waits to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].startswith("Z")


def default_is_alive(pid: int, started: float | None) -> bool:
    """True when process ``pid`` exists and, where known, started at ``started``.

    ``os.kill(pid, 0)`` tells whether the pid exists; where ``/proc`` is available the start
    time must also match (within a second) so that a recycled pid is not taken for the owner.
    """
    if os.name == "nt":  # os.kill would terminate the process there; assume alive.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # It exists but belongs to another user.
    if _is_zombie(pid):
        return False
    if started is None:
        return True
    actual = process_start_time(pid)
    return actual is None or abs(actual - started) < 1.0


# --------------------------------------------------------------------------------------------
# Secrets guard
# --------------------------------------------------------------------------------------------

_SECRET_LAST_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "passphrase", "credentials"}
# "..._key" names that are structure, not secrets ("step_key" holds a strategy step like "p").
_STRUCTURAL_KEY_QUALIFIERS = frozenset(
    {"step", "strategy", "sort", "primary", "foreign", "group", "join", "lookup", "cache"}
    | {"column", "field", "label", "input", "output", "answer", "question", "example", "metric"}
)


def _words(name: str) -> list[str]:
    """``"openaiApiKey"`` / ``"OPENAI_API_KEY"`` / ``"api-key"`` -> ``["openai", "api", "key"]``."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [word for word in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if word]


def is_secret_name(name: str) -> bool:
    """True for key names like ``api_key``, ``OPENAI_API_KEY``, ``key``, ``hf_token``,
    ``client_secret``, ``password``.

    ``max_tokens``, ``tokenizer``, ``step_key``/``sort_key`` (structure) and ``api_key_env``
    (the *name* of an environment variable) are not secrets.
    """
    words = _words(name)
    if not words or words[-1] not in _SECRET_LAST_WORDS:
        return False
    return not (words[-1] == "key" and len(words) > 1 and words[-2] in _STRUCTURAL_KEY_QUALIFIERS)


def find_secrets(value: Any, path: str = "config") -> list[str]:
    """Key paths (``config.lms.main.api_key``) whose name looks secret and whose value is a
    non-empty string."""
    found: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            item_path = f"{path}.{key}"
            if isinstance(item, str) and item.strip() and is_secret_name(str(key)):
                found.append(item_path)
            else:
                found.extend(find_secrets(item, item_path))
    elif isinstance(value, (list, tuple)):
        for position, item in enumerate(value):
            found.extend(find_secrets(item, f"{path}[{position}]"))
    return found


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def now_iso() -> str:
    """The current UTC time as an ISO 8601 string with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _to_json(value: Any, what: str) -> str:
    """Encode a JSON column; a value JSON cannot hold is an error, never silently replaced."""
    try:
        return json.dumps(value if value is not None else {}, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise StoreError(
            f"{what} cannot be stored: it must be JSON (dicts, lists, str, numbers, bool, None): {e}"
        ) from e


def _from_json(text: str | None) -> Any:
    return json.loads(text) if text else {}


def _status(status: RunStatus | str) -> RunStatus:
    try:
        return RunStatus(status)
    except ValueError as e:
        allowed = ", ".join(s.value for s in RunStatus)
        raise StoreError(f"unknown run status {status!r}; allowed: {allowed}") from e


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _run_from_row(row: Mapping[str, Any], queue_position: int | None) -> Run:
    return Run(
        id=row["id"],
        name=row["name"],
        status=RunStatus(row["status"]),
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        config=_from_json(row["config"]),
        error=row["error"],
        best_strategy=row["best_strategy"],
        best_score=_optional_float(row["best_score"]),
        baseline_score=_optional_float(row["baseline_score"]),
        test_baseline_score=_optional_float(row["test_baseline_score"]),
        test_best_score=_optional_float(row["test_best_score"]),
        flagged=bool(row["flagged"]),
        owner_pid=row["owner_pid"],
        owner_started=_optional_float(row["owner_started"]),
        queue_position=queue_position,
    )


def _round_from_row(row: Mapping[str, Any]) -> Round:
    return Round(
        run_id=row["run_id"],
        index=row["round_index"],
        strategy=row["strategy"],
        step_key=row["step_key"],
        optimizer=row["optimizer"],
        score=_optional_float(row["score"]),
        eval_failed=bool(row["eval_failed"]),
        eval_error=row["eval_error"],
        is_best=bool(row["is_best"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        lm_usage=_from_json(row["lm_usage"]),
        predictor_models=_from_json(row["predictor_models"]),
        demos=_from_json(row["demos"]),
        instructions=_from_json(row["instructions"]),
        details=_from_json(row["details"]),
    )


def _round_to_row(round_: Round) -> dict[str, Any]:
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
    for column in ("lm_usage", "predictor_models", "demos", "instructions", "details"):
        row[column] = _to_json(getattr(round_, column), f"{column} of {where}")
    return row


def _event_from_row(row: Mapping[str, Any]) -> Event:
    return Event(
        id=row["id"],
        run_id=row["run_id"],
        time=row["time"],
        kind=row["kind"],
        message=row["message"],
        data=_from_json(row["data"]),
    )


def _artifact_from_row(row: Mapping[str, Any]) -> Artifact:
    return Artifact(
        id=row["id"], run_id=row["run_id"], kind=row["kind"], path=row["path"], meta=_from_json(row["meta"])
    )


def _placeholders(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class Store:
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

    def create_run(self, name: str, config: dict[str, Any], status: RunStatus = RunStatus.QUEUED) -> int:
        """Record a new run owned by this process and return its id.

        ``config`` must hold no secrets (the caller strips them); a key named like a secret
        (``api_key``, ``token``, ``password`` ...) with a non-empty string value is refused.
        """
        status = _status(status)
        if not name or not name.strip():
            raise StoreError("a run needs a non-empty name")
        secrets_found = find_secrets(config)
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
            "config": _to_json(config, "the run config"),
            "flagged": 0,
            "owner_pid": pid,
            "owner_started": process_start_time(pid),
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
                "select count(*) from runs where status = ? and id <= ?", [RunStatus.QUEUED.value, run_id]
            ).fetchone()[0]
        return _run_from_row(row, position)

    def list_runs(self, limit: int = 100) -> list[Run]:
        """The ``limit`` newest runs, newest first; queued ones carry their queue position."""
        db = self.db
        queued = [
            row["id"]
            for row in db.query("select id from runs where status = ? order by id", [RunStatus.QUEUED.value])
        ]
        positions = {run_id: position for position, run_id in enumerate(queued, start=1)}
        rows = db.query("select * from runs order by id desc limit ?", [limit])
        return [_run_from_row(row, positions.get(row["id"])) for row in rows]

    def queued_run_ids(self) -> list[int]:
        """Ids of the queued runs, next to start first."""
        rows = self.db.query("select id from runs where status = ? order by id", [RunStatus.QUEUED.value])
        return [row["id"] for row in rows]

    def set_status(self, run_id: int, status: RunStatus, *, error: str | None = None) -> bool:
        """Move run ``run_id`` to ``status``; True when written, False when it was already terminal.

        Becoming running sets ``started_at`` (once); becoming terminal sets ``finished_at``.
        A terminal status never changes again, so a late writer cannot resurrect a run.
        """
        return self._update_active(run_id, _status(status), {"error": error} if error is not None else {})

    def claim_run(self, run_id: int, pid: int, started: float | None) -> bool:
        """Make process ``pid`` (started at ``started``) the owner of run ``run_id`` and mark it
        running; False when the run is already terminal (for example cancelled while queued)."""
        return self._update_active(run_id, RunStatus.RUNNING, {"owner_pid": pid, "owner_started": started})

    def finish_run(
        self,
        run_id: int,
        status: RunStatus,
        *,
        best_strategy: str | None,
        best_score: float | None,
        baseline_score: float | None,
        test_baseline_score: float | None,
        test_best_score: float | None,
        flagged: bool,
        error: str | None = None,
    ) -> bool:
        """End run ``run_id`` with terminal ``status`` and its results in one write.

        False (nothing written) when the run was already terminal.
        """
        status = _status(status)
        if status not in TERMINAL:
            allowed = ", ".join(sorted(s.value for s in TERMINAL))
            raise StoreError(f"finish_run needs a terminal status, got {status.value!r}; allowed: {allowed}")
        results = {
            "best_strategy": best_strategy,
            "best_score": best_score,
            "baseline_score": baseline_score,
            "test_baseline_score": test_baseline_score,
            "test_best_score": test_best_score,
            "flagged": int(flagged),
            "error": error,
        }
        return self._update_active(run_id, status, results)

    def _update_active(self, run_id: int, status: RunStatus, values: dict[str, Any]) -> bool:
        """Set ``status`` and ``values`` on a run that is not terminal yet, in one statement."""
        assignments = {"status": status.value, **values}
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
            f"where id = ? and status not in ({_placeholders(_TERMINAL_VALUES)})"
        )
        with self._write() as db:
            changed = db.execute(sql, [*params, run_id, *_TERMINAL_VALUES]).rowcount
            if not changed:
                current = db.execute("select status from runs where id = ?", [run_id]).fetchone()
                if current is None:
                    raise StoreError(f"no run with id {run_id}")
        if not changed:
            logger.warning("run %s is already %s; not changing it to %s", run_id, current[0], status.value)
            return False
        logger.info("run %s is now %s", run_id, status.value)
        return True

    def recover_interrupted(self, is_alive: IsAlive = default_is_alive) -> list[int]:
        """At start-up, mark queued or running runs whose owner process is gone as interrupted.

        ``is_alive(pid, started)`` decides whether an owner still lives; a run with no owner is
        orphaned. Their rounds, events and artifacts are kept. Returns the ids marked.
        """
        rows = list(
            self.db.query(
                f"select id, status, owner_pid, owner_started from runs "
                f"where status in ({_placeholders(_ACTIVE_VALUES)}) order by id",
                list(_ACTIVE_VALUES),
            )
        )
        marked: list[int] = []
        for row in rows:
            pid = row["owner_pid"]
            if pid is not None and is_alive(pid, row["owner_started"]):
                continue
            owner = f"process {pid}" if pid is not None else "no process"
            when = "during the run" if row["status"] == RunStatus.RUNNING.value else "before the run started"
            error = f"The app stopped {when} (owner {owner} is gone); the rounds recorded so far are kept."
            if self._update_active(row["id"], RunStatus.INTERRUPTED, {"error": error}):
                marked.append(row["id"])
        if marked:
            logger.info("marked runs %s as interrupted", marked)
        return marked

    def delete_run(self, run_id: int) -> None:
        """Delete run ``run_id`` with its rounds, events and artifact rows (files stay)."""
        with self._write() as db:
            for table in ("rounds", "events", "artifacts"):
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
        row = _round_to_row(round_)
        with self._write() as db:
            self._require_run(db, round_.run_id)
            db["rounds"].upsert(row, pk=("run_id", "round_index"))

    def list_rounds(self, run_id: int) -> list[Round]:
        """The rounds of run ``run_id`` by index (baseline first)."""
        rows = self.db.query("select * from rounds where run_id = ? order by round_index", [run_id])
        return [_round_from_row(row) for row in rows]

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
            "message": message,
            "data": _to_json(data, f"the data of the {kind!r} event"),
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
            sql += f" and kind in ({_placeholders(kinds)})"
            params.extend(kinds)
        sql += " order by id"
        if limit is not None:
            sql += " limit ?"
            params.append(limit)
        return [_event_from_row(row) for row in self.db.query(sql, params)]

    def latest_event(self, run_id: int, kind: str) -> Event | None:
        """The newest event of ``kind`` for run ``run_id``, or None."""
        rows = list(
            self.db.query(
                "select * from events where run_id = ? and kind = ? order by id desc limit 1", [run_id, kind]
            )
        )
        return _event_from_row(rows[0]) if rows else None

    # -- artifacts -----------------------------------------------------------------------

    def add_artifact(
        self, run_id: int, kind: str, path: str | Path, meta: dict[str, Any] | None = None
    ) -> int:
        """Record a file or folder ``path`` produced by run ``run_id``; returns its id."""
        row = {
            "run_id": run_id,
            "kind": kind,
            "path": str(path),
            "meta": _to_json(meta, f"the meta of the {kind!r} artifact"),
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
        return [_artifact_from_row(row) for row in rows]
