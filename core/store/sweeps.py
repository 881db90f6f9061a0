"""Sweeps in the run store (tables of migration ``m004_sweeps``): a sweep is a job whose children are runs.

A sweep lives as a run does: ``queued``/``running`` while the process that started it (the app or the
CLI) drives it and refreshes its heartbeat, then finished, failed, cancelled or interrupted; a terminal
status never changes again, except through ``reopen_sweep`` (resume). Its child runs are ordinary runs
(the Run and Results pages show them); ``sweep_children`` ties each to the sweep with its seed, its
strategy and the sweep's strategies it holds. ``runs.test_plan`` says which rounds a run evaluates on
the test split (``TestPlan``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.config.schema import RunConfig, config_to_dict
from core.errors import StoreError
from core.store.liveness import HEARTBEAT_TIMEOUT_S, RESUMABLE, host_name
from core.store.records import TERMINAL, RunStatus
from core.store.rows import (
    ACTIVE_VALUES,
    TERMINAL_VALUES,
    from_json,
    now_iso,
    optional_float,
    placeholders,
    stored_config,
    to_json,
)
from core.store.secrets import find_secrets, redact, redact_value
from core.store.sweep_records import Sweep, SweepChild, SweepSummary, TestPlan

logger = logging.getLogger(__name__)


def _child(row: Mapping[str, Any]) -> SweepChild:
    return SweepChild(sweep_id=row["sweep_id"], position=row["position"], seed=row["seed"], strategy=row["strategy"],
                      covers=tuple(json.loads(row["covers"])), baseline_from=row["baseline_from"],
                      run_id=row["run_id"])


def _summary(text: str | None) -> SweepSummary | None:
    if not text:
        return None
    try:
        return SweepSummary.from_json(json.loads(text))
    except (KeyError, TypeError, ValueError):  # a summary written by another version: computed again on demand
        logger.warning("cannot read a stored sweep summary", exc_info=True)
        return None


class SweepsMixin:
    """The ``Store`` methods about sweeps; they use the store's ``db`` and ``_write``."""

    db: Any
    _write: Any

    # -- sweeps -----------------------------------------------------------------------------------

    def create_sweep(self, name: str, config: RunConfig, children: Sequence[Any], *,
                     base_dir: str | Path | None = None) -> int:
        """Record a new running sweep owned by this process and its ``children`` (``core.plan.sweep.ChildPlan``s,
        in run order, none started); returns its id. Secrets are refused as for runs."""
        if not name or not name.strip():
            raise StoreError("a sweep needs a non-empty name")
        document = config_to_dict(config)
        if found := find_secrets(document):
            raise StoreError(f"the sweep config holds secret values at {', '.join(found)}; the store never keeps "
                             "secrets: strip them (use an environment variable name instead) before saving")
        positions = {child.key: i for i, child in enumerate(children)}
        now = now_iso()
        row = {"name": name, "status": RunStatus.RUNNING.value, "created_at": now, "started_at": now,
               "config": to_json(redact_value(document), "the sweep config"), "owner_pid": os.getpid(),
               "owner_host": host_name(), "heartbeat_at": time.time(),
               "base_dir": None if base_dir is None else str(base_dir)}
        with self._write() as db:
            sweep_id = int(db["sweeps"].insert(row).last_pk)
            db.conn.executemany(
                "insert into sweep_children (sweep_id, position, seed, strategy, covers, baseline_from) "
                "values (?, ?, ?, ?, ?, ?)",
                [(sweep_id, i, c.seed, c.strategy, json.dumps(list(c.covers)),
                  None if c.baseline_from is None else positions[c.baseline_from]) for i, c in enumerate(children)])
        logger.info("created sweep %s (%s, %d runs)", sweep_id, name, len(children))
        return sweep_id

    def get_sweep(self, sweep_id: int) -> Sweep:
        """Sweep ``sweep_id`` with its children; StoreError when there is none."""
        rows = list(self.db.query("select * from sweeps where id = ?", [sweep_id]))
        if not rows:
            raise StoreError(f"no sweep with id {sweep_id}")
        return self._sweep(rows[0])

    def list_sweeps(self, limit: int = 100) -> list[Sweep]:
        """The ``limit`` newest sweeps, newest first."""
        return [self._sweep(row) for row in self.db.query("select * from sweeps order by id desc limit ?", [limit])]

    def _sweep(self, row: Mapping[str, Any]) -> Sweep:
        config, problem = stored_config(row["config"])
        return Sweep(id=row["id"], name=row["name"], status=RunStatus(row["status"]), created_at=row["created_at"],
                     started_at=row["started_at"], finished_at=row["finished_at"], config=config,
                     config_problem=problem, error=row["error"], summary=_summary(row["summary"]),
                     cancel_requested=row["cancel_requested_at"] is not None,
                     heartbeat_at=optional_float(row["heartbeat_at"]), owner_pid=row["owner_pid"],
                     owner_host=row["owner_host"], base_dir=row["base_dir"],
                     children=tuple(self.sweep_children(row["id"])))

    def sweep_children(self, sweep_id: int) -> list[SweepChild]:
        """The child runs of a sweep, in run order."""
        rows = self.db.query("select * from sweep_children where sweep_id = ? order by position", [sweep_id])
        return [_child(row) for row in rows]

    def set_child_run(self, sweep_id: int, position: int, run_id: int) -> None:
        with self._write() as db:
            changed = db.execute("update sweep_children set run_id = ? where sweep_id = ? and position = ?",
                                 [run_id, sweep_id, position]).rowcount
        if not changed:
            raise StoreError(f"sweep {sweep_id} has no child run at position {position}")

    def sweep_of_run(self, run_id: int) -> SweepChild | None:
        """The sweep child that run ``run_id`` is, or None for a run of its own."""
        rows = list(self.db.query("select * from sweep_children where run_id = ?", [run_id]))
        return _child(rows[0]) if rows else None

    def sweep_status(self, sweep_id: int) -> RunStatus:
        row = self.db.execute("select status from sweeps where id = ?", [sweep_id]).fetchone()
        if row is None:
            raise StoreError(f"no sweep with id {sweep_id}")
        return RunStatus(row[0])

    def finish_sweep(self, sweep_id: int, status: RunStatus, *, summary: SweepSummary | None = None,
                     error: str | None = None) -> bool:
        """End an active sweep with ``status`` (terminal), its summary and error; False when it had ended."""
        if status not in TERMINAL:
            raise StoreError(f"finish_sweep needs a terminal status, got {status.value!r}")
        values: dict[str, Any] = {"status": status.value, "finished_at": now_iso(),
                                  "error": None if error is None else redact(error)}
        if summary is not None:
            values["summary"] = to_json(summary.to_json(), "the sweep summary")
        sets = ", ".join(f"{column} = ?" for column in values)
        with self._write() as db:
            changed = db.execute(f"update sweeps set {sets} where id = ? and status not in "
                                 f"({placeholders(TERMINAL_VALUES)})",
                                 [*values.values(), sweep_id, *TERMINAL_VALUES]).rowcount
        return bool(changed)

    def set_sweep_summary(self, sweep_id: int, summary: SweepSummary) -> None:
        """Store the summary so far (a running sweep's partial results)."""
        with self._write() as db:
            db.execute("update sweeps set summary = ? where id = ?",
                       [to_json(summary.to_json(), "the sweep summary"), sweep_id])

    def reopen_sweep(self, sweep_id: int) -> None:
        """Make a failed, cancelled or interrupted sweep running again, owned by this process (resume)."""
        allowed = [s.value for s in RESUMABLE]
        with self._write() as db:
            changed = db.execute(
                f"update sweeps set status = ?, finished_at = null, error = null, cancel_requested_at = null, "
                f"owner_pid = ?, owner_host = ?, heartbeat_at = ? where id = ? and status in ({placeholders(allowed)})",
                [RunStatus.RUNNING.value, os.getpid(), host_name(), time.time(), sweep_id, *allowed]).rowcount
            if not changed:
                row = db.execute("select status from sweeps where id = ?", [sweep_id]).fetchone()
                if row is None:
                    raise StoreError(f"no sweep with id {sweep_id}")
                raise StoreError(f"sweep {sweep_id} is {row[0]}; only {', '.join(allowed)} sweeps can be resumed")

    # -- liveness ---------------------------------------------------------------------------------

    def request_sweep_cancel(self, sweep_id: int) -> bool:
        """Ask sweep ``sweep_id`` to stop (from any process); False when it is not active."""
        with self._write() as db:
            changed = db.execute(
                f"update sweeps set cancel_requested_at = coalesce(cancel_requested_at, ?) "
                f"where id = ? and status in ({placeholders(ACTIVE_VALUES)})", [time.time(), sweep_id, *ACTIVE_VALUES],
            ).rowcount
            if not changed and db.execute("select 1 from sweeps where id = ?", [sweep_id]).fetchone() is None:
                raise StoreError(f"no sweep with id {sweep_id}")
        return bool(changed)

    def sweep_cancel_requested(self, sweep_id: int) -> bool:
        row = self.db.execute("select cancel_requested_at from sweeps where id = ?", [sweep_id]).fetchone()
        return row is not None and row[0] is not None

    def sweep_heartbeat(self, sweep_ids: Sequence[int], now: float | None = None) -> None:
        """Refresh the heartbeat of these active sweeps (their driving process is alive)."""
        if not sweep_ids:
            return
        with self._write() as db:
            db.execute(f"update sweeps set heartbeat_at = ? where id in ({placeholders(sweep_ids)}) and status in "
                       f"({placeholders(ACTIVE_VALUES)})", [time.time() if now is None else now, *sweep_ids,
                                                            *ACTIVE_VALUES])

    def recover_interrupted_sweeps(self, *, now: float | None = None,
                                   stale_after: float = HEARTBEAT_TIMEOUT_S) -> list[int]:
        """Mark active sweeps whose driving process stopped sending heartbeats as interrupted; their
        finished child runs stay. Returns the ids."""
        now = time.time() if now is None else now
        rows = list(self.db.query(
            f"select id from sweeps where status in ({placeholders(ACTIVE_VALUES)}) and "
            f"(heartbeat_at is null or heartbeat_at < ?) order by id", [*ACTIVE_VALUES, now - stale_after]))
        marked = [row["id"] for row in rows if self.finish_sweep(
            row["id"], RunStatus.INTERRUPTED, error="the process that ran this sweep stopped; the finished runs "
                                                    f"are kept; resume it with `python -m core sweep --resume {row['id']}`")]
        if marked:
            logger.info("marked sweeps %s as interrupted", marked)
        return marked

    # -- what a run evaluates on test -------------------------------------------------------------

    def set_test_plan(self, run_id: int, plan: TestPlan) -> None:
        with self._write() as db:
            if not db.execute("update runs set test_plan = ? where id = ?",
                              [to_json(plan.to_json(), "the test plan"), run_id]).rowcount:
                raise StoreError(f"no run with id {run_id}")

    def test_plan(self, run_id: int) -> TestPlan:
        """Which rounds run ``run_id`` evaluates on test (``TestPlan()``: the baseline and the best)."""
        row = self.db.execute("select test_plan from runs where id = ?", [run_id]).fetchone()
        if row is None:
            raise StoreError(f"no run with id {run_id}")
        return TestPlan.from_json(from_json(row[0]))

    def set_kept_rounds(self, run_id: int, kept: Mapping[str, int]) -> None:
        """Record which round each strategy read from run ``run_id`` keeps (strategy -> round index)."""
        with self._write() as db:
            db.execute("update runs set kept_rounds = ? where id = ?", [to_json(dict(kept), "the kept rounds"), run_id])

    def kept_rounds(self, run_id: int) -> dict[str, int]:
        """Strategy -> the round it keeps, as the run recorded it after its steps ({} before, or for a plain run)."""
        row = self.db.execute("select kept_rounds from runs where id = ?", [run_id]).fetchone()
        return {str(k): int(v) for k, v in from_json(row[0] if row else None).items()}

    def test_evaluations(self, run_id: int) -> dict[int, tuple[int, float | None]]:
        """Round index -> (evaluation id, score) of a run's test evaluations, the latest per round; a plain
        run's baseline (recorded without its round) counts as round 0, its "best" (no round) is left out."""
        out: dict[int, tuple[int, float | None]] = {}
        for row in self.db.query("select id, round_index, program, score from evaluations where run_id = ? and "
                                 "split = 'test' order by id", [run_id]):
            index = 0 if row["program"] == "baseline" else row["round_index"]
            if index is not None:
                out[index] = (row["id"], row["score"])
        return out

    def example_scores(self, evaluation_id: int) -> dict[int, float | None]:
        """Example index -> its metric score (0-1; None where the example failed) in one evaluation."""
        rows = self.db.execute("select example_index, score from example_results where evaluation_id = ?",
                               [evaluation_id])
        return {int(index): score for index, score in rows}

