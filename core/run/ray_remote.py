"""What runs on the Ray cluster for a sweep's child runs: the task, its store proxy, and the mailbox actor.

``run_task`` is one child run executing as a Ray task (``core.run.ray_executor`` submits it). It runs the
same worker code as a local run's worker process (``core.run.worker.run_job``: ``build_run``, then
``execute_run``), in a Ray worker process of its own (the remote function has ``max_calls=1``, so the
models, fine-tuned weights and DSPy's history are freed with it, as a local worker's are), under a
temporary studio home on its node, removed when the task ends.

It never opens the Studio's SQLite file (the job carries no database path). Every store call of the worker
path (the ``Store`` methods that ``worker``, ``execute``, ``recorder``, ``resume`` and the evidence capture
call) goes to ``RemoteStore``, which sends it, through the sweep's ``Mailbox`` actor, to the process of the
Studio that started the run; there ``core.run.ray_service`` applies it to the one store and the answer
(or the ``StudioError`` it raised) comes back. Files take the same road: recording an artifact first
uploads its bytes (round programs, ``best.json``, a weights folder with its meta files), which the Studio
writes at the same place under its own studio home; a resumed run (or one that borrowed its baseline)
first downloads its run folder. A cancel request reaches the task the way it reaches a local worker: a
watch thread polls ``cancel_requested`` (through the proxy) and sets the run's cancel event.

``Mailbox`` is a small asyncio actor: tasks ``call`` (and wait for the answer); the Studio's process
``take``\\ s the waiting calls (a long poll) and ``answer``\\ s them. It holds no store and no file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.errors import StoreError, StudioError

logger = logging.getLogger(__name__)

CHUNK_BYTES = 8 << 20
"""Files travel in pieces of at most this size (one mailbox call each)."""

CALL_TIMEOUT_S = 300.0
"""How long a task waits for the Studio to answer one store call (a busy store waits 30 s per write)."""

CANCEL_POLL_S = 0.25

HOME_PREFIX = "studio-ray-run"
"""A task's temporary studio home: ``<tmp>/studio-ray-run<run id>-pid<worker pid>-<random>``."""


class Mailbox:
    """Store calls of the sweep's Ray tasks, waiting for the Studio's process to apply them (an async actor)."""

    def __init__(self) -> None:
        self._waiting: deque[tuple[int, str, tuple]] = deque()
        self._answers: dict[int, asyncio.Future] = {}
        self._ready: asyncio.Event | None = None
        self._next = 0

    def _event(self) -> asyncio.Event:
        if self._ready is None:
            self._ready = asyncio.Event()
        return self._ready

    async def call(self, method: str, args: tuple) -> tuple[bool, Any]:
        """A task's store call: (True, result) or (False, the error to raise), once the Studio answered."""
        answer = asyncio.get_running_loop().create_future()
        number, self._next = self._next, self._next + 1
        self._answers[number] = answer
        self._waiting.append((number, method, args))
        self._event().set()
        return await answer

    async def take(self, wait_s: float) -> list[tuple[int, str, tuple]]:
        """The calls waiting (oldest first); waits up to ``wait_s`` for one (an empty list after that)."""
        ready = self._event()
        if not self._waiting:
            ready.clear()
            try:
                await asyncio.wait_for(ready.wait(), wait_s)
            except TimeoutError:
                return []
        calls = list(self._waiting)
        self._waiting.clear()
        return calls

    async def answer(self, answers: list[tuple[int, bool, Any]]) -> None:
        for number, ok, value in answers:
            future = self._answers.pop(number, None)
            if future is not None and not future.done():
                future.set_result((ok, value))


class RemoteStore:
    """The Studio's store seen from a Ray task: exactly the ``Store`` methods the worker path calls."""

    def __init__(self, mailbox: Any, run_id: int, home: Path, *, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self._mailbox = mailbox
        self._run_id = run_id
        self._home = home.resolve()
        self._timeout_s = timeout_s
        self._sent: dict[str, tuple[int, int]] = {}  # file (relative to the home) -> (size, mtime) sent
        self._files_lock = threading.Lock()
        self.lost = threading.Event()  # set once the Studio cannot be reached

    def __repr__(self) -> str:
        return f"RemoteStore(run {self._run_id})"

    def _call(self, method: str, *args: Any) -> Any:
        import ray

        try:
            ok, value = ray.get(self._mailbox.call.remote(method, args), timeout=self._timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise StoreError(f"the Studio did not answer {method} within {self._timeout_s:.0f} s") from None
        except ray.exceptions.RayError as e:
            self.lost.set()
            raise StoreError(f"the Studio that started run {self._run_id} cannot be reached (its store proxy is "
                             f"gone: {type(e).__name__})") from None
        if not ok:
            raise value if isinstance(value, BaseException) else StoreError(str(value))
        return value

    # -- the run's life ---------------------------------------------------------------------------
    def started(self, node: str, pid: int) -> bool:
        """Tell the Studio that the task runs (it marks the run running); False: the run ended meanwhile."""
        return bool(self._call("started", self._run_id, node, pid))

    def set_worker_pid(self, run_id: int, pid: int | None) -> None:
        self._call("set_worker_pid", run_id, pid)

    def cancel_requested(self, run_id: int) -> bool:
        return bool(self._call("cancel_requested", run_id))

    def run_status(self, run_id: int) -> Any:
        return self._call("run_status", run_id)

    def finish_run(self, run_id: int, outcome: Any) -> bool:
        return bool(self._call("finish_run", run_id, outcome))

    def end_abruptly(self, run_id: int, status: Any, error: str) -> bool:
        return bool(self._call("end_abruptly", run_id, status, error))

    def close(self) -> None:
        """Nothing to close: the connection is the Studio's."""

    # -- rounds, events, test plan ----------------------------------------------------------------
    def add_event(self, run_id: int, kind: str, message: str, data: dict[str, Any] | None = None) -> int:
        return int(self._call("add_event", run_id, kind, message, data))

    def add_round(self, round_: Any) -> None:
        self._call("add_round", round_)

    def mark_best(self, run_id: int, index: int) -> None:
        self._call("mark_best", run_id, index)

    def list_rounds(self, run_id: int) -> list[Any]:
        return list(self._call("list_rounds", run_id))

    def test_plan(self, run_id: int) -> Any:
        return self._call("test_plan", run_id)

    def test_evaluations(self, run_id: int) -> dict[int, tuple[int, float | None]]:
        return dict(self._call("test_evaluations", run_id))

    def set_kept_rounds(self, run_id: int, kept: dict[str, int]) -> None:
        self._call("set_kept_rounds", run_id, dict(kept))

    # -- evidence (the whole write of ``core.store.evidence``, applied by the Studio) -----------------
    def add_evaluation(self, new: Any, results: list[Any]) -> int:
        return int(self._call("add_evaluation", new, list(results)))

    def add_training_rows(self, run_id: int, round_index: int, model: str, rows: list[Any]) -> None:
        self._call("add_training_rows", run_id, round_index, model, list(rows))

    # -- artifacts and their files ----------------------------------------------------------------
    def add_artifact(self, run_id: int, kind: str, path: str | Path, meta: dict[str, Any] | None = None) -> int:
        """Upload the file (or the folder's files) at ``path``, then record the artifact at the same place
        under the Studio's home. A path outside this task's home is recorded as it is (nothing to upload)."""
        return int(self._call("add_artifact", run_id, kind, self._upload(Path(path)), meta))

    def list_artifacts(self, run_id: int, kind: str | None = None) -> list[Any]:
        """The run's artifacts, their paths under this task's home (the Studio sends them relative to its)."""
        return [a if os.path.isabs(a.path) else replace(a, path=str(self._home / a.path))
                for a in self._call("list_artifacts", run_id, kind)]

    def _relative(self, path: Path) -> str | None:
        try:
            return path.resolve().relative_to(self._home).as_posix()
        except ValueError:
            return None

    def _upload(self, path: Path) -> str:
        rel = self._relative(path)
        if rel is None:
            logger.warning("run %s: artifact %s lies outside the task's studio home; recorded as a path on %s",
                           self._run_id, path, socket.gethostname())
            return str(path)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            self._send_file(file)
        return rel

    def _send_file(self, file: Path) -> None:
        rel = self._relative(file)
        with self._files_lock:
            stat = file.stat()
            if rel is None or self._sent.get(rel) == (stat.st_size, stat.st_mtime_ns):
                return
            with file.open("rb") as handle:
                offset = 0
                while True:
                    chunk = handle.read(CHUNK_BYTES)
                    last = len(chunk) < CHUNK_BYTES
                    self._call("put_file", self._run_id, rel, offset, chunk, last)
                    offset += len(chunk)
                    if last:
                        break
            self._sent[rel] = (stat.st_size, stat.st_mtime_ns)

    def download_run_folder(self) -> int:
        """Copy the run's folder from the Studio (a resumed run replays its rounds from it); the file count."""
        files = self._call("list_files", self._run_id)
        for rel, size in files:
            target = self._home / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as handle:
                offset = 0
                while offset < size:
                    chunk = self._call("get_file", self._run_id, rel, offset, CHUNK_BYTES)
                    if not chunk:
                        break
                    handle.write(chunk)
                    offset += len(chunk)
            stat = target.stat()
            self._sent[rel] = (stat.st_size, stat.st_mtime_ns)  # the Studio holds it already
        return len(files)


def run_task(job_line: str, mailbox: Any) -> None:
    """One child run as a Ray task: the worker code of a local run, recording through ``RemoteStore``."""
    from core.lms.catalog import model_cache_dir
    from core.run.worker import WorkerJob, run_job, setup_worker_logging

    job = WorkerJob.from_json(job_line)
    os.environ.setdefault("STUDIO_MODEL_CACHE", str(model_cache_dir()))  # this node's model cache, kept
    _remove_stale_homes()
    home = Path(tempfile.mkdtemp(prefix=f"{HOME_PREFIX}{job.run_id}-pid{os.getpid()}-"))
    os.environ["STUDIO_HOME"] = str(home)
    setup_worker_logging(job)
    store = RemoteStore(mailbox, job.run_id, home)
    try:
        if not store.started(socket.gethostname(), os.getpid()):
            logger.warning("run %s ended before its Ray task started; nothing to do", job.run_id)
            return
        if job.resume:
            store.download_run_folder()
        cancel, finishing = threading.Event(), threading.Event()
        threading.Thread(target=_watch, args=(store, job.run_id, cancel, finishing), name="cancel-watch",
                         daemon=True).start()
        run_job(job, store, cancel, finishing)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _remove_stale_homes() -> None:
    """Remove the temporary homes of this node's tasks whose process is gone (a killed task cannot)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{HOME_PREFIX}*-pid*-*"):
        try:
            pid = int(folder.name.split("-pid", 1)[1].split("-", 1)[0])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # another user's live process
            continue


def _watch(store: RemoteStore, run_id: int, cancel: threading.Event, finishing: threading.Event) -> None:
    """As a local worker's watch: a cancel request sets ``cancel``; a run ended by the Studio (or a Studio
    that cannot be reached any more) stops the task's process."""
    while True:
        try:
            if not cancel.is_set() and store.cancel_requested(run_id):
                logger.info("run %s: cancel requested", run_id)
                cancel.set()
            if not finishing.is_set() and store.run_status(run_id).is_terminal:
                logger.warning("run %s was ended by the Studio; its Ray task stops", run_id)
                os._exit(4)
        except StudioError:
            if store.lost.is_set() and not finishing.is_set():
                logger.error("the Studio that started run %s cannot be reached; its Ray task stops", run_id)
                os._exit(3)
            logger.exception("run %s: cannot read the run store", run_id)
        time.sleep(CANCEL_POLL_S)
