"""The Studio's side of a Ray task's store calls: applied to the one store, in the Studio's process.

``core.run.ray_remote.RemoteStore`` (in a Ray task) sends each store call of the worker path through the
sweep's mailbox actor; ``core.run.ray_executor`` takes them in this process and hands each to
``StoreService.apply``, which runs it on the Studio's ``Store`` and returns (True, the result) or (False,
the ``StudioError`` to raise in the task). Only the calls listed in ``StoreService`` exist; a write must
name a run this executor submitted (``admit``).

Files: a task uploads an artifact's bytes before it records the artifact (``put_file``: pieces written
to a ``.ray-partial`` file, renamed when the last one arrives), and a resumed task downloads its run
folder (``list_files``, ``get_file``). Every path is relative to the studio home and must lie in the
run's own folder (``runs/<id>/``): a task cannot read or write anything else of the Studio's. Artifact
paths travel relative to the home both ways (each side joins them to its own home).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.errors import StoreError, StudioError
from core.store import Store, process_start_time
from core.store.evidence import add_evaluation, add_training_rows

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".ray-partial"


class StoreService:
    """Applies the store calls of the Ray tasks of one executor to the Studio's ``store``."""

    def __init__(self, store: Store, home: Path, on_started: Callable[[int], None] | None = None) -> None:
        self.store = store
        self.home = home.resolve()
        self.on_started = on_started
        self._admitted: set[int] = set()
        reads = {"cancel_requested": store.cancel_requested, "run_status": store.run_status,
                 "test_plan": store.test_plan, "test_evaluations": store.test_evaluations,
                 "list_rounds": store.list_rounds}
        self._calls: dict[str, Callable[..., Any]] = {
            **reads,
            "started": self._started,
            "list_artifacts": self._list_artifacts,
            "set_worker_pid": self._on_run(store.set_worker_pid),
            "add_event": self._on_run(store.add_event),
            "mark_best": self._on_run(store.mark_best),
            "set_kept_rounds": self._on_run(store.set_kept_rounds),
            "finish_run": self._on_run(store.finish_run),
            "end_abruptly": self._on_run(store.end_abruptly),
            "add_training_rows": self._on_run(lambda *args: add_training_rows(store, *args)),
            "add_round": self._add_round,
            "add_evaluation": self._add_evaluation,
            "add_artifact": self._add_artifact,
            "put_file": self._put_file,
            "list_files": self._list_files,
            "get_file": self._get_file,
        }

    # -- which runs may write ---------------------------------------------------------------------
    def admit(self, run_id: int) -> None:
        """Run ``run_id`` was submitted: its task may write."""
        self._admitted.add(run_id)

    def dismiss(self, run_id: int) -> None:
        self._admitted.discard(run_id)

    def _check(self, run_id: int) -> bool:
        if run_id not in self._admitted:
            raise StoreError(f"run {run_id} is not executed by this sweep's Ray executor; its records are refused")
        return True

    def _on_run(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(run_id: int, *args: Any) -> Any:
            self._check(run_id)
            return method(run_id, *args)

        return call

    # -- applying one call ------------------------------------------------------------------------
    def apply(self, method: str, args: tuple) -> tuple[bool, Any]:
        """(True, result) or (False, the error the task raises)."""
        call = self._calls.get(method)
        if call is None:
            return False, StoreError(f"a Ray task asked the store for {method!r}; allowed: {', '.join(sorted(self._calls))}")
        try:
            return True, call(*args)
        except StudioError as e:
            return False, e
        except Exception as e:  # noqa: BLE001 - the task gets the error, the Studio goes on
            logger.exception("applying %s for a Ray task failed", method)
            return False, StoreError(f"the Studio could not apply {method}: {type(e).__name__}: {e}")

    def _started(self, run_id: int, node: str, pid: int) -> bool:
        """The task runs: the run becomes running, owned (heartbeats) by this process; False when it ended."""
        self._check(run_id)
        if not self.store.claim_run(run_id, os.getpid(), process_start_time(os.getpid())):
            return False
        self.store.set_worker_pid(run_id, pid)
        self.store.add_event(run_id, "status", f"running as a Ray task on {node} (worker process {pid})",
                             {"ray_node": node, "worker_pid": pid})
        if self.on_started is not None:
            self.on_started(run_id)
        return True

    def _add_round(self, round_: Any) -> None:
        self._check(round_.run_id)
        self.store.add_round(round_)

    def _add_evaluation(self, new: Any, results: list[Any]) -> int:
        self._check(new.run_id)
        return add_evaluation(self.store, new, results)

    # -- artifacts and files ----------------------------------------------------------------------
    def _inside(self, run_id: int, rel: str) -> Path:
        """The Studio's path of ``rel`` (relative to the studio home); it must lie in run ``run_id``'s folder."""
        folder = (self.home / "runs" / str(run_id)).resolve()
        target = (self.home / rel).resolve()
        if os.path.isabs(rel) or not target.is_relative_to(folder):
            raise StoreError(f"a Ray task of run {run_id} named the file {rel!r}, outside its run folder "
                             f"runs/{run_id}/ of the studio home")
        return target

    def _add_artifact(self, run_id: int, kind: str, path: str, meta: dict[str, Any] | None) -> int:
        self._check(run_id)
        if os.path.isabs(path):  # outside the task's home: a path on the Ray node, recorded as it is
            return self.store.add_artifact(run_id, kind, path, meta)
        return self.store.add_artifact(run_id, kind, str(self._inside(run_id, path)), meta)

    def _list_artifacts(self, run_id: int, kind: str | None) -> list[Any]:
        out = []
        for artifact in self.store.list_artifacts(run_id, kind):
            path = Path(artifact.path)
            if path.is_absolute() and path.resolve().is_relative_to(self.home):
                artifact = replace(artifact, path=path.resolve().relative_to(self.home).as_posix())
            out.append(artifact)
        return out

    def _put_file(self, run_id: int, rel: str, offset: int, data: bytes, last: bool) -> None:
        self._check(run_id)
        target = self._inside(run_id, rel)
        partial = target.with_name(target.name + PARTIAL_SUFFIX)
        if offset == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(data)
        else:
            if not partial.is_file() or partial.stat().st_size != offset:
                raise StoreError(f"run {run_id}: piece at byte {offset} of {rel!r} does not follow the bytes received")
            with partial.open("ab") as handle:
                handle.write(data)
        if last:
            os.replace(partial, target)

    def _list_files(self, run_id: int) -> list[tuple[str, int]]:
        self._check(run_id)
        folder = self.home / "runs" / str(run_id)
        if not folder.is_dir():
            return []
        return [(p.relative_to(self.home).as_posix(), p.stat().st_size) for p in sorted(folder.rglob("*"))
                if p.is_file() and not p.name.endswith((PARTIAL_SUFFIX, ".partial"))]

    def _get_file(self, run_id: int, rel: str, offset: int, size: int) -> bytes:
        self._check(run_id)
        with self._inside(run_id, rel).open("rb") as handle:
            handle.seek(offset)
            return handle.read(size)
