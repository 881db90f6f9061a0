"""Where a sweep's child runs execute: the interface a sweep drives, and this machine's queue.

The sweep (``core.run.sweep``) records each child run in the store (queued, with its test plan and any
baseline it reuses) and hands it to an executor; it learns that the run ended from the run's status
in the store. An executor must leave every run it was given terminal in the store, whatever happens
to it (a worker that dies fails its run, as ``core.run.supervisor`` does locally).

``local`` (``LocalExecutor``) is today's queue: the ``RunManager`` of this process supervises each
run in its worker process, embedded CPU runs one at a time through the CPU lease. ``ray``
(``core.run.ray_executor``, for ``"executor": {"kind": "ray", ...}``) runs each as a task on a Ray
cluster. Other kinds register a factory in ``EXECUTORS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from core.config.sweep import LocalExecutorSpec, RayExecutorSpec
from core.errors import ConfigError
from core.plan.prepare import RunPlan
from core.run.manager import RunManager


class ChildExecutor(Protocol):
    """Runs a sweep's child runs."""

    max_parallel: int
    """How many child runs may execute at once."""

    def submit(self, run_id: int, plan: RunPlan, *, resume: bool) -> None:
        """Start run ``run_id`` (recorded, queued, with ``plan``'s config) and return at once; ``resume``:
        replay the rounds it holds already (a resumed run, or a borrowed baseline)."""

    def cancel(self, run_id: int) -> None:
        """Ask run ``run_id`` to stop, keeping what it finished."""

    def active(self, run_id: int) -> bool:
        """True while the executor still executes anything of run ``run_id`` (its worker may still be exiting
        after the run's status became terminal); the sweep counts a run as ended only after both."""

    def close(self) -> None:
        """The sweep is over: release what the executor holds."""


class LocalExecutor:
    """Child runs through this process's ``RunManager``, one at a time."""

    max_parallel = 1

    def __init__(self, runs: RunManager) -> None:
        self.runs = runs

    def submit(self, run_id: int, plan: RunPlan, *, resume: bool) -> None:
        self.runs.launch(run_id, plan, resume=resume)

    def cancel(self, run_id: int) -> None:
        self.runs.cancel(run_id)

    def active(self, run_id: int) -> bool:
        return self.runs.is_active(run_id)

    def close(self) -> None:
        pass


ExecutorFactory = Callable[[Any, RunManager], ChildExecutor]

def _ray_executor(spec: RayExecutorSpec, runs: RunManager) -> ChildExecutor:
    """Each run as a task on a Ray cluster (``core.run.ray_executor``; Ray is imported only here)."""
    from core.run.ray_executor import RayExecutor

    return RayExecutor(spec, runs)


EXECUTORS: dict[str, ExecutorFactory] = {"local": lambda spec, runs: LocalExecutor(runs), "ray": _ray_executor}
"""Executor kind -> factory (the executor spec of the configuration, the process's ``RunManager``)."""


def executor_for(spec: LocalExecutorSpec | RayExecutorSpec, runs: RunManager) -> ChildExecutor:
    """The executor the configuration's ``executor`` names; ``ConfigError`` for a kind this install lacks."""
    factory = EXECUTORS.get(spec.kind)
    if factory is None:
        raise ConfigError(f"executor {spec.kind!r} is not available in this install; available: "
                          f"{', '.join(sorted(EXECUTORS))} (set \"executor\": {{\"kind\": \"local\"}})")
    return factory(spec, runs)
