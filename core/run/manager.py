"""Background runs: one BetterTogether optimization per run, recorded round by round in the store.

A run is started with ``RunManager.start(config)``, which checks the configuration, creates the
run (status ``queued``) and returns its id at once; a worker thread does the rest inside its own
``dspy.context`` (never ``dspy.configure``). Runs that use the embedded CPU models wait in a FIFO
queue and run one at a time.

Recording: ``StudioBetterTogether`` subclasses DSPy's ``BetterTogether`` and overrides its step and
candidate hooks (``_run_and_evaluate_step``, ``_add_candidate``, ``_evaluate_on_valset``) so that
each round (baseline and each step) is written with its exact boundaries; a crashed evaluation is
recorded as a failed evaluation (score None), never as a silent 0.

Cancel: the ``RunObserver`` callback raises ``RunCancelled`` (a BaseException, passing DSPy's
``except Exception`` layers) from ``on_lm_start`` once the run's Event is set; the step boundary
turns it into ``StepCancelled`` so BetterTogether returns the best program so far. Fine-tuning
checks the same Event between training steps.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from pathlib import Path

from core.config import RunConfig, config_to_dict
from core.errors import RunCancelled, StepCancelled, StudioError
from core.prepare import PreparedRun, prepare_run
from core.records import RunStatus
from core.run.execute import execute_run
from core.store import Store, process_start_time

logger = logging.getLogger(__name__)


class _CpuQueue:
    """FIFO admission for runs on the embedded CPU models: one at a time."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: list[int] = []
        self._holder: int | None = None

    def enqueue(self, run_id: int) -> None:
        """Take a place in the queue (called when the run is created, so order follows run ids)."""
        with self._cond:
            self._waiting.append(run_id)

    def acquire(self, run_id: int, cancel: threading.Event) -> bool:
        """Wait for this run's turn (it must be enqueued); False if cancelled while waiting."""
        with self._cond:
            try:
                while not (self._holder is None and self._waiting[0] == run_id):
                    if cancel.is_set():
                        return False
                    self._cond.wait(0.2)
                self._holder = run_id
                return True
            finally:
                self._waiting.remove(run_id)
                self._cond.notify_all()

    def release(self, run_id: int) -> None:
        with self._cond:
            if self._holder == run_id:
                self._holder = None
            self._cond.notify_all()


class RunManager:
    """Starts, tracks and cancels runs of this process. One per process and store (see ``get_manager``)."""

    def __init__(self, store: Store):
        self.store = store
        self._cpu = _CpuQueue()
        self._threads: dict[int, threading.Thread] = {}
        self._cancels: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, config: RunConfig, *, base_dir: Path | None = None) -> int:
        """Check ``config``, create the run and start its worker; returns the run id at once."""
        prepared = prepare_run(config, base_dir=base_dir)
        run_id = self.store.create_run(config.name, config_to_dict(config), RunStatus.QUEUED)
        if prepared.uses_local_cpu:
            self._cpu.enqueue(run_id)
        cancel = threading.Event()
        thread = threading.Thread(target=self._work, args=(run_id, prepared, cancel), name=f"run-{run_id}",
                                  daemon=True)
        with self._lock:
            self._threads[run_id] = thread
            self._cancels[run_id] = cancel
        thread.start()
        return run_id

    def cancel(self, run_id: int) -> bool:
        """Ask a run of this process to stop; it keeps the best program so far. False if not active here."""
        with self._lock:
            event = self._cancels.get(run_id)
        if event is None:
            return False
        event.set()
        self.store.add_event(run_id, "status", "cancel requested")
        return True

    def is_active(self, run_id: int) -> bool:
        with self._lock:
            thread = self._threads.get(run_id)
        return thread is not None and thread.is_alive()

    def wait(self, run_id: int, timeout: float | None = None) -> bool:
        with self._lock:
            thread = self._threads.get(run_id)
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def _work(self, run_id: int, prepared: PreparedRun, cancel: threading.Event) -> None:
        store = self.store
        local = prepared.uses_local_cpu
        try:
            if local:
                store.add_event(run_id, "status", "waiting for the embedded CPU models")
                if not self._cpu.acquire(run_id, cancel):
                    store.finish_run(run_id, RunStatus.CANCELLED, best_strategy=None, best_score=None,
                                     baseline_score=None, test_baseline_score=None, test_best_score=None,
                                     flagged=False, error="cancelled while queued")
                    return
            pid = os.getpid()
            store.claim_run(run_id, pid, process_start_time(pid))
            outcome = execute_run(prepared, store, run_id, cancel)
            store.finish_run(run_id, outcome.status, best_strategy=outcome.best_strategy,
                             best_score=outcome.best_score, baseline_score=outcome.baseline_score,
                             test_baseline_score=outcome.test_baseline_score,
                             test_best_score=outcome.test_best_score, flagged=outcome.flagged,
                             error=outcome.error)
            store.add_event(run_id, "status", f"run {outcome.status.value}", {"status": outcome.status.value})
        except BaseException as e:  # noqa: BLE001 - the worker must always leave a final status
            if isinstance(e, StudioError):
                message = str(e)
            else:
                message = f"unexpected error: {type(e).__name__}: {e}"
                logger.error("run %s failed\n%s", run_id, traceback.format_exc())
            status = RunStatus.CANCELLED if isinstance(e, RunCancelled | StepCancelled) else RunStatus.FAILED
            try:
                store.add_event(run_id, "error", message)
                store.finish_run(run_id, status, best_strategy=None, best_score=None, baseline_score=None,
                                 test_baseline_score=None, test_best_score=None, flagged=False, error=message)
            except StudioError:
                logger.exception("cannot record the failure of run %s", run_id)
        finally:
            if local:
                self._cpu.release(run_id)
            store.close()


_managers: dict[str, RunManager] = {}
_managers_lock = threading.Lock()


def get_manager(db_file: str | Path) -> RunManager:
    """The process-wide manager for a database file; recovers runs left by dead processes on first use."""
    key = str(Path(db_file).resolve())
    with _managers_lock:
        if key not in _managers:
            store = Store(key)
            store.recover_interrupted()
            _managers[key] = RunManager(store)
        return _managers[key]
