"""Background runs: start, resume, cancel and watch runs; each run's optimization is its own process.

``RunManager.start(config)`` checks the configuration here (``plan_run`` raises a
``StudioError`` before anything is stored; it contacts each configured endpoint once and reads and
splits the data once), creates the run (``queued``) and returns its id at once. A supervising
thread of this process (``core.run.supervisor``) then waits for the CPU lease if the run uses the
embedded models and spawns the worker process (``core.run.worker``) that builds the run from that
plan, runs it and records it. Why a process: a native crash (SIGILL, SIGSEGV, the OOM killer) then
fails only that run, the app keeps serving and the next queued run starts; and the models, fine-tuned
weights and DSPy's history are freed with the worker, so the app's memory stays flat.

Ownership lives in the database, so that several app processes, the CLI and the app, or two
containers on one volume, can share it: this manager refreshes the heartbeat of the runs it
supervises (``HEARTBEAT_EVERY_S``); the CPU queue and lease are rows (``core.store.liveness``);
``cancel`` writes a request that the worker of any process polls. A run whose owner stopped
sending heartbeats is marked interrupted (``recover_interrupted``: on first use of a database,
then every ``RECOVER_EVERY_BEATS`` heartbeats, by any manager that watches).

``resume(run_id)`` continues a failed, cancelled or interrupted run from its last finished round
(``core.run.resume``): same run id, config, seed and splits; the earlier rounds are kept.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from core.config.schema import RunConfig
from core.errors import StoreError
from core.paths import studio_home
from core.plan.prepare import RunPlan, plan_run
from core.run.supervisor import CANCEL_GRACE_S, Supervision
from core.run.worker import WorkerJob
from core.store import HEARTBEAT_EVERY_S, RESUMABLE, Store
from core.store.records import RunStatus

logger = logging.getLogger(__name__)

WAIT_POLL_S = 0.2
RECOVER_EVERY_BEATS = 5
"""Look for runs of silent owners every this many heartbeats (10 s)."""


class RunManager:
    """Starts, resumes, cancels and supervises runs. One per process and store (see ``get_manager``)."""

    def __init__(self, store: Store, *, cancel_grace_s: float = CANCEL_GRACE_S):
        self.store = store
        self.cancel_grace_s = cancel_grace_s
        self._threads: dict[int, threading.Thread] = {}
        self._lock = threading.Lock()
        self._heartbeat: threading.Thread | None = None

    def start(self, config: RunConfig, *, base_dir: Path | None = None) -> int:
        """Check ``config``, create the run and start supervising it; returns the run id at once."""
        plan = plan_run(config, base_dir=base_dir)
        run_id = self.store.create_run(config.name, plan.config, RunStatus.QUEUED, local_cpu=plan.uses_local_cpu,
                                       base_dir=plan.base_dir)
        self._supervise(run_id, plan, resume=False)
        return run_id

    def resume(self, run_id: int, *, api_keys: dict[str, str] | None = None) -> int:
        """Continue a failed, cancelled or interrupted run from its last finished round; returns its id.

        ``api_keys`` (LM name -> key) are keys typed in the app: they were never stored with the run.
        """
        run = self.store.get_run(run_id)
        if run.status not in RESUMABLE:
            allowed = ", ".join(s.value for s in RESUMABLE)
            raise StoreError(f"run {run_id} is {run.status.value}; only {allowed} runs can be resumed")
        row = self.store.db.execute("select base_dir from runs where id = ?", [run_id]).fetchone()
        base_dir = Path(row[0]) if row and row[0] else None
        config = run.require_config().with_api_keys(api_keys or {})  # only the LMs that take a key keep one
        plan = plan_run(config, base_dir=base_dir)  # the same config and seed: the same split
        rounds = self.store.list_rounds(run_id)
        self.store.reopen_run(run_id, local_cpu=plan.uses_local_cpu)
        self.store.add_event(run_id, "status", f"resume requested after {len(rounds)} recorded round(s)",
                             {"rounds": len(rounds)})
        self._supervise(run_id, plan, resume=True)
        return run_id

    def launch(self, run_id: int, plan: RunPlan, *, resume: bool = False) -> None:
        """Supervise run ``run_id``, already recorded (queued) with ``plan``'s config: a sweep's child run
        (``core.run.sweep``). ``resume``: replay the rounds it holds already."""
        self._supervise(run_id, plan, resume=resume)

    def cancel(self, run_id: int) -> bool:
        """Ask a run (of any process) to stop, keeping the best program so far; False if it is not active."""
        if not self.store.request_cancel(run_id):
            return False
        self.store.add_event(run_id, "status", "cancel requested")
        if self.store.is_stale(run_id):  # nobody supervises it any more: end it here
            self.store.end_abruptly(run_id, RunStatus.CANCELLED, "cancelled (its owner process had stopped); "
                                                                 "the best program so far is kept")
        return True

    def is_active(self, run_id: int) -> bool:
        """True while this process supervises ``run_id``."""
        with self._lock:
            thread = self._threads.get(run_id)
        return thread is not None and thread.is_alive()

    def wait(self, run_id: int, timeout: float | None = None) -> bool:
        """Wait until ``run_id`` ends (supervised here or elsewhere); False on timeout."""
        with self._lock:
            thread = self._threads.get(run_id)
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        self.watch()  # a run of a process that died is marked interrupted by the recovery of the watch
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.store.get_run(run_id).status.is_terminal:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(WAIT_POLL_S)
        return True

    # -- internals ------------------------------------------------------------------------------

    def _supervise(self, run_id: int, plan: RunPlan, *, resume: bool) -> None:
        with self._lock:
            earlier = self._threads.get(run_id)
        if earlier is not None and earlier.is_alive():  # a resume right after the end: let its worker exit first,
            earlier.join(self.cancel_grace_s + 15)  # or its supervisor would take the new attempt for a dead worker
        job = WorkerJob(run_id=run_id, db_path=str(self.store.path.resolve()), plan=plan,
                        studio_home=str(studio_home().resolve()), resume=resume)
        supervision = Supervision(self.store, job, plan.uses_local_cpu, self.cancel_grace_s)
        thread = threading.Thread(target=supervision.run, name=f"run-{run_id}", daemon=True)
        with self._lock:
            self._threads[run_id] = thread
        self.watch()
        thread.start()

    def watch(self) -> None:
        """Keep this process's heartbeat and the recovery of runs whose owner went silent going (idempotent)."""
        with self._lock:
            if self._heartbeat is None or not self._heartbeat.is_alive():
                self._heartbeat = threading.Thread(target=self._beat, name="run-heartbeat", daemon=True)
                self._heartbeat.start()

    def _beat(self) -> None:
        """Refresh the heartbeat of the runs this process supervises; now and then, mark the runs of
        silent owners (another process or container that stopped) as interrupted."""
        beats = 0
        while True:
            with self._lock:
                alive = [run_id for run_id, thread in self._threads.items() if thread.is_alive()]
            try:
                self.store.heartbeat(alive)
                if beats % RECOVER_EVERY_BEATS == 0:
                    self.store.recover_interrupted()
            except StoreError:
                logger.exception("cannot refresh the heartbeat of runs %s", alive)
            beats += 1
            time.sleep(HEARTBEAT_EVERY_S)


_managers: dict[str, RunManager] = {}
_managers_lock = threading.Lock()


def get_manager(db_file: str | Path) -> RunManager:
    """The process-wide manager for a database file; marks runs of owners that stopped as interrupted."""
    key = str(Path(db_file).resolve())
    with _managers_lock:
        if key not in _managers:
            store = Store(key)
            store.recover_interrupted()
            _managers[key] = RunManager(store)
            _managers[key].watch()
        return _managers[key]
