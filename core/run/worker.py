"""The worker process of one run: prepares it, runs it, records it, and exits.

Why a process per run: the optimization loads native code (llama.cpp, torch) that can die on an
illegal instruction, a segfault or the kernel's OOM killer; in a child process such a death fails
only its own run, and the models, fine-tuned weights and DSPy's call history are freed when the
child exits. The child is a fresh interpreter (spawned, never forked: forking a process that
holds threads, sqlite connections and llama.cpp state is unsafe).

Why ``subprocess`` and not ``multiprocessing``'s spawn context: a spawn child re-runs the parent's
``__main__`` script, and inside Streamlit ``__main__`` is the page being rendered (Streamlit
installs a fake ``__main__`` module whose file is the script), so every worker would execute
``app.py`` or a page first. ``python -c 'from core.run.worker import main; main()'`` starts clean.
The job travels as one JSON line on the child's stdin (API keys typed in the app, which are never
stored, travel only there); the pipe then stays open and its end of file tells the child that its
supervisor died.

The child receives only plain data: a ``WorkerJob`` holding the ``RunPlan`` that Start checked
(``core.plan.prepare.plan_run``: the validated config, the data already split, the label choices,
each LM's capabilities). It builds the run's objects from it (``build_run``) without reading the
data file or contacting an endpoint again, opens its own ``Store`` on the same database file and
does all the writing of rounds, events and the final status. A watch thread polls the database for
a cancel request (any process may write one) and sets the run's Event, so that the cooperative
cancel of ``execute_run`` applies; it also stops the worker when the run was ended by another
process, and when the supervising process is gone (then the run is marked interrupted: nobody
watches it).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from core.errors import RunCancelled, StepCancelled, StudioError
from core.plan.prepare import RunPlan, build_run

logger = logging.getLogger(__name__)

CANCEL_POLL_S = 0.25
RUN_LOG = "worker.log"
"""The run's log file, in its run folder (``run_log_path``)."""
"""How often the worker looks for a cancel request in the database."""


@dataclass(frozen=True)
class WorkerJob:
    """What a worker needs: the run's checked plan and where to record it.

    It crosses the process boundary as one JSON line, written by ``to_json`` and read by
    ``from_json`` only. The typed API keys (on the plan's config, in memory) are in that line and
    nowhere else: not in a repr, the database or a log.
    """

    run_id: int
    db_path: str
    plan: RunPlan
    studio_home: str | None
    resume: bool = False

    def to_json(self) -> str:
        return json.dumps({"run_id": self.run_id, "db_path": self.db_path, "studio_home": self.studio_home,
                           "resume": self.resume, "plan": self.plan.to_dict(),
                           "api_keys": self.plan.config.typed_api_keys()}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> WorkerJob:
        data = json.loads(text)
        return cls(run_id=int(data["run_id"]), db_path=str(data["db_path"]), studio_home=data["studio_home"],
                   resume=bool(data["resume"]), plan=RunPlan.from_dict(data["plan"], api_keys=data["api_keys"]))


class WorkerProcess:
    """The supervisor's handle on a worker (the few ``multiprocessing.Process`` verbs it needs)."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self._popen = popen
        self.pid = popen.pid

    @property
    def exitcode(self) -> int | None:
        """None while it runs; negative: the signal that killed it."""
        return self._popen.poll()

    def join(self, timeout: float | None = None) -> None:
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def kill(self) -> None:
        if self._popen.poll() is None:
            self._popen.kill()

    def close(self) -> None:
        """Close our end of the job pipe (the worker reads that as its supervisor's death)."""
        if self._popen.stdin is not None and not self._popen.stdin.closed:
            self._popen.stdin.close()


def spawn_worker(job: WorkerJob) -> WorkerProcess:
    """Start the worker of ``job`` in a fresh interpreter and hand it the job on its stdin."""
    from core.paths import REPO_ROOT

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    popen = subprocess.Popen([sys.executable, "-c", "from core.run.worker import main; main()"],
                             stdin=subprocess.PIPE, env=env, cwd=str(REPO_ROOT))
    assert popen.stdin is not None
    popen.stdin.write((job.to_json() + "\n").encode("utf-8"))  # JSON escapes newlines: one line
    popen.stdin.flush()  # the pipe stays open: its end of file means the supervisor died
    return WorkerProcess(popen)


def main() -> None:
    """Entry point of the worker interpreter: the job is the first line of stdin."""
    chunks = []
    while True:  # os.read, not sys.stdin: nothing is left in a buffer (the supervisor writes only this line)
        chunk = os.read(0, 1 << 16)
        chunks.append(chunk)
        if not chunk or b"\n" in chunk:
            break
    line = b"".join(chunks)
    if not line.strip():
        raise SystemExit("no job on stdin: the worker is started by core.run.supervisor")
    worker_main(WorkerJob.from_json(line))


def worker_main(job: WorkerJob) -> None:
    """Entry point of the child process: run the job and record its outcome in the store."""
    # Ctrl-C in a terminal reaches the whole process group: the supervisor turns it into a cancel request.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if job.studio_home:
        os.environ["STUDIO_HOME"] = job.studio_home
    console = output_to_run_log(run_log_path(job.run_id))
    setup_worker_logging(job, console=console)
    from core.store import Store

    store = Store(job.db_path)
    store.set_worker_pid(job.run_id, os.getpid())
    cancel = threading.Event()
    finishing = threading.Event()  # set once this worker writes the run's final status itself
    watch = threading.Thread(target=_watch, args=(store, job.run_id, cancel, finishing), name="cancel-watch",
                             daemon=True)
    watch.start()
    try:
        run_job(job, store, cancel, finishing)
    finally:
        store.close()


def setup_worker_logging(job: WorkerJob, console: TextIO | None = None) -> None:
    """Log lines to stderr (a worker's: the run's log file; ``console``: where the Studio's own warnings
    are shown too), and no log line, message or stored error that carries one of the job's keys
    (also what a Ray task does first, ``core.run.ray_remote``)."""
    route_logs(console)
    from core.store.secrets import install_log_redaction, register_secret

    install_log_redaction()  # log lines never carry a key
    for key in job.plan.config.typed_api_keys().values():
        register_secret(key)  # nor any message or stored error, whatever the key looks like
    for name in ("dspy", "LiteLLM", "litellm", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_log_path(run_id: int) -> Path:
    """The run's log file: everything its worker writes (appended to by each resume)."""
    from core.paths import run_dir

    return run_dir(run_id) / RUN_LOG


def output_to_run_log(path: Path) -> TextIO | None:
    """Point this process's stdout and stderr (file descriptors 1 and 2) at the log file ``path``; return
    a stream on the stderr it had (the CLI's terminal, the app's console), or None where that cannot be done.

    What lands there: llama.cpp's lines (``core.lms.native_log``), libraries' warnings and progress,
    DSPy's prints, and whatever native code writes to its stderr itself (an assertion before an abort).
    The user follows the run through its events, which the CLI and the pages show; the Studio's own
    warnings reach the console too (``route_logs``). Without a log file (it cannot be opened), stdout
    goes to stderr as before: the CLI keeps its stdout for the JSON summary.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError:
        log_fd = None
    console = None
    try:
        if log_fd is not None:
            console = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
            os.dup2(log_fd, 2)
        os.dup2(2, 1)
    except OSError:  # no real file descriptors (embedded interpreters): stderr stays where it was
        console = None
    finally:
        if log_fd is not None:
            os.close(log_fd)
    sys.stdout = sys.stderr
    return console


class _FirstLine(logging.Formatter):
    """A record as one line: the full text (a traceback too) is in the run's log."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).split("\n", 1)[0]


def route_logs(console: TextIO | None = None) -> None:
    """Where a worker's log records go: all of them to stderr (the run's log file, ``output_to_run_log``);
    the Studio's own warnings (loggers ``core.*``) also to ``console``, one line each.

    The Studio logs from DEBUG (llama.cpp's converters log their output there, ``core.lms.convert``);
    llama.cpp's own lines from WARNING (its INFO lists every tensor of each model load and quantization); no
    progress bar from Hugging Face libraries (loading weights), and Python warnings as log records."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when huggingface_hub is imported
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)
    from core.lms.native_log import NATIVE_LOGGER

    logging.getLogger("core").setLevel(logging.DEBUG)
    logging.getLogger(NATIVE_LOGGER).setLevel(logging.WARNING)
    if console is not None:
        handler = logging.StreamHandler(console)
        handler.setLevel(logging.WARNING)
        handler.setFormatter(_FirstLine("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger("core").addHandler(handler)


def run_job(job: WorkerJob, store: Any, cancel: threading.Event, finishing: threading.Event) -> None:
    """Build and execute the job's run, recording it in ``store`` (this worker's ``Store``, or a Ray task's
    proxy of the Studio's store), and always leave a final status; ``finishing`` is set before it is written."""
    from core.run.execute import execute_run
    from core.store.records import RunStatus

    run_id = job.run_id
    try:
        prepared = build_run(job.plan)  # checked and split at Start: no endpoint call, no data read here
        outcome = execute_run(prepared, store, run_id, cancel, resume=job.resume)
        finishing.set()
        store.finish_run(run_id, outcome)
        store.add_event(run_id, "status", f"run {outcome.status.value}", {"status": outcome.status.value})
    except BaseException as e:  # noqa: BLE001 - the worker must always leave a final status
        if isinstance(e, StudioError):
            message = str(e)
        else:
            message = f"unexpected error: {type(e).__name__}: {e}"
            logger.error("run %s failed\n%s", run_id, traceback.format_exc())
        status = RunStatus.CANCELLED if isinstance(e, RunCancelled | StepCancelled) else RunStatus.FAILED
        finishing.set()
        try:
            store.add_event(run_id, "error", message)
            store.end_abruptly(run_id, status, message)
        except StudioError:
            logger.exception("cannot record the failure of run %s", run_id)


def _watch(store: Any, run_id: int, cancel: threading.Event, finishing: threading.Event) -> None:
    """Poll for a cancel request, for the run being ended by another process (its owner was taken for
    dead) and for the supervisor's death, until the process ends."""
    from core.store.records import RunStatus

    parent_gone = threading.Event()
    threading.Thread(target=_wait_for_eof, args=(parent_gone,), name="parent-watch", daemon=True).start()
    while True:
        try:
            if not cancel.is_set() and store.cancel_requested(run_id):
                logger.info("run %s: cancel requested", run_id)
                cancel.set()
            if not finishing.is_set() and store.run_status(run_id).is_terminal:
                logger.warning("run %s was ended by another process; its worker stops", run_id)
                os._exit(4)
            if parent_gone.is_set() and not finishing.is_set():
                store.add_event(run_id, "error", "the app process that supervised this run stopped; "
                                                 "the worker stops too")
                store.end_abruptly(run_id, RunStatus.INTERRUPTED,
                                   "The app process that supervised this run stopped; the rounds recorded so "
                                   f"far are kept; resume it with `python -m core resume {run_id}`.")
                os._exit(3)
        except StudioError:
            logger.exception("run %s: cannot read the run store", run_id)
        time.sleep(CANCEL_POLL_S)


def _wait_for_eof(parent_gone: threading.Event) -> None:
    """Block on stdin until the supervisor's end of the pipe closes (it exited or died)."""
    try:  # os.read, not sys.stdin: a daemon thread blocked in a buffered read breaks interpreter shutdown
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    parent_gone.set()
