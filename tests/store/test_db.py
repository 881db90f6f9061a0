"""Tests of the run store on real SQLite files."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.config.defaults import scripted_config_dict
from core.config.schema import config_to_dict, parse_config
from core.errors import StoreError
from core.store import (
    BUSY_TIMEOUT_MS,
    HEARTBEAT_TIMEOUT_S,
    Store,
    find_secrets,
    is_secret_name,
    process_start_time,
)
from core.store.records import TERMINAL, Round, RoundDetails, RunOutcome, RunStatus

CONFIG = parse_config({**scripted_config_dict("analyze_classify"), "strategy": "p -> w -> p"})


def _with_lm_options(**options: object):
    """CONFIG whose large LM (the scripted factory) carries ``options``."""
    doc = config_to_dict(CONFIG)
    doc["lms"]["large"]["options"].update(options)
    return parse_config(doc)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "runs" / "studio.db")


def _round(run_id: int, index: int, score: float | None, **kwargs: object) -> Round:
    strategy = kwargs.pop("strategy", "" if index == 0 else " -> ".join(["p"] * index))
    return Round(run_id=run_id, index=index, strategy=strategy, score=score, **kwargs)  # type: ignore[arg-type]


# -- schema --------------------------------------------------------------------------------


def test_opening_creates_folder_and_tables(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "folder" / "studio.db"
    store = Store(path)
    assert path.exists()
    assert {"runs", "rounds", "events", "artifacts", "leases"} <= set(store.db.table_names())
    applied = store.applied_migrations()
    assert applied[0] == "m001_initial_schema" and "m002_worker_ownership" in applied
    assert {"heartbeat_at", "cancel_requested_at", "local_cpu", "queued_at"} <= set(store.db["runs"].columns_dict)


def test_migrations_are_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "studio.db"
    first = Store(path)
    run_id = first.create_run("kept", CONFIG)
    version = first.schema_version
    schema = first.db.schema
    first.close()

    second = Store(path)
    assert version == len(first.applied_migrations()) >= 2
    assert second.schema_version == version
    assert second.db.schema == schema
    rows = second.db.execute("select count(*) from _sqlite_migrations").fetchone()[0]
    assert rows == version
    assert second.get_run(run_id).name == "kept"


def test_wal_mode_busy_timeout_and_foreign_keys(store: Store) -> None:
    assert store.db.journal_mode == "wal"
    assert store.db.execute("pragma busy_timeout").fetchone()[0] == BUSY_TIMEOUT_MS
    assert store.db.execute("pragma foreign_keys").fetchone()[0] == 1
    # A plain connection sees WAL too: the mode is stored in the file.
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"


# -- threads -------------------------------------------------------------------------------


def test_each_thread_gets_its_own_connection(store: Store) -> None:
    seen: dict[str, object] = {}

    def grab() -> None:
        seen["worker"] = store.db
        seen["worker_again"] = store.db

    thread = threading.Thread(target=grab)
    thread.start()
    thread.join()
    assert seen["worker"] is seen["worker_again"]
    assert seen["worker"] is not store.db
    assert store.db is store.db


def test_worker_writes_while_other_threads_read(store: Store) -> None:
    run_id = store.create_run("concurrent", CONFIG)
    total = 30
    errors: list[BaseException] = []
    done = threading.Event()
    counts: dict[str, list[int]] = {"reader": [], "main": []}

    def writer() -> None:
        try:
            assert store.claim_run(run_id, os.getpid(), process_start_time(os.getpid()))
            for index in range(total):
                store.add_round(_round(run_id, index, index / total, details=RoundDetails(lm_errors=index)))
                store.add_event(run_id, "progress", f"round {index}", {"index": index})
                time.sleep(0.002)
            store.finish_run(
                run_id, RunOutcome(RunStatus.FINISHED,
                best_strategy="p",
                best_score=0.9,
                baseline_score=0.0,
                test_baseline_score=None,
                test_best_score=None,
                flagged=False))
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            errors.append(e)
        finally:
            done.set()

    def read(into: list[int]) -> None:
        while not done.is_set():
            rounds = store.list_rounds(run_id)
            # A reader only ever sees whole, committed rounds, in order.
            assert [r.index for r in rounds] == list(range(len(rounds)))
            assert all(r.details == RoundDetails(lm_errors=r.index) for r in rounds)
            store.get_run(run_id)
            into.append(len(rounds))

    def reader() -> None:
        try:
            read(counts["reader"])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    read(counts["main"])
    for thread in threads:
        thread.join()

    assert errors == []
    for name, seen in counts.items():
        assert seen, name
        assert seen == sorted(seen), f"{name} saw rounds disappear"
    assert len(store.list_rounds(run_id)) == total
    assert len(store.list_events(run_id)) == total
    assert store.get_run(run_id).status is RunStatus.FINISHED


def test_concurrent_writers_wait_instead_of_failing(store: Store) -> None:
    run_id = store.create_run("writers", CONFIG)
    errors: list[BaseException] = []

    def write(tag: str) -> None:
        try:
            for i in range(100):
                store.add_event(run_id, "log", f"{tag} {i}")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=write, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    events = store.list_events(run_id)
    assert len(events) == 400
    assert [e.id for e in events] == sorted(e.id for e in events)


def test_lock_held_past_the_timeout_is_a_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("core.store.db.BUSY_TIMEOUT_MS", 50)
    store = Store(tmp_path / "studio.db")
    run_id = store.create_run("r", CONFIG)
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match=r"cannot write to the run store .*: database is locked"):
            store.add_event(run_id, "log", "blocked")
        # Readers are not blocked by the writer (WAL).
        assert store.get_run(run_id).name == "r"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.add_event(run_id, "log", "after") > 0
    assert [e.message for e in store.list_events(run_id)] == ["after"]


# -- runs and statuses ---------------------------------------------------------------------


def test_create_and_get_run(store: Store) -> None:
    run_id = store.create_run("first", CONFIG)
    run = store.get_run(run_id)
    assert run.id == run_id
    assert run.name == "first"
    assert run.status is RunStatus.QUEUED
    assert run.config == CONFIG and run.config_problem is None and run.strategy == "p -> w -> p"
    assert run.created_at.endswith("+00:00")
    assert run.started_at is None and run.finished_at is None
    assert run.owner_pid == os.getpid()
    assert run.flagged is False
    assert run.queue_position == 1


def test_get_missing_run_names_the_id(store: Store) -> None:
    with pytest.raises(StoreError, match="no run with id 42"):
        store.get_run(42)
    with pytest.raises(StoreError, match="no run with id 42"):
        store.set_status(42, RunStatus.RUNNING)
    with pytest.raises(StoreError, match="no run with id 42"):
        store.add_event(42, "log", "x")


def test_status_transitions_and_terminal_refusal(store: Store) -> None:
    run_id = store.create_run("r", CONFIG)
    assert store.set_status(run_id, RunStatus.RUNNING) is True
    running = store.get_run(run_id)
    assert running.status is RunStatus.RUNNING
    assert running.started_at is not None
    assert running.finished_at is None
    assert running.queue_position is None

    assert store.set_status(run_id, RunStatus.FAILED, error="LM unreachable") is True
    failed = store.get_run(run_id)
    assert failed.status is RunStatus.FAILED
    assert failed.error == "LM unreachable"
    assert failed.finished_at is not None
    assert failed.started_at == running.started_at

    # A late writer cannot resurrect it or change its outcome.
    assert store.set_status(run_id, RunStatus.RUNNING) is False
    assert store.set_status(run_id, RunStatus.FINISHED) is False
    assert store.claim_run(run_id, 1, None) is False
    after = store.get_run(run_id)
    assert after.status is RunStatus.FAILED
    assert after.finished_at == failed.finished_at
    assert after.owner_pid == os.getpid()


def test_unknown_status_is_refused(store: Store) -> None:
    run_id = store.create_run("r", CONFIG)
    with pytest.raises(StoreError, match=r"unknown run status 'done'; allowed: queued, running"):
        store.set_status(run_id, "done")  # type: ignore[arg-type]
    assert store.get_run(run_id).status is RunStatus.QUEUED


def test_claim_and_finish_run(store: Store) -> None:
    run_id = store.create_run("r", CONFIG)
    assert store.claim_run(run_id, 4321, 1234.5) is True
    claimed = store.get_run(run_id)
    assert (claimed.owner_pid, claimed.owner_started, claimed.status) == (4321, 1234.5, RunStatus.RUNNING)

    assert store.finish_run(
        run_id, RunOutcome(RunStatus.FINISHED,
        best_strategy="p -> w",
        best_score=0.75,
        baseline_score=0.5,
        test_baseline_score=0.45,
        test_best_score=0.7,
        flagged=True,
        error="step 3 (p) failed: timeout"))
    run = store.get_run(run_id)
    assert run.status is RunStatus.FINISHED
    assert (run.best_strategy, run.best_score, run.baseline_score) == ("p -> w", 0.75, 0.5)
    assert (run.test_baseline_score, run.test_best_score) == (0.45, 0.7)
    assert run.flagged is True
    assert run.error == "step 3 (p) failed: timeout"
    assert run.finished_at is not None

    again = store.finish_run(
        run_id, RunOutcome(RunStatus.FAILED,
        best_strategy=None,
        best_score=None,
        baseline_score=None,
        test_baseline_score=None,
        test_best_score=None,
        flagged=False))
    assert again is False
    assert store.get_run(run_id).best_score == 0.75


def test_finish_run_needs_a_terminal_status(store: Store) -> None:
    run_id = store.create_run("r", CONFIG)
    with pytest.raises(StoreError, match="terminal status, got 'running'"):
        store.finish_run(
            run_id, RunOutcome(RunStatus.RUNNING,
            best_strategy=None,
            best_score=None,
            baseline_score=None,
            test_baseline_score=None,
            test_best_score=None,
            flagged=False))
    assert {s.value for s in TERMINAL} == {"finished", "failed", "cancelled", "interrupted"}
    assert RunStatus.CANCELLED.is_terminal and not RunStatus.QUEUED.is_terminal


def test_queue_positions(store: Store) -> None:
    a = store.create_run("a", CONFIG)
    b = store.create_run("b", CONFIG)
    c = store.create_run("c", CONFIG)
    d = store.create_run("d", CONFIG)
    store.set_status(a, RunStatus.RUNNING)
    store.set_status(c, RunStatus.CANCELLED)

    runs = store.list_runs()
    assert [r.id for r in runs] == [d, c, b, a]
    positions = {r.id: r.queue_position for r in runs}
    assert positions == {a: None, b: 1, c: None, d: 2}
    assert store.get_run(d).queue_position == 2
    assert store.queued_run_ids() == [b, d]
    assert [r.id for r in store.list_runs(limit=2)] == [d, c]


# -- rounds --------------------------------------------------------------------------------


def test_rounds_upsert_and_decode(store: Store) -> None:
    run_id = store.create_run("r", CONFIG)
    usage = {"llama-3b": {"calls": 12, "input_tokens": 3400, "output_tokens": 560, "cost": None}}
    store.add_round(_round(run_id, 1, None, eval_failed=True, eval_error="boom", step_key="p"))
    store.add_round(
        _round(
            run_id,
            0,
            0.5,
            lm_usage=usage,
            predictor_models={"answer": "llama-3b"},
            demos={"answer": 0},
            instructions={"answer": "Answer the question."},
        )
    )
    # Same (run_id, index): replaced, not duplicated.
    store.add_round(_round(run_id, 1, 0.8, step_key="p", optimizer="MIPROv2", demos={"answer": 4}))

    rounds = store.list_rounds(run_id)
    assert [r.index for r in rounds] == [0, 1]
    baseline, first = rounds
    assert baseline.strategy == "" and baseline.step_key is None
    assert baseline.lm_usage == usage
    assert baseline.predictor_models == {"answer": "llama-3b"}
    assert baseline.instructions == {"answer": "Answer the question."}
    assert (first.score, first.eval_failed, first.eval_error) == (0.8, False, None)
    assert (first.strategy, first.step_key, first.optimizer, first.demos) == (
        "p",
        "p",
        "MIPROv2",
        {"answer": 4},
    )


def test_round_of_missing_run_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="no run with id 7"):
        store.add_round(_round(7, 0, 0.1))


def test_unserialisable_round_data_names_the_field(store: Store) -> None:
    run_id = store.create_run("r", CONFIG)
    with pytest.raises(StoreError, match="details of round 0 of run"):
        store.add_round(_round(run_id, 0, 0.1, details=RoundDetails(finetuned={"m": object()})))  # type: ignore[dict-item]
    assert store.list_rounds(run_id) == []


def test_mark_best_keeps_exactly_one(store: Store) -> None:
    run_id = store.create_run("r", CONFIG)
    other = store.create_run("other", CONFIG)
    for index, score in enumerate([0.4, 0.7, 0.6]):
        store.add_round(_round(run_id, index, score))
    store.add_round(_round(other, 0, 0.9, is_best=True))

    store.mark_best(run_id, 2)
    store.mark_best(run_id, 1)
    assert [r.is_best for r in store.list_rounds(run_id)] == [False, True, False]
    assert store.list_rounds(other)[0].is_best is True

    with pytest.raises(StoreError, match=f"run {run_id} has no round 5"):
        store.mark_best(run_id, 5)
    assert [r.is_best for r in store.list_rounds(run_id)] == [False, True, False]


# -- events and artifacts ------------------------------------------------------------------


def test_events_since_kinds_limit_latest(store: Store) -> None:
    run_id = store.create_run("r", CONFIG)
    other = store.create_run("other", CONFIG)
    ids = [
        store.add_event(run_id, "step_start", "step 1 (p)", {"step": 1}),
        store.add_event(run_id, "progress", "10/20", {"done": 10, "total": 20}),
        store.add_event(other, "progress", "other run"),
        store.add_event(run_id, "progress", "20/20", {"done": 20, "total": 20}),
        store.add_event(run_id, "step_end", "step 1 done"),
    ]
    events = store.list_events(run_id)
    assert [e.id for e in events] == [ids[0], ids[1], ids[3], ids[4]]
    assert events[1].data == {"done": 10, "total": 20}
    assert events[3].data == {}
    assert [e.message for e in store.list_events(run_id, since_id=ids[1])] == ["20/20", "step 1 done"]
    assert [e.id for e in store.list_events(run_id, kinds=["progress"])] == [ids[1], ids[3]]
    assert [e.id for e in store.list_events(run_id, limit=2)] == [ids[0], ids[1]]
    assert store.list_events(run_id, kinds=[]) == []

    latest = store.latest_event(run_id, "progress")
    assert latest is not None and latest.message == "20/20" and latest.kind == "progress"
    assert store.latest_event(run_id, "error") is None


def test_artifacts(store: Store, tmp_path: Path) -> None:
    run_id = store.create_run("r", CONFIG)
    program = store.add_artifact(run_id, "program", tmp_path / "program.json", {"round": 2})
    weights = store.add_artifact(run_id, "weights", "w/adapter", {"model": "llama-3b-ft-1"})
    assert [a.id for a in store.list_artifacts(run_id)] == [program, weights]
    (only,) = store.list_artifacts(run_id, kind="weights")
    assert (only.path, only.meta, only.run_id) == ("w/adapter", {"model": "llama-3b-ft-1"}, run_id)
    assert store.list_artifacts(run_id)[0].path == str(tmp_path / "program.json")
    assert store.list_artifacts(run_id, kind="export") == []


def test_delete_run_removes_its_rows_only(store: Store) -> None:
    run_id = store.create_run("gone", CONFIG)
    kept = store.create_run("kept", CONFIG)
    for target in (run_id, kept):
        store.add_round(_round(target, 0, 0.5))
        store.add_event(target, "log", "hello")
        store.add_artifact(target, "program", "p.json")
    store.delete_run(run_id)

    with pytest.raises(StoreError, match=f"no run with id {run_id}"):
        store.get_run(run_id)
    for table in ("rounds", "events", "artifacts"):
        assert store.db.execute(f"select count(*) from {table} where run_id = ?", [run_id]).fetchone()[0] == 0
    assert len(store.list_rounds(kept)) == 1
    assert len(store.list_events(kept)) == 1
    assert len(store.list_artifacts(kept)) == 1
    with pytest.raises(StoreError, match=f"no run with id {run_id}"):
        store.delete_run(run_id)


# -- recovery ------------------------------------------------------------------------------


def test_recover_interrupted_by_heartbeat_age(store: Store) -> None:
    dead_running = store.create_run("dead running", CONFIG)
    alive_running = store.create_run("alive running", CONFIG)
    dead_queued = store.create_run("dead queued", CONFIG)
    finished = store.create_run("finished", CONFIG)
    never = store.create_run("never beat", CONFIG)
    store.claim_run(dead_running, 111, 10.0)
    store.claim_run(alive_running, 222, 20.0)
    store.claim_run(finished, 111, 10.0)
    store.set_status(finished, RunStatus.FINISHED)
    now = time.time()
    store.heartbeat([dead_running, dead_queued], now=now - HEARTBEAT_TIMEOUT_S - 5)
    store.heartbeat([alive_running], now=now - 1)
    store.db.execute("update runs set heartbeat_at = null where id = ?", [never])
    store.add_round(_round(dead_running, 0, 0.3))
    store.add_round(_round(dead_running, 1, 0.6))
    store.mark_best(dead_running, 1)  # as the run's recorder does after each round

    marked = store.recover_interrupted(now=now)
    assert marked == [dead_running, dead_queued, never]
    running = store.get_run(dead_running)
    assert running.status is RunStatus.INTERRUPTED
    assert running.error is not None and "stopped during the run" in running.error and "heartbeat" in running.error
    assert f"resume {dead_running}" in running.error
    assert running.finished_at is not None
    # the best round so far becomes the run's result, so that it can be exported and compared
    assert (running.best_strategy, running.best_score, running.baseline_score) == ("p", 0.6, 0.3)
    assert [r.score for r in store.list_rounds(dead_running)] == [0.3, 0.6]
    assert "before the run started" in (store.get_run(dead_queued).error or "")
    assert "never sent a heartbeat" in (store.get_run(never).error or "")
    assert store.get_run(alive_running).status is RunStatus.RUNNING
    assert store.get_run(finished).status is RunStatus.FINISHED
    assert store.recover_interrupted(now=now) == []


def test_a_pid_from_another_machine_does_not_matter_only_the_heartbeat(store: Store) -> None:
    # a run owned by a process of another container: its pid means nothing here, its heartbeat is fresh
    foreign = store.create_run("foreign", CONFIG)
    store.claim_run(foreign, 999_999, None)
    store.db.execute("update runs set owner_host = 'other-container' where id = ?", [foreign])
    assert store.recover_interrupted() == []
    assert store.get_run(foreign).status is RunStatus.RUNNING
    assert store.get_run(foreign).owner_host == "other-container"


def test_cpu_lease_follows_the_queue_and_frees_when_its_holder_ends_or_goes_silent(store: Store) -> None:
    first = store.create_run("first", CONFIG, local_cpu=True)
    second = store.create_run("second", CONFIG, local_cpu=True)
    hosted = store.create_run("hosted", CONFIG)  # not in the CPU queue
    assert store.try_acquire_cpu(second) is False  # not its turn
    assert store.try_acquire_cpu(hosted) is False
    assert store.try_acquire_cpu(first) is True
    assert store.get_run(first).status is RunStatus.RUNNING and store.cpu_holder() == first
    assert store.get_run(second).queue_position == 1
    assert store.try_acquire_cpu(second) is False  # held
    store.finish_run(first, RunOutcome(RunStatus.FINISHED, best_strategy="", best_score=1.0, baseline_score=1.0,
                     test_baseline_score=None, test_best_score=None, flagged=False))
    assert store.try_acquire_cpu(second) is True  # the holder ended (even before releasing)
    store.release_cpu(second)
    assert store.cpu_holder() is None

    third = store.create_run("third", CONFIG, local_cpu=True)
    fourth = store.create_run("fourth", CONFIG, local_cpu=True)
    assert store.try_acquire_cpu(third) is True
    later = time.time() + HEARTBEAT_TIMEOUT_S + 1
    store.heartbeat([fourth], now=later)  # the holder's owner went silent; fourth's owner is alive
    assert store.try_acquire_cpu(fourth, now=later) is True
    assert store.cpu_holder() == fourth


def test_a_silent_queued_run_does_not_block_the_queue(store: Store) -> None:
    dead = store.create_run("dead", CONFIG, local_cpu=True)
    alive = store.create_run("alive", CONFIG, local_cpu=True)
    later = time.time() + HEARTBEAT_TIMEOUT_S + 1
    store.heartbeat([alive], now=later)
    assert store.try_acquire_cpu(alive, now=later) is True
    assert store.get_run(dead).status is RunStatus.QUEUED


def test_only_one_of_many_concurrent_takers_gets_the_cpu_lease(tmp_path: Path) -> None:
    path = tmp_path / "lease.db"
    store = Store(path)
    run_id = store.create_run("one", CONFIG, local_cpu=True)
    script = (
        "import sys; from core.store import Store\n"
        f"print(Store({str(path)!r}).try_acquire_cpu({run_id}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(4)]
    answers = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert sorted(answers) == ["False", "False", "False", "True"]


def test_cancel_requests_and_reopening_for_resume(store: Store) -> None:
    run_id = store.create_run("r", CONFIG)
    assert store.cancel_requested(run_id) is False
    assert store.request_cancel(run_id) is True
    assert store.cancel_requested(run_id) and store.get_run(run_id).cancel_requested
    store.add_round(_round(run_id, 0, 0.5))
    store.end_abruptly(run_id, RunStatus.CANCELLED, "cancelled")
    assert store.request_cancel(run_id) is False  # terminal: nothing to cancel
    with pytest.raises(StoreError, match="no run with id 999"):
        store.request_cancel(999)
    store.reopen_run(run_id, local_cpu=True)
    reopened = store.get_run(run_id)
    assert reopened.status is RunStatus.QUEUED and reopened.local_cpu and not reopened.cancel_requested
    assert reopened.error is None and reopened.finished_at is None
    assert [r.score for r in store.list_rounds(run_id)] == [0.5]
    with pytest.raises(StoreError, match="only failed, cancelled, interrupted runs can be resumed"):
        store.reopen_run(run_id, local_cpu=True)  # queued already: a second resume is refused


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_process_start_time_is_recorded_for_people() -> None:
    started = process_start_time(os.getpid())
    assert started is not None and started <= time.time()
    assert abs(started - time.time()) < 24 * 3600 * 365


# -- secrets -------------------------------------------------------------------------------


def test_secrets_are_refused_with_their_path(store: Store) -> None:
    config = _with_lm_options(token="abc-secret", nested={"password": "hunter2"})
    with pytest.raises(StoreError, match=r"config\.lms\.large\.options\.token, "
                                         r"config\.lms\.large\.options\.nested\.password") as info:
        store.create_run("leaky", config)
    assert "abc-secret" not in str(info.value) and "hunter2" not in str(info.value)
    assert store.list_runs() == []


def test_typed_api_keys_are_never_stored(store: Store) -> None:
    doc = config_to_dict(CONFIG)
    doc["lms"]["hosted"] = {"kind": "litellm", "model": "openai/gpt-4o-mini"}
    config = parse_config(doc).with_api_keys({"hosted": "sk-typed-0123456789", "nope": "x"})
    assert config.typed_api_keys() == {"hosted": "sk-typed-0123456789"}
    run_id = store.create_run("typed key", config)
    row = store.db.execute("select config from runs where id = ?", [run_id]).fetchone()[0]
    assert "sk-typed" not in row and "hosted" in row
    assert store.get_run(run_id).config.typed_api_keys() == {}


def test_empty_or_non_string_secret_fields_are_allowed(store: Store) -> None:
    config = _with_lm_options(api_key="", token=None, tokenizer="gpt2", max_tokens=256)
    run_id = store.create_run("clean", config)
    assert store.get_run(run_id).config == config


def test_a_config_that_no_longer_validates_is_reported_not_raised(store: Store) -> None:
    run_id = store.create_run("old", CONFIG)
    with store._write() as db:
        db.execute("update runs set config = ? where id = ?", ['{"version": 1, "strategy": "p"}', run_id])
    run = store.get_run(run_id)  # listing and reading never fail on an old document
    assert run.config is None and "program" in run.config_problem and run.strategy == ""
    with pytest.raises(StoreError, match=f"run {run_id}: its saved configuration cannot be read: .*program"):
        run.require_config()
    assert [r.id for r in store.list_runs()] == [run_id]


def test_only_typed_configs_are_stored(store: Store) -> None:
    with pytest.raises(StoreError, match="must be a RunConfig, got dict"):
        store.create_run("raw", {"strategy": "p"})


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("api_key", True),
        ("key", True),
        ("OPENAI_API_KEY", True),
        ("apiKey", True),
        ("hf_token", True),
        ("client_secret", True),
        ("password", True),
        ("openai_key", True),
        ("max_tokens", False),
        ("tokenizer", False),
        ("step_key", False),
        ("api_key_env", False),
        ("keywords", False),
    ],
)
def test_secret_names(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_find_secrets_walks_nested_values() -> None:
    assert find_secrets({"a": [{"b": {"password": "x"}}], "c": "token"}) == ["config.a[0].b.password"]
    assert find_secrets({"a": {"password": " "}}) == []


def test_a_run_that_ends_abruptly_keeps_the_recorded_best_round(store: Store) -> None:
    """The best of an interrupted run is the round the recorder marked, never a second computation."""
    run_id = store.create_run("r", CONFIG, RunStatus.RUNNING)
    for index, score in ((0, 30.0), (1, 60.0), (2, 60.0)):
        store.add_round(_round(run_id, index, score))
    store.mark_best(run_id, 2)  # whatever rule the recorder applied, the store keeps its answer
    store.end_abruptly(run_id, RunStatus.INTERRUPTED, "the app stopped")
    run = store.get_run(run_id)
    assert (run.best_strategy, run.best_score, run.baseline_score) == (_round(run_id, 2, 60.0).strategy, 60.0, 30.0)
    assert [r.is_best for r in store.list_rounds(run_id)] == [False, False, True]
