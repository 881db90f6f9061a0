"""Several processes on one database: one CPU queue, and any process can cancel any run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.run import RunManager
from core.store import Store
from core.store.records import RunStatus

ROOT = Path(__file__).resolve().parents[2]


def _cli_run(tmp_path: Path, db: Path, tag: str, **options) -> subprocess.Popen:
    doc = scripted_config_dict("classifier", tag=tag, **options)
    for spec in doc["lms"].values():
        spec["options"]["local_cpu"] = True  # like the embedded models: one run at a time, machine-wide
    config = tmp_path / f"{tag}.json"
    config.write_text(json.dumps(doc))
    return subprocess.Popen([sys.executable, "-m", "core", "--db", str(db), "run", str(config)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)


def _wait_until(what, condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def _runs_named(store: Store, tag: str):
    return [r for r in store.list_runs() if r.config.lms["small"].options["tag"] == tag]


def test_two_processes_never_run_cpu_jobs_at_the_same_time(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    Store(db)  # migrate once, before both processes open it
    procs = [_cli_run(tmp_path, db, f"proc-{i}", delay=0.01) for i in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    store = Store(db)
    runs = sorted(store.list_runs(), key=lambda r: r.started_at)
    assert len(runs) == 2 and all(r.status is RunStatus.FINISHED for r in runs)
    assert runs[0].finished_at <= runs[1].started_at, [(r.id, r.started_at, r.finished_at) for r in runs]
    assert {r.owner_pid for r in runs} == {p.pid for p in procs}  # each supervised by its own process
    assert store.cpu_holder() is None


def test_a_run_of_another_process_can_be_cancelled_from_here(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    Store(db)
    running = _cli_run(tmp_path, db, "busy", delay=0.05)
    store = Store(db)
    _wait_until("the first run holds the CPU and evaluated its baseline", lambda: any(
        r.status is RunStatus.RUNNING and store.list_rounds(r.id) for r in _runs_named(store, "busy")))
    waiting = _cli_run(tmp_path, db, "waiting")
    _wait_until("the second run is queued", lambda: any(
        r.status is RunStatus.QUEUED for r in _runs_named(store, "waiting")))
    here = RunManager(store)  # this test process owns neither run
    queued = _runs_named(store, "waiting")[0]
    assert here.cancel(queued.id)
    assert here.wait(queued.id, timeout=30)
    assert store.get_run(queued.id).status is RunStatus.CANCELLED
    assert store.get_run(queued.id).error == "cancelled while queued"
    busy = _runs_named(store, "busy")[0]
    asked = time.monotonic()
    assert here.cancel(busy.id)
    assert here.wait(busy.id, timeout=30)
    assert time.monotonic() - asked < 5.0  # a poll of the request, then the cooperative cancel
    run = store.get_run(busy.id)
    assert run.status is RunStatus.CANCELLED and "best program so far was kept" in run.error
    assert run.best_score == max(r.score for r in store.list_rounds(busy.id))
    assert running.wait(timeout=30) == 1 and waiting.wait(timeout=30) == 1
    assert json.loads(running.stdout.read())["status"] == "cancelled"
    assert here.cancel(busy.id) is False  # already ended


def test_a_worker_stops_when_another_process_ended_its_run(tmp_path: Path) -> None:
    manager = RunManager(Store(tmp_path / "runs.db"))
    doc = scripted_config_dict("classifier", tag="taken-over", delay=0.05)
    run_id = manager.start(parse_config(doc))
    store = manager.store
    _wait_until("the worker runs", lambda: store.db.execute(
        "select worker_pid from runs where id = ?", [run_id]).fetchone()[0] is not None)
    worker = store.db.execute("select worker_pid from runs where id = ?", [run_id]).fetchone()[0]
    # another process took this run's owner for dead (a stale heartbeat) and marked it interrupted
    assert store.end_abruptly(run_id, RunStatus.INTERRUPTED, "its owner stopped sending heartbeats")
    assert manager.wait(run_id, timeout=15)  # the worker noticed and exited; its supervisor ended
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)
    assert store.get_run(run_id).status is RunStatus.INTERRUPTED
