"""The ``ray`` executor: each child run of a sweep executes as a Ray task on a cluster (``EXECUTORS["ray"]``).

Where: the configuration's ``"executor": {"kind": "ray", "address": ...}``, else the ``RAY_ADDRESS``
environment variable, else a Ray instance started in this process (``ray.init``, this machine's CPUs).
One connection per process: a later sweep that names another address is refused. ``ray`` is imported
only when a sweep asks for this executor (it is an extra: ``requirements-ray.txt``).

The rules of a local queue hold on the cluster:

* a run on the embedded CPU models asks for one unit of the custom resource ``studio_cpu_lease``; each
  node declares one (``ray start --resources='{"studio_cpu_lease": 1}'``; a local instance started here
  declares it), so such runs take a node's CPU one at a time, per node;
* a run on hosted models asks for 1 CPU only; the sweep runs up to ``max_parallel`` children at once.

Every record a task produces reaches the one store of this Studio: tasks never open its SQLite file.
They send each store call (and an artifact's bytes) to a ``Mailbox`` actor of this executor; a thread
here takes the calls and applies them (``core.run.ray_service``), answering each. See
``core.run.ray_remote`` for the task's side. The code reaches the workers as this checkout's ``core``
package (a local instance: on ``PYTHONPATH``; a cluster: uploaded as a Ray ``py_modules`` package); the
nodes need the Studio's pinned requirements.

As a local supervisor does, the executor owns its runs in the store (heartbeats, from this process),
turns a cancel request into a stop (the task polls the request through its store proxy; a task that
does not stop within ``CANCEL_GRACE_S`` is force-cancelled), and leaves every run terminal: a task that
died (its worker killed, its node lost) fails its run with the reason Ray gives.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from core.config.sweep import RayExecutorSpec
from core.errors import ConfigError, StudioError
from core.paths import REPO_ROOT, studio_home
from core.plan.prepare import RunPlan
from core.run.manager import RunManager
from core.run.ray_remote import Mailbox, run_task
from core.run.ray_service import StoreService
from core.run.supervisor import CANCEL_GRACE_S
from core.run.worker import WorkerJob
from core.store import HEARTBEAT_EVERY_S
from core.store.records import RunStatus
from core.tracking.follow import start_tracking

logger = logging.getLogger(__name__)

CPU_RESOURCE = "studio_cpu_lease"
"""The custom resource an embedded-model run asks for; one per node keeps such runs one at a time per node."""

WATCH_POLL_S = 0.25
TAKE_WAIT_S = 0.5
INSTALL_HINT = "install it with `make install-ray` (pip install -r requirements-ray.txt)"

_connected: dict[str, str | None] = {}
_connect_lock = threading.Lock()


def import_ray() -> Any:
    """The ``ray`` module; ``ConfigError`` when this install lacks it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"executor 'ray' needs the Ray package, which this install lacks; {INSTALL_HINT}, "
                          "or set \"executor\": {\"kind\": \"local\"}") from None
    return ray


def connect(address: str | None) -> Any:
    """Connect this process to Ray at ``address`` (None: start a local instance) once; the ``ray`` module.

    A connection made outside the Studio (``ray.init`` by the caller) is used as it is."""
    ray = import_ray()
    with _connect_lock:
        if ray.is_initialized():
            if "address" in _connected and _connected["address"] != address:
                raise ConfigError(f"this Studio process is connected to Ray at {_shown(_connected['address'])}; a "
                                  f"sweep on {_shown(address)} needs a new process (restart the app or run the CLI)")
            return ray
        options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
        if address is None:  # "local": a new instance, never a cluster that `ray start` left on this machine
            options.update(address="local", include_dashboard=False, resources={CPU_RESOURCE: 1},
                           runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}})
        else:
            options.update(address=address, runtime_env={"py_modules": [str(REPO_ROOT / "core")],
                                                          "excludes": ["__pycache__", "*.pyc"]})
        try:
            ray.init(**options)
        except Exception as e:  # noqa: BLE001 - Ray raises many kinds; the user needs the address and the cause
            raise ConfigError(f"cannot connect to Ray at {_shown(address)}: {type(e).__name__}: {e}; give a "
                              "cluster's address ('ray://<head>:10001', or 'auto' on one of its nodes) or none "
                              "for a local instance") from e
        _connected["address"] = address
        logger.info("connected to Ray at %s", _shown(address))
        return ray


def _shown(address: str | None) -> str:
    return "a local instance" if address is None else repr(address)


@dataclass
class _Task:
    """One submitted run."""

    ref: Any
    local_cpu: bool
    tracking: Any = None
    started: bool = False
    cancel_at: float | None = None
    force_cancelled: bool = False


class RayExecutor:
    """Runs a sweep's child runs as Ray tasks, recording them in ``runs``' store."""

    def __init__(self, spec: RayExecutorSpec, runs: RunManager, *, cancel_grace_s: float = CANCEL_GRACE_S) -> None:
        self.runs = runs
        self.store = runs.store
        self.max_parallel = spec.max_parallel
        self.address = spec.address or os.environ.get("RAY_ADDRESS") or None
        self.cancel_grace_s = cancel_grace_s
        self.home = studio_home().resolve()
        ray = self._ray = connect(self.address)
        self._remote = ray.remote(max_calls=1, max_retries=0)(run_task)
        self._mailbox = ray.remote(Mailbox).options(num_cpus=0).remote()
        self.service = StoreService(self.store, self.home, on_started=self._on_started)
        self._tasks: dict[int, _Task] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # at exit, before Ray's own shutdown (atexit runs in reverse order): a call of these threads after it
        # would start a new Ray instance (Ray connects on first use)
        atexit.register(self._stop.set)
        self._threads = [threading.Thread(target=self._pump, name="ray-store-pump", daemon=True),
                         threading.Thread(target=self._watch, name="ray-watch", daemon=True)]
        for thread in self._threads:
            thread.start()

    # -- ChildExecutor ----------------------------------------------------------------------------
    def submit(self, run_id: int, plan: RunPlan, *, resume: bool) -> None:
        """Queue run ``run_id`` as a Ray task (the job carries the typed API keys, as a local worker's does)."""
        local_cpu = plan.uses_local_cpu
        if local_cpu:
            if not self._ray.cluster_resources().get(CPU_RESOURCE):  # Ray would keep the task pending forever
                raise ConfigError(f"the Ray cluster declares no '{CPU_RESOURCE}' resource, which a run on the "
                                  f"embedded models needs (one per node: ray start --resources="
                                  f"'{{\"{CPU_RESOURCE}\": 1}}')")
            self.store.leave_cpu_queue(run_id)  # it waits for a node's studio_cpu_lease, not this machine's CPU
        job = WorkerJob(run_id=run_id, db_path="", plan=plan, studio_home=None, resume=resume)
        where = "a local Ray instance" if self.address is None else f"Ray at {self.address}"
        rule = (f"embedded-model runs take a node one at a time (resource '{CPU_RESOURCE}')" if local_cpu else
                f"hosted-model runs: up to {self.max_parallel} at once")
        self.store.add_event(run_id, "status", f"queued on {where}; {rule}", {"ray_address": self.address,
                                                                             "local_cpu": local_cpu})
        tracking = start_tracking(self.store, run_id, home=str(self.home))  # MLflow when asked; never raises
        self.service.admit(run_id)
        with self._lock:
            ref = self._remote.options(num_cpus=1, resources={CPU_RESOURCE: 1} if local_cpu else {}).remote(
                job.to_json(), self._mailbox)
            self._tasks[run_id] = _Task(ref, local_cpu, tracking)

    def cancel(self, run_id: int) -> None:
        """Write the cancel request (the task polls it); a task not started yet is removed from Ray's queue."""
        self.runs.cancel(run_id)
        self._cancel_task(run_id)

    def active(self, run_id: int) -> bool:
        with self._lock:
            return run_id in self._tasks

    def close(self) -> None:
        """Stop the threads and the mailbox; a task still executing (a driver that stops early) is cancelled."""
        self._stop.set()
        atexit.unregister(self._stop.set)
        for thread in self._threads:
            thread.join(TAKE_WAIT_S * 4 + 5)
        with self._lock:
            left = dict(self._tasks)
        for run_id, task in left.items():
            self._ray.cancel(task.ref, force=True)
            self._ended(run_id, task, RunStatus.CANCELLED, "cancelled: the sweep that started it stopped")
        try:
            self._ray.kill(self._mailbox)
        except Exception:  # noqa: BLE001 - the cluster may be gone already
            logger.warning("cannot stop the store mailbox actor", exc_info=True)

    # -- internals --------------------------------------------------------------------------------
    def _on_started(self, run_id: int) -> None:
        with self._lock:
            task = self._tasks.get(run_id)
            if task is not None:
                task.started = True

    def _cancel_task(self, run_id: int) -> None:
        with self._lock:
            task = self._tasks.get(run_id)
            if task is None or task.cancel_at is not None:
                return
            task.cancel_at = time.monotonic()
            queued = not task.started
        if queued:  # still in Ray's queue: nothing of it ran, remove it (force: it may start right now)
            self._ray.cancel(task.ref, force=True)

    def _pump(self) -> None:
        """Take the tasks' store calls from the mailbox and apply them here, in order, answering each."""
        ray = self._ray
        while not self._stop.is_set() and ray.is_initialized():
            try:
                calls = ray.get(self._mailbox.take.remote(TAKE_WAIT_S))
                if calls:
                    answers = [(number, *self.service.apply(method, args)) for number, method, args in calls]
                    self._mailbox.answer.remote(answers)
            except Exception:  # noqa: BLE001 - keep serving; a lost actor fails the tasks, which _watch sees
                if self._stop.is_set():
                    break
                logger.exception("the Ray store pump failed; retrying")
                time.sleep(1.0)
        self.store.close()

    def _watch(self) -> None:
        """Heartbeats of the executor's runs, cancel escalation, and the end of each task."""
        ray = self._ray
        beat = 0.0
        while not self._stop.is_set() and ray.is_initialized():
            with self._lock:
                tasks = dict(self._tasks)
            try:
                if time.monotonic() - beat >= HEARTBEAT_EVERY_S:
                    self.store.heartbeat(list(tasks))
                    beat = time.monotonic()
                for run_id, task in tasks.items():
                    self._follow(run_id, task)
                refs = [task.ref for task in tasks.values()]
                done = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) if refs else set()
                for run_id, task in tasks.items():
                    if task.ref in done:
                        self._task_done(run_id, task)
            except StudioError:
                logger.exception("watching the Ray tasks of runs %s failed; retrying", sorted(tasks))
            except Exception:  # noqa: BLE001 - a watcher must never stop watching
                logger.exception("watching the Ray tasks of runs %s failed; retrying", sorted(tasks))
            time.sleep(WATCH_POLL_S)
        self.store.close()

    def _follow(self, run_id: int, task: _Task) -> None:
        """A cancel request (from any process) starts the grace period; past it the task is force-cancelled."""
        if task.cancel_at is None and self.store.cancel_requested(run_id):
            self._cancel_task(run_id)
        if (task.cancel_at is not None and task.started and not task.force_cancelled
                and time.monotonic() - task.cancel_at > self.cancel_grace_s):
            task.force_cancelled = True
            self._ray.cancel(task.ref, force=True)

    def _task_done(self, run_id: int, task: _Task) -> None:
        """The task ended: a run it did not leave terminal ends here, with the reason."""
        ray = self._ray
        try:
            ray.get(task.ref)
            error = None
        except Exception as e:  # noqa: BLE001 - every way a task can end is an outcome
            error = e
        if task.force_cancelled:
            status, message = RunStatus.CANCELLED, (
                f"cancelled: the Ray task did not stop within {self.cancel_grace_s:.0f} s of the cancel request "
                "and was cancelled; the best program so far is kept")
        elif task.cancel_at is not None:  # removed from Ray's queue (or stopped as it was starting)
            status, message = RunStatus.CANCELLED, ("cancelled while queued on Ray" if not task.started else
                                                    "cancelled; the best program so far is kept")
        elif error is None:
            status, message = RunStatus.FAILED, (f"the Ray task ended without recording a result; the rounds so "
                                                 f"far are kept; resume with `python -m core resume {run_id}`")
        else:
            status, message = RunStatus.FAILED, describe_task_error(error, run_id)
        self._ended(run_id, task, status, message)

    def _ended(self, run_id: int, task: _Task, status: RunStatus, message: str) -> None:
        try:
            if not self.store.run_status(run_id).is_terminal:
                kind = "cancelled" if status is RunStatus.CANCELLED else "error"
                self.store.add_event(run_id, kind, message)
                self.store.end_abruptly(run_id, status, message)
        finally:
            with self._lock:
                self._tasks.pop(run_id, None)
            self.service.dismiss(run_id)
            if task.tracking is not None:
                task.tracking.close()  # the run has ended: its MLflow run is completed from the store


def describe_task_error(error: BaseException, run_id: int) -> str:
    """The one-line reason of a Ray task that died without recording its run's end."""
    name = type(error).__name__
    what = {"WorkerCrashedError": "the Ray worker process executing it died (killed, or crashed in native code)",
            "NodeDiedError": "the Ray node executing it died",
            "OutOfMemoryError": "Ray's memory monitor killed its worker (the node ran out of memory)",
            "TaskCancelledError": "its Ray task was cancelled"}.get(name, "its Ray task failed")
    detail = str(error).strip().splitlines()
    shown = f"{name}: {detail[0][:300]}" if detail else name
    return f"{what}; Ray says {shown}; the rounds so far are kept; resume with `python -m core resume {run_id}`"
