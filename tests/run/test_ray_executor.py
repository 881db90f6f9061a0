"""Sweeps through Ray (``core.run.ray_executor``) on a local Ray instance of 2 CPUs, on the scripted LM.

Each child run executes as a Ray task; its records reach the one store of the driver (the test's) through
the store proxy, and no Ray worker ever opens a run store: the instance's ``worker_process_setup_hook``
(``tests.ray_helpers.forbid_store``) makes ``Store()`` raise in every Ray worker and leaves a note of the
attempt. A killed Ray worker fails its run and the sweep finishes the others; hosted runs go in parallel
up to ``max_parallel``; embedded ones (the scripted LM flagged ``local_cpu``) take the node one at a time.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.run import RunManager
from core.run.sweep import SweepManager
from core.store import Store
from core.store.records import RunStatus
from tests.ray_helpers import ATTEMPTS_ENV, StoreForbidden, store_attempts

ray = pytest.importorskip("ray", reason="the Ray extra (requirements-ray.txt; `make test` installs it)")

from core.run.ray_executor import CPU_RESOURCE  # noqa: E402 - only with Ray installed

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.time_limit(420)


@pytest.fixture(scope="module")
def attempts(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A local Ray instance for this module (2 CPUs, one studio_cpu_lease); the folder of store attempts."""
    folder = tmp_path_factory.mktemp("store-attempts")
    ray.init(num_cpus=2, include_dashboard=False, resources={CPU_RESOURCE: 1}, logging_level=logging.WARNING,
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), ATTEMPTS_ENV: str(folder)},
                                               "worker_process_setup_hook": "tests.ray_helpers.forbid_store"})
    yield folder
    ray.shutdown()


def _sweeps(path: Path) -> SweepManager:
    return SweepManager(RunManager(Store(path)))


def _config(strategies: list[str], seeds: list[int], tag: str, executor: dict[str, Any], **options: Any):
    doc = scripted_config_dict("classifier", tag=tag, **options)
    doc["sweep"] = {"strategies": strategies, "seeds": seeds}
    doc["executor"] = executor
    return parse_config(doc)


def _finished(sweeps: SweepManager, sweep_id: int, timeout: float = 240) -> Any:
    assert sweeps.wait(sweep_id, timeout=timeout)
    return sweeps.store.get_sweep(sweep_id)


def _results(summary: Any) -> Any:
    """What a sweep found, without its ids and times."""
    return (summary.status, summary.best, summary.child_runs, summary.standalone_runs,
            [(r.strategy, r.mean, r.sd, r.calls,
              [(s.seed, s.status, s.round_index, s.round_strategy, s.val_score, s.test_score, s.calls)
               for s in r.seeds]) for r in summary.results],
            [(c.a, c.b, c.pairs, c.wins, c.losses, c.ties, c.mean_diff, c.ci_low, c.ci_high, c.p_value)
             for c in summary.comparisons])


def _records(store: Store, run_id: int) -> Any:
    """A run's records, without ids, times and paths."""
    db = store.db
    return ([(r.index, r.strategy, r.score, r.is_best) for r in store.list_rounds(run_id)],
            sorted(tuple(row) for row in db.execute(
                "select split, round_index, label, program, examples, score from evaluations where run_id = ?",
                [run_id])),
            db.execute("select count(*) from example_results where run_id = ?", [run_id]).fetchone()[0],
            db.execute("select count(*) from training_rows where run_id = ?", [run_id]).fetchone()[0],
            sorted(a.kind for a in store.list_artifacts(run_id)), store.kept_rounds(run_id))


def test_a_sweep_through_ray_records_everything_in_the_driver_store_and_matches_the_local_executor(
        attempts: Path, tmp_path: Path) -> None:
    strategies, seeds = ["p", "w"], [0, 1]
    through_ray = _sweeps(tmp_path / "ray.db")
    sweep_id = through_ray.start(_config(strategies, seeds, "ray-e2e", {"kind": "ray", "max_parallel": 2}))
    sweep = _finished(through_ray, sweep_id)
    assert sweep.status is RunStatus.FINISHED, sweep.error
    local = _sweeps(tmp_path / "local.db")
    local_sweep = _finished(local, local.start(_config(strategies, seeds, "ray-e2e", {"kind": "local"})))
    assert local_sweep.status is RunStatus.FINISHED, local_sweep.error
    assert _results(sweep.summary) == _results(local_sweep.summary)
    store = through_ray.store
    for child, local_child in zip(sweep.children, local_sweep.children, strict=True):
        run = store.get_run(child.run_id)
        assert run.status is RunStatus.FINISHED and (child.seed, child.strategy) == (local_child.seed, local_child.strategy)
        assert _records(store, child.run_id) == _records(local.store, local_child.run_id)
        events = [e.message for e in store.list_events(child.run_id)]
        assert any(m.startswith("queued on a local Ray instance") for m in events)
        started = next(e for e in store.list_events(child.run_id) if e.message.startswith("running as a Ray task"))
        assert started.data["worker_pid"] != os.getpid()
        assert "run finished" in events  # the worker's own last event, written through the proxy
        for artifact in store.list_artifacts(child.run_id):  # the bytes are in the driver's run folder
            path = Path(artifact.path)
            assert path.is_relative_to(Path(os.environ["STUDIO_HOME"]).resolve() / "runs" / str(child.run_id))
            assert path.exists(), artifact
        assert (Path(os.environ["STUDIO_HOME"]) / "runs" / str(child.run_id) / "best.json").is_file()
    assert store_attempts(attempts) == []  # no Ray worker opened a store


def test_a_ray_worker_cannot_open_a_run_store(attempts: Path, tmp_path: Path) -> None:
    """The guard of these tests holds: Store() raises in a Ray worker (the proxy is the only way in)."""

    @ray.remote
    def open_store(path: str) -> str:
        try:
            Store(path)
        except StoreForbidden as e:
            return str(e)
        return "opened"

    probe = tmp_path / "probe.db"
    assert "tried to open the run store" in ray.get(open_store.remote(str(probe)))
    assert str(probe) in store_attempts(attempts) and not probe.exists()
    for note in attempts.glob("*.txt"):  # the other tests check that no attempt was made
        note.unlink()


def test_a_killed_ray_worker_fails_its_run_and_the_sweep_finishes_the_rest(attempts: Path, tmp_path: Path) -> None:
    sweeps = _sweeps(tmp_path / "kill.db")
    store = sweeps.store
    marker = tmp_path / "hung"  # the first run to reach round 1 blocks there (once); the test kills its worker
    config = _config(["p", "w"], [0], "ray-kill", {"kind": "ray", "max_parallel": 1}, crash_at_round=1,
                     crash_signal="hang", crash_marker=str(marker))
    sweep_id = sweeps.start(config)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline, "no run reached round 1"
        time.sleep(0.1)
    first = store.sweep_children(sweep_id)[0].run_id
    pid = store.db.execute("select worker_pid from runs where id = ?", [first]).fetchone()[0]
    assert pid is not None and pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    sweep = _finished(sweeps, sweep_id)
    killed, other = (store.get_run(c.run_id) for c in sweep.children)
    assert killed.status is RunStatus.FAILED
    assert killed.error.startswith("the Ray worker process executing it died (killed, or crashed in native code); "
                                   "Ray says WorkerCrashedError: ")
    assert [r.index for r in store.list_rounds(killed.id)] == [0]  # what it finished is kept
    assert other.status is RunStatus.FINISHED
    assert sweep.status is RunStatus.FAILED and sweep.error.startswith("1 of 2 runs did not finish: 'p' with seed 0")
    assert [s.status for r in sweep.summary.results for s in r.seeds] == ["failed", "ok"]
    sweeps.resume(sweep_id)  # the killed run continues from its round 0, downloaded from the driver's run folder
    sweep = _finished(sweeps, sweep_id)
    assert sweep.status is RunStatus.FINISHED, sweep.error
    assert [c.run_id for c in sweep.children] == [killed.id, other.id]
    assert [r.index for r in store.list_rounds(killed.id)] == [0, 1]
    assert any(e.message.startswith("resuming after round 0") for e in store.list_events(killed.id))
    # the killed task could not remove its temporary studio home; the next task on the node did
    assert not list(Path(tempfile.gettempdir()).glob(f"studio-ray-run{killed.id}-pid{pid}-*"))
    assert store_attempts(attempts) == []


def test_a_cancel_reaches_the_ray_task_which_stops_keeping_its_rounds(attempts: Path, tmp_path: Path) -> None:
    sweeps = _sweeps(tmp_path / "cancel.db")
    store = sweeps.store
    sweep_id = sweeps.start(_config(["p", "w"], [0], "ray-cancel", {"kind": "ray"}, delay=0.05))
    deadline = time.monotonic() + 120
    while not ((run_id := store.sweep_children(sweep_id)[0].run_id) and store.list_rounds(run_id)):
        assert time.monotonic() < deadline, "the first run never recorded its baseline"
        time.sleep(0.1)
    assert sweeps.cancel(sweep_id)
    sweep = _finished(sweeps, sweep_id, timeout=60)
    assert sweep.status is RunStatus.CANCELLED
    run = store.get_run(run_id)
    # the task saw the request through its store proxy and stopped by itself (not force-cancelled)
    assert (run.status, run.error) == (RunStatus.CANCELLED, "cancelled by the user; the best program so far was kept")
    assert store.list_rounds(run_id)[0].index == 0 and sweep.children[1].run_id is None
    assert store_attempts(attempts) == []


def test_a_cancel_removes_a_run_still_queued_on_ray(attempts: Path, tmp_path: Path) -> None:
    sweeps = _sweeps(tmp_path / "queued.db")
    store = sweeps.store
    config = _config(["p"], [0, 1], "ray-queued", {"kind": "ray", "max_parallel": 2}, delay=0.05, local_cpu=True)
    sweep_id = sweeps.start(config)
    deadline = time.monotonic() + 120
    while not (store.sweep_children(sweep_id)[1].run_id and any(
            e.message.startswith("running as a Ray task") for c in store.sweep_children(sweep_id) if c.run_id
            for e in store.list_events(c.run_id))):
        assert time.monotonic() < deadline, "no run started on Ray"
        time.sleep(0.1)
    running, queued = sorted((c.run_id for c in store.sweep_children(sweep_id)),
                             key=lambda r: store.get_run(r).status is RunStatus.QUEUED)
    assert store.get_run(queued).status is RunStatus.QUEUED  # waiting for the node's one studio_cpu_lease
    assert sweeps.cancel(sweep_id)
    sweep = _finished(sweeps, sweep_id, timeout=60)
    assert sweep.status is RunStatus.CANCELLED
    assert store.get_run(queued).error == "cancelled while queued on Ray" and not store.list_rounds(queued)
    assert store.get_run(running).status is RunStatus.CANCELLED
    assert store_attempts(attempts) == []


def _overlap(store: Store, run_ids: list[int]) -> int:
    """The most runs that executed at once (from each run's start as a Ray task to its end)."""
    edges = []
    for run_id in run_ids:
        started = next(e.time for e in store.list_events(run_id) if e.message.startswith("running as a Ray task"))
        edges += [(datetime.fromisoformat(started), 1), (datetime.fromisoformat(store.get_run(run_id).finished_at), -1)]
    most = now = 0
    for _, step in sorted(edges):
        now += step
        most = max(most, now)
    return most


@pytest.mark.parametrize(("local_cpu", "expected"), [(False, 2), (True, 1)], ids=["hosted", "embedded"])
def test_hosted_runs_go_in_parallel_up_to_max_parallel_and_embedded_ones_one_at_a_time(
        attempts: Path, tmp_path: Path, local_cpu: bool, expected: int) -> None:
    sweeps = _sweeps(tmp_path / "parallel.db")
    options = {"local_cpu": True} if local_cpu else {}
    config = _config(["p"], [0, 1, 2], f"ray-parallel-{local_cpu}", {"kind": "ray", "max_parallel": 2},
                     delay=0.02, **options)
    sweep = _finished(sweeps, sweeps.start(config))
    assert sweep.status is RunStatus.FINISHED, sweep.error
    run_ids = [c.run_id for c in sweep.children]
    assert all(sweeps.store.get_run(r).local_cpu is False for r in run_ids)  # never in this machine's CPU queue
    queued = [next(e for e in sweeps.store.list_events(r) if e.message.startswith("queued on")) for r in run_ids]
    assert all(e.data["local_cpu"] is local_cpu for e in queued)
    assert _overlap(sweeps.store, run_ids) == expected
    assert store_attempts(attempts) == []


def test_an_embedded_run_on_a_cluster_without_the_cpu_resource_fails_at_once_saying_so(
        attempts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})  # a cluster whose nodes declare none
    sweeps = _sweeps(tmp_path / "no-lease.db")
    config = _config(["p"], [0], "ray-no-lease", {"kind": "ray"}, local_cpu=True)
    sweep = _finished(sweeps, sweeps.start(config), timeout=60)
    run = sweeps.store.get_run(sweep.children[0].run_id)
    assert run.status is RunStatus.FAILED
    assert run.error.startswith(f"the run could not be started: ConfigError: the Ray cluster declares no '{CPU_RESOURCE}'")
    assert sweep.status is RunStatus.FAILED
