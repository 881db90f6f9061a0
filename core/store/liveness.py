"""Who owns a run, across processes and containers: heartbeats, cancel requests, the CPU lease.

Why heartbeats and not pids: two app processes (or the CLI and the app, or two containers on one
volume) share the database file but not a pid namespace; a pid seen from another container is
meaningless and may even belong to an unrelated process there. So the process that supervises a
run refreshes ``runs.heartbeat_at`` every ``HEARTBEAT_EVERY_S`` seconds, and a queued or running
run whose heartbeat is older than ``HEARTBEAT_TIMEOUT_S`` has lost its owner.

Why the queue and the lease live in the database: the embedded models use every CPU core, so at
most one run anywhere may use them. The queue is the ``queued`` runs with ``local_cpu`` ordered by
``queued_at``; the ``leases`` row named ``cpu`` names the run that holds the CPU. Taking the lease
is one ``BEGIN IMMEDIATE`` transaction (SQLite serialises writers across processes), so two
processes can never both take it. A lease whose heartbeat is stale, or whose run has ended, is free.

Cancel is a request written into the run's row (``cancel_requested_at``) by any process; the
worker polls it. ``process_start_time`` stays for the informational owner columns.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from core.errors import StoreError
from core.store.records import RunStatus
from core.store.rows import ACTIVE_VALUES, now_iso, placeholders

logger = logging.getLogger(__name__)

HEARTBEAT_EVERY_S = 2.0
"""How often a supervising process refreshes the heartbeat of its runs."""

HEARTBEAT_TIMEOUT_S = 20.0
"""A queued or running run whose heartbeat is older than this has lost its owner."""

CPU_LEASE = "cpu"
RESUMABLE = (RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.INTERRUPTED)


def host_name() -> str:
    return socket.gethostname()


def process_start_time(pid: int) -> float | None:
    """Start time of process ``pid`` in seconds since the epoch, or None where unknown (no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot_time = next((float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                          if line.startswith("btime ")), None)
    except (OSError, ValueError):
        return None
    if boot_time is None:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    try:
        start_ticks = int(fields[19])  # field 22 of proc(5); fields[0] is field 3
    except (IndexError, ValueError):
        return None
    return boot_time + start_ticks / os.sysconf("SC_CLK_TCK")


class OwnershipMixin:
    """The ``Store`` methods about ownership; they use the store's ``db`` and ``_write``."""

    db: Any
    _write: Any
    _update_active: Any

    def heartbeat(self, run_ids: list[int], now: float | None = None) -> None:
        """Refresh the heartbeat of these active runs and of the CPU lease one of them may hold."""
        if not run_ids:
            return
        now = time.time() if now is None else now
        marks = placeholders(run_ids)
        with self._write() as db:
            db.execute(f"update runs set heartbeat_at = ? where id in ({marks}) and status in "
                       f"({placeholders(ACTIVE_VALUES)})", [now, *run_ids, *ACTIVE_VALUES])
            db.execute(f"update leases set heartbeat_at = ? where run_id in ({marks})", [now, *run_ids])

    def request_cancel(self, run_id: int) -> bool:
        """Ask run ``run_id`` to stop (from any process); False when it is not queued or running."""
        with self._write() as db:
            changed = db.execute(
                f"update runs set cancel_requested_at = coalesce(cancel_requested_at, ?) "
                f"where id = ? and status in ({placeholders(ACTIVE_VALUES)})",
                [time.time(), run_id, *ACTIVE_VALUES],
            ).rowcount
            if not changed and db.execute("select 1 from runs where id = ?", [run_id]).fetchone() is None:
                raise StoreError(f"no run with id {run_id}")
        return bool(changed)

    def cancel_requested(self, run_id: int) -> bool:
        row = self.db.execute("select cancel_requested_at from runs where id = ?", [run_id]).fetchone()
        return row is not None and row[0] is not None

    def run_status(self, run_id: int) -> RunStatus:
        """The stored status of run ``run_id`` (a cheap read for pollers)."""
        row = self.db.execute("select status from runs where id = ?", [run_id]).fetchone()
        if row is None:
            raise StoreError(f"no run with id {run_id}")
        return RunStatus(row[0])

    def is_stale(self, run_id: int, *, now: float | None = None, stale_after: float = HEARTBEAT_TIMEOUT_S) -> bool:
        """True when run ``run_id`` is active but its owner stopped refreshing the heartbeat."""
        now = time.time() if now is None else now
        row = self.db.execute("select status, heartbeat_at from runs where id = ?", [run_id]).fetchone()
        if row is None or row[0] not in ACTIVE_VALUES:
            return False
        return row[1] is None or row[1] < now - stale_after

    def try_acquire_cpu(self, run_id: int, *, now: float | None = None,
                        stale_after: float = HEARTBEAT_TIMEOUT_S) -> bool:
        """Take the CPU lease for queued run ``run_id`` if it is free and the run is first in the queue.

        On success the run is running (claimed by this process) in the same transaction.
        """
        now = time.time() if now is None else now
        fresh = now - stale_after
        with self._write() as db:
            holder = db.execute(
                "select l.run_id, l.heartbeat_at, r.status from leases l left join runs r on r.id = l.run_id "
                "where l.name = ?", [CPU_LEASE]
            ).fetchone()
            if holder is not None and holder[0] != run_id and holder[2] in ACTIVE_VALUES and holder[1] >= fresh:
                return False
            first = db.execute(
                "select id from runs where status = ? and local_cpu = 1 and heartbeat_at >= ? "
                "order by queued_at, id limit 1", [RunStatus.QUEUED.value, fresh]
            ).fetchone()
            if first is None or first[0] != run_id:
                return False
            db.execute("insert or replace into leases (name, run_id, heartbeat_at, acquired_at) values (?, ?, ?, ?)",
                       [CPU_LEASE, run_id, now, now])
            pid = os.getpid()
            db.execute(
                "update runs set status = ?, started_at = coalesce(started_at, ?), heartbeat_at = ?, owner_pid = ?, "
                "owner_started = ?, owner_host = ? where id = ?",
                [RunStatus.RUNNING.value, now_iso(), now, pid, process_start_time(pid), host_name(), run_id],
            )
        logger.info("run %s holds the CPU lease", run_id)
        return True

    def release_cpu(self, run_id: int) -> None:
        with self._write() as db:
            db.execute("delete from leases where name = ? and run_id = ?", [CPU_LEASE, run_id])

    def cpu_holder(self) -> int | None:
        row = self.db.execute("select run_id from leases where name = ?", [CPU_LEASE]).fetchone()
        return None if row is None else row[0]

    def leave_cpu_queue(self, run_id: int) -> None:
        """Take run ``run_id`` out of this database's CPU queue: it runs on another machine's CPU (a Ray
        node's, ``core.run.ray_executor``), so it must not hold back the runs waiting for this one's."""
        with self._write() as db:
            db.execute("update runs set local_cpu = 0 where id = ?", [run_id])

    def set_worker_pid(self, run_id: int, pid: int | None) -> None:
        with self._write() as db:
            db.execute("update runs set worker_pid = ? where id = ?", [pid, run_id])

    def best_so_far(self, run_id: int) -> dict[str, Any]:
        """The stored best round (``is_best``, decided by the run's recorder) and the baseline score, for
        runs that ended abruptly: never a second computation of "best"."""
        rows = list(self.db.query(
            "select round_index, strategy, score, is_best from rounds where run_id = ? order by round_index", [run_id]))
        best = next((r for r in rows if r["is_best"]), None)
        baseline = next((r["score"] for r in rows if r["round_index"] == 0), None)
        return {
            "best_strategy": best["strategy"] if best else None,
            "best_score": best["score"] if best else None,
            "baseline_score": baseline,
        }

    def end_abruptly(self, run_id: int, status: RunStatus, error: str) -> bool:
        """End an active run that stopped without a result of its own; keeps the best round so far."""
        return self._update_active(run_id, status, {**self.best_so_far(run_id), "error": error})

    def recover_interrupted(self, *, now: float | None = None, stale_after: float = HEARTBEAT_TIMEOUT_S) -> list[int]:
        """Mark queued or running runs whose heartbeat is older than ``stale_after`` as interrupted.

        Their rounds, events and artifacts (and the best program so far) are kept. Returns the ids.
        """
        now = time.time() if now is None else now
        rows = list(self.db.query(
            f"select id, status, heartbeat_at, owner_pid, owner_host from runs "
            f"where status in ({placeholders(ACTIVE_VALUES)}) and (heartbeat_at is null or heartbeat_at < ?) "
            f"order by id", [*ACTIVE_VALUES, now - stale_after]))
        marked: list[int] = []
        for row in rows:
            when = "during the run" if row["status"] == RunStatus.RUNNING.value else "before the run started"
            owner = f"process {row['owner_pid']} on {row['owner_host'] or 'an unknown host'}"
            silent = "never" if row["heartbeat_at"] is None else f"not for {now - row['heartbeat_at']:.0f} s"
            error = (f"The app stopped {when} (its owner, {owner}, has {silent} sent a heartbeat); the rounds "
                     f"recorded so far are kept; resume it with `python -m core resume {row['id']}`.")
            if self.end_abruptly(row["id"], RunStatus.INTERRUPTED, error):
                marked.append(row["id"])
        if marked:
            logger.info("marked runs %s as interrupted", marked)
        return marked

    def reopen_run(self, run_id: int, *, local_cpu: bool) -> None:
        """Move a failed, cancelled or interrupted run back to ``queued`` so that it can be resumed.

        One conditional update: two processes cannot both reopen it. Its rounds stay.
        """
        allowed = [s.value for s in RESUMABLE]
        now = time.time()
        pid = os.getpid()
        with self._write() as db:
            changed = db.execute(
                f"update runs set status = ?, finished_at = null, error = null, cancel_requested_at = null, "
                f"flagged = 0, test_baseline_score = null, test_best_score = null, queued_at = ?, heartbeat_at = ?, "
                f"local_cpu = ?, owner_pid = ?, owner_started = ?, owner_host = ?, worker_pid = null "
                f"where id = ? and status in ({placeholders(allowed)})",
                [RunStatus.QUEUED.value, now, now, int(local_cpu), pid, process_start_time(pid), host_name(),
                 run_id, *allowed],
            ).rowcount
            if not changed:
                row = db.execute("select status from runs where id = ?", [run_id]).fetchone()
                if row is None:
                    raise StoreError(f"no run with id {run_id}")
                raise StoreError(f"run {run_id} is {row[0]}; only {', '.join(allowed)} runs can be resumed")

