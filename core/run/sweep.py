"""Sweeps in the background: strategies x seeds as one job whose children are ordinary runs.

``SweepManager.start(config)`` checks the configuration once (``plan_run``: the data is read and each
endpoint contacted once, for all the runs), plans the child runs (``core.plan.sweep``: per seed only
the strategies no other one extends, the others are read from them), records the sweep and returns
its id at once. A thread of this process then drives it: it records each child run (queued, with the
rounds it must evaluate on test, ``TestPlan``) and hands it to the executor (``core.run.executors``;
``local``: this process's ``RunManager``, one at a time), and learns from the store when it ended.
Every child of a seed after the first reuses the first one's baseline (``borrow_baseline``): its
validation score becomes the child's round 0, replayed as a resumed run replays its rounds.

As for a run: a child that fails is recorded failed and the sweep goes on with the others; a cancel
(``cancel``, from any process) cancels the running child and starts no more; ``resume`` continues the
children that did not finish (a failed one is resumed from its last round, one never started is
started) and keeps the finished ones. The summary (``core.evidence.sweep``) is stored when the sweep
ends, whatever its status. The process that drives a sweep refreshes its heartbeat; a sweep whose
driver stopped is marked interrupted (``Store.recover_interrupted_sweeps``).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
from pathlib import Path

from core.config.schema import RunConfig
from core.errors import StoreError
from core.evidence.sweep import summarize_sweep
from core.paths import run_dir, studio_home
from core.plan.prepare import RunPlan, plan_run
from core.plan.sweep import child_config, plan_sweep
from core.run.executors import ChildExecutor, executor_for
from core.run.manager import RunManager, get_manager
from core.store import HEARTBEAT_EVERY_S, RESUMABLE, Store
from core.store.records import RunStatus
from core.store.sweep_records import SweepChild, TestPlan
from core.tracking.sweep import start_sweep_tracking

logger = logging.getLogger(__name__)

POLL_S = 0.25
"""How often a sweep's driver looks at its children's statuses and its cancel request."""


def borrow_baseline(store: Store, lender: int, run_id: int) -> bool:
    """Give run ``run_id`` the baseline round of run ``lender`` (same program, data and seed), so that
    it replays it instead of evaluating it again; False (it evaluates its own) when the lender has no
    scored baseline."""
    rounds = store.list_rounds(lender)
    source = run_dir(lender) / "rounds" / "0.json"
    if not rounds or rounds[0].index != 0 or rounds[0].score is None or not source.is_file():
        return False
    folder = run_dir(run_id)
    (folder / "rounds").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / "rounds" / "0.json")
    shutil.copyfile(source, folder / "baseline.json")
    store.add_round(dataclasses.replace(rounds[0], run_id=run_id, is_best=False))
    store.add_artifact(run_id, "round_program", str(folder / "rounds" / "0.json"), {"index": 0, "strategy": ""})
    store.add_artifact(run_id, "baseline_program", str(folder / "baseline.json"), {})
    store.add_event(run_id, "status", f"baseline: reused from run {lender} (same sweep and seed), not evaluated "
                                      "again", {"baseline_from": lender})
    return True


class _Driver:
    """One sweep driven by this process until it ends."""

    def __init__(self, store: Store, sweep_id: int, plan: RunPlan, executor: ChildExecutor) -> None:
        self.store = store
        self.sweep_id = sweep_id
        self.plan = plan
        self.executor = executor

    def run(self) -> None:
        tracking = start_sweep_tracking(self.store, self.sweep_id, home=studio_home())  # MLflow when asked
        try:
            cancelled = self._loop()
            self._finish(cancelled)
        except Exception as e:  # noqa: BLE001 - a driver must never leave a sweep active
            logger.exception("driving sweep %s failed", self.sweep_id)
            self.store.finish_sweep(self.sweep_id, RunStatus.FAILED, error=f"the sweep could not be driven: "
                                                                              f"{type(e).__name__}: {e}")
        finally:
            self.executor.close()
            if tracking is not None:
                tracking.close()
            self.store.close()

    def _loop(self) -> bool:
        """Start the children one after another (up to the executor's parallel limit) until every one
        ended; True when the sweep was cancelled."""
        store = self.store
        todo = [c.position for c in store.sweep_children(self.sweep_id)]
        running: set[int] = set()
        cancelling = False
        beat = 0.0
        while True:
            if time.monotonic() - beat >= HEARTBEAT_EVERY_S:
                store.sweep_heartbeat([self.sweep_id])
                beat = time.monotonic()
            children = {c.position: c for c in store.sweep_children(self.sweep_id)}
            running = {p for p in running if self._executing(_run_of(children[p]))}
            if store.sweep_cancel_requested(self.sweep_id):
                if not cancelling:
                    cancelling = True
                    for p in running:
                        self.executor.cancel(_run_of(children[p]))
                if not running:
                    return True
            else:
                while len(running) < self.executor.max_parallel:
                    position = next((p for p in todo if children[p].baseline_from not in (*todo, *running)), None)
                    if position is None:
                        break
                    todo.remove(position)
                    if self._start(children[position], children):
                        running.add(position)
                if not todo and not running:
                    return False
            time.sleep(POLL_S)

    def _executing(self, run_id: int) -> bool:
        """False once the run is terminal and the executor holds nothing of it any more."""
        return not self.store.run_status(run_id).is_terminal or self.executor.active(run_id)

    def _start(self, child: SweepChild, children: dict[int, SweepChild]) -> bool:
        """Start (or resume, or just watch) ``child``'s run; False when it has finished already."""
        store = self.store
        config = child_config(self.plan.config, child.seed, child.strategy)
        plan = dataclasses.replace(self.plan, config=config)
        if child.run_id is not None:
            status = store.run_status(child.run_id)
            if status is RunStatus.FINISHED:
                return False
            if not status.is_terminal:  # still executing (another process's): watch it
                return True
            store.reopen_run(child.run_id, local_cpu=plan.uses_local_cpu)
            store.add_event(child.run_id, "status", f"resumed by sweep {self.sweep_id}", {"sweep": self.sweep_id})
            return self._submit(child.run_id, plan, resume=True)
        run_id = store.create_run(config.name, config, RunStatus.QUEUED, local_cpu=plan.uses_local_cpu,
                                  base_dir=plan.base_dir)
        store.set_child_run(self.sweep_id, child.position, run_id)
        lender = None if child.baseline_from is None else children[child.baseline_from].run_id
        store.set_test_plan(run_id, TestPlan(child.covers, lender))
        store.add_event(run_id, "status", f"sweep {self.sweep_id}, run {child.position + 1} of {len(children)}: "
                                          f"'{child.strategy}' with seed {child.seed}; the sweep reads "
                                          f"{', '.join(repr(s) for s in child.covers)} from it",
                        {"sweep": self.sweep_id, "seed": child.seed, "covers": list(child.covers)})
        replay = lender is not None and borrow_baseline(store, lender, run_id)
        return self._submit(run_id, plan, resume=replay)

    def _submit(self, run_id: int, plan: RunPlan, *, resume: bool) -> bool:
        """Hand the run to the executor; a run it cannot start fails (the sweep goes on with the others)."""
        try:
            self.executor.submit(run_id, plan, resume=resume)
        except Exception as e:  # noqa: BLE001 - one child's start must not stop the sweep
            logger.exception("sweep %s: run %s could not be started", self.sweep_id, run_id)
            self.store.end_abruptly(run_id, RunStatus.FAILED, f"the run could not be started: {type(e).__name__}: {e}")
            return False
        return True

    def _finish(self, cancelled: bool) -> None:
        store = self.store
        children = store.sweep_children(self.sweep_id)
        unfinished = []
        for child in children:
            run = None if child.run_id is None else store.get_run(child.run_id)
            if run is None or run.status is not RunStatus.FINISHED:
                what = "not started" if run is None else f"run {run.id} {run.status.value}"
                reason = f": {run.error}" if run is not None and run.error else ""
                unfinished.append(f"'{child.strategy}' with seed {child.seed} ({what}{reason})")
        if cancelled:
            status = RunStatus.CANCELLED
            error = f"cancelled by the user; {len(children) - len(unfinished)} of {len(children)} runs finished and are kept"
        elif unfinished:
            status = RunStatus.FAILED
            error = f"{len(unfinished)} of {len(children)} runs did not finish: " + "; ".join(unfinished)
        else:
            status, error = RunStatus.FINISHED, None
        summary = summarize_sweep(store, self.sweep_id, status=status.value)
        store.finish_sweep(self.sweep_id, status, summary=summary, error=error)
        logger.info("sweep %s %s", self.sweep_id, status.value)


def _run_of(child: SweepChild) -> int:
    if child.run_id is None:
        raise StoreError(f"sweep {child.sweep_id}: child {child.position} has no run")
    return child.run_id


class SweepManager:
    """Starts, resumes, cancels and waits for sweeps; one per process and store (``get_sweep_manager``)."""

    def __init__(self, runs: RunManager) -> None:
        self.runs = runs
        self.store = runs.store
        self._threads: dict[int, threading.Thread] = {}
        self._lock = threading.Lock()

    def start(self, config: RunConfig, *, base_dir: Path | None = None) -> int:
        """Check ``config`` (with its ``sweep``), record the sweep and start driving it; returns its id at once."""
        sweep = plan_sweep(config)
        executor = executor_for(config.executor, self.runs)
        plan = plan_run(config, base_dir=base_dir)
        sweep_id = self.store.create_sweep(config.name, plan.config, sweep.children, base_dir=plan.base_dir)
        self._drive(sweep_id, plan, executor)
        return sweep_id

    def resume(self, sweep_id: int, *, api_keys: dict[str, str] | None = None) -> int:
        """Continue a failed, cancelled or interrupted sweep: its unfinished children run (resumed from their
        last round, or started), its finished ones are kept. ``api_keys``: keys typed in the app."""
        sweep = self.store.get_sweep(sweep_id)
        if sweep.status not in RESUMABLE:
            raise StoreError(f"sweep {sweep_id} is {sweep.status.value}; only "
                             f"{', '.join(s.value for s in RESUMABLE)} sweeps can be resumed")
        config = sweep.require_config().with_api_keys(api_keys or {})
        executor = executor_for(config.executor, self.runs)
        plan = plan_run(config, base_dir=None if sweep.base_dir is None else Path(sweep.base_dir))
        self.store.recover_interrupted()  # children left running by a driver that stopped
        self.store.reopen_sweep(sweep_id)
        self._drive(sweep_id, plan, executor)
        return sweep_id

    def cancel(self, sweep_id: int) -> bool:
        """Ask a sweep (driven by any process) to stop: its running child is cancelled, no other starts;
        False when it is not active."""
        if not self.store.request_sweep_cancel(sweep_id):
            return False
        for child in self.store.sweep_children(sweep_id):
            if child.run_id is not None and not self.store.run_status(child.run_id).is_terminal:
                self.runs.cancel(child.run_id)
        if not self.is_active(sweep_id):
            self.store.recover_interrupted_sweeps()  # its driver is gone: nobody else will end it
        return True

    def is_active(self, sweep_id: int) -> bool:
        with self._lock:
            thread = self._threads.get(sweep_id)
        return thread is not None and thread.is_alive()

    def wait(self, sweep_id: int, timeout: float | None = None) -> bool:
        """Wait until sweep ``sweep_id`` ends (driven here or elsewhere); False on timeout."""
        with self._lock:
            thread = self._threads.get(sweep_id)
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.store.sweep_status(sweep_id).is_terminal:
            self.store.recover_interrupted_sweeps()
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def _drive(self, sweep_id: int, plan: RunPlan, executor: ChildExecutor) -> None:
        driver = _Driver(self.store, sweep_id, plan, executor)
        thread = threading.Thread(target=driver.run, name=f"sweep-{sweep_id}", daemon=True)
        with self._lock:
            self._threads[sweep_id] = thread
        self.runs.watch()
        thread.start()


_managers: dict[str, SweepManager] = {}
_managers_lock = threading.Lock()


def get_sweep_manager(db_file: str | Path) -> SweepManager:
    """The process-wide sweep manager for a database file (on the run manager of that file); marks the
    sweeps whose driving process stopped as interrupted."""
    key = str(Path(db_file).resolve())
    with _managers_lock:
        if key not in _managers:
            runs = get_manager(key)
            runs.store.recover_interrupted_sweeps()
            _managers[key] = SweepManager(runs)
        return _managers[key]
