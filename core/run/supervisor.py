"""Supervising one run from the app's (or the CLI's) background thread: queue, worker, cancel, death.

The supervisor never runs the optimization: it waits for the database-wide CPU lease when the run
uses the embedded models, spawns the worker process (``core.run.worker``), and watches it:

* the worker exits after recording its outcome: nothing more to do;
* the worker dies (a negative exit code is the signal that killed it): the run is failed with a
  message that names the signal and what to do; the rounds and the best program so far stay;
* a cancel request (written by any process) is honoured by the worker within a call or a training
  step; if it has not stopped after ``CANCEL_GRACE_S`` the supervisor kills it and the run ends
  cancelled, still with the best program so far (saved after every round).

The heartbeat of the run is refreshed by the ``RunManager`` of this process, not here.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from core.crash import SIGNAL_MEANING, signal_of
from core.run.worker import WorkerJob, run_log_path, spawn_worker
from core.store import Store, process_start_time
from core.store.records import RunStatus
from core.tracking.follow import start_tracking

logger = logging.getLogger(__name__)

CANCEL_GRACE_S = 20.0
"""How long a worker may take to honour a cancel request before it is killed."""

QUEUE_POLL_S = 0.2
WATCH_POLL_S = 0.25

_SIGNAL_ADVICE = {
    "SIGILL": "the llama.cpp (or torch) build uses CPU instructions this machine does not run; rebuild "
              "llama-cpp-python portable (`make install`) and check with `python -m core doctor`",
    "SIGSEGV": "native code (llama.cpp or torch) crashed; check the build with `python -m core doctor`, "
               "rebuild it portable (`make install`) if it fails",
    "SIGBUS": "native code crashed, often a truncated model file or a full disk; check with `python -m core doctor`",
    "SIGFPE": "native code crashed; check the build with `python -m core doctor`",
    "SIGABRT": "native code aborted (an assertion in llama.cpp or torch; its message is in the run's log); check "
               "the build with `python -m core doctor`",
    "SIGKILL": "something killed it, often the kernel's out-of-memory killer: free memory or use smaller models "
               "or budgets",
    "SIGTERM": "something stopped it from outside the app",
}


def describe_exit(exitcode: int | None, run_id: int) -> str:
    """The one-line message of a worker that ended without recording a result."""
    resume = (f"the rounds so far are kept; resume with `python -m core resume {run_id}`; "
              f"the run's log: {run_log_path(run_id)}")
    name = signal_of(exitcode) if exitcode is not None and exitcode < 0 else None
    if name is not None:
        what = SIGNAL_MEANING.get(name, "signal")
        advice = _SIGNAL_ADVICE.get(name, "see the run's log")
        return f"the worker process died with {name} ({what}): {advice}; {resume}"
    return f"the worker process exited with code {exitcode} without recording a result; {resume}"


@dataclass
class Supervision:
    """One run supervised by this process."""

    store: Store
    job: WorkerJob
    local_cpu: bool
    cancel_grace_s: float = CANCEL_GRACE_S

    @property
    def run_id(self) -> int:
        return self.job.run_id

    def run(self) -> None:
        """Queue, start, watch; always leaves the run terminal and the CPU lease released."""
        store = self.store
        tracking = start_tracking(store, self.run_id, home=self.job.studio_home)  # MLflow when asked; never raises
        try:
            if not self._admit():
                return
            process = spawn_worker(self.job)
            store.add_event(self.run_id, "status", f"worker process {process.pid} started",
                            {"worker_pid": process.pid})
            try:
                self._watch(process)
            finally:
                process.close()
        except Exception as e:  # noqa: BLE001 - a supervisor must never leave a run active
            logger.exception("supervising run %s failed", self.run_id)
            store.end_abruptly(self.run_id, RunStatus.FAILED, f"the run could not be supervised: {e}")
        finally:
            if self.local_cpu:
                store.release_cpu(self.run_id)
            if tracking is not None:
                tracking.close()  # the run has ended: its MLflow run is completed from the store (final scores, artifacts)
            store.close()

    def _admit(self) -> bool:
        """Wait for the CPU lease (or just claim the run); False when cancelled or ended meanwhile."""
        store, run_id = self.store, self.run_id
        if not self.local_cpu:
            return store.claim_run(run_id, os.getpid(), process_start_time(os.getpid()))
        store.add_event(run_id, "status", "waiting for the embedded CPU models")
        while not store.try_acquire_cpu(run_id):
            if store.cancel_requested(run_id):
                store.end_abruptly(run_id, RunStatus.CANCELLED, "cancelled while queued")
                return False
            if store.get_run(run_id).status.is_terminal:
                return False
            time.sleep(QUEUE_POLL_S)
        return True

    def _watch(self, process) -> None:
        store, run_id = self.store, self.run_id
        asked: float | None = None
        while True:
            process.join(WATCH_POLL_S)
            if process.exitcode is not None:
                break
            if asked is None and store.cancel_requested(run_id):
                asked = time.monotonic()
            if asked is not None and time.monotonic() - asked > self.cancel_grace_s:
                process.kill()
                process.join(10)
                message = (f"cancelled: the worker did not stop within {self.cancel_grace_s:.0f} s of the cancel "
                           "request and was killed; the best program so far is kept")
                store.add_event(run_id, "cancelled", message)
                store.end_abruptly(run_id, RunStatus.CANCELLED, message)
                return
        if store.get_run(run_id).status.is_terminal:
            return
        message = describe_exit(process.exitcode, run_id)
        store.add_event(run_id, "error", message, {"exitcode": process.exitcode})
        store.end_abruptly(run_id, RunStatus.FAILED, message)

