"""The Studio's side of a Ray task's store calls (``core.run.ray_service``), without Ray: only the listed
calls exist, only the executor's runs may write, and files stay inside the run's own folder. And a Ray
sweep in an install without the Ray extra is refused before anything is recorded."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from core.config.defaults import scripted_config, scripted_config_dict
from core.config.schema import parse_config
from core.errors import ConfigError, StoreError
from core.run import RunManager
from core.run.ray_service import StoreService
from core.run.sweep import SweepManager
from core.store import Store
from core.store.records import RunStatus


@pytest.fixture
def service(tmp_path: Path) -> StoreService:
    store = Store(tmp_path / "home" / "studio.db")
    return StoreService(store, tmp_path / "home")


def _run(service: StoreService) -> int:
    run_id = service.store.create_run("r", scripted_config("classifier"), RunStatus.QUEUED)
    service.admit(run_id)
    return run_id


def test_calls_apply_to_the_store_and_errors_come_back_as_values(service: StoreService) -> None:
    run_id = _run(service)
    ok, event_id = service.apply("add_event", (run_id, "status", "hello", {"n": 1}))
    assert ok and service.store.list_events(run_id)[-1].id == event_id
    assert service.apply("cancel_requested", (run_id,)) == (True, False)
    ok, error = service.apply("delete_run", (run_id,))
    assert not ok and isinstance(error, StoreError) and "'delete_run'; allowed: " in str(error)
    ok, error = service.apply("run_status", (run_id + 1,))
    assert not ok and str(error) == f"no run with id {run_id + 1}"


def test_only_the_executors_runs_may_write(service: StoreService) -> None:
    run_id = _run(service)
    other = service.store.create_run("other", scripted_config("classifier"), RunStatus.QUEUED)
    ok, error = service.apply("add_event", (other, "status", "intruder", None))
    assert not ok and "is not executed by this sweep's Ray executor" in str(error)
    assert service.apply("run_status", (other,)) == (True, RunStatus.QUEUED)  # reads are allowed
    service.dismiss(run_id)
    assert not service.apply("set_worker_pid", (run_id, 1))[0]


def test_files_arrive_in_pieces_inside_the_run_folder_and_artifacts_travel_relative(service: StoreService) -> None:
    run_id = _run(service)
    rel = f"runs/{run_id}/rounds/0.json"
    assert service.apply("put_file", (run_id, rel, 0, b"ab", False)) == (True, None)
    assert not (service.home / rel).exists()  # not before its last piece
    ok, error = service.apply("put_file", (run_id, rel, 5, b"x", True))
    assert not ok and "does not follow the bytes received" in str(error)
    assert service.apply("put_file", (run_id, rel, 2, b"cd", True)) == (True, None)
    assert (service.home / rel).read_bytes() == b"abcd"
    ok, artifact_id = service.apply("add_artifact", (run_id, "round_program", rel, {"index": 0}))
    assert ok and service.store.list_artifacts(run_id)[0].path == str(service.home / rel)
    assert [a.path for a in service.apply("list_artifacts", (run_id, None))[1]] == [rel]
    assert service.apply("list_files", (run_id,)) == (True, [(rel, 4)])
    assert service.apply("get_file", (run_id, rel, 1, 2)) == (True, b"bc")
    for outside in (f"runs/{run_id + 1}/x.json", f"runs/{run_id}/../../studio.db", "/etc/passwd", "studio.db"):
        for method, args in (("put_file", (run_id, outside, 0, b"x", True)), ("get_file", (run_id, outside, 0, 9)),
                             ("add_artifact", (run_id, "weights", outside, {}))):
            ok, error = service.apply(method, args)
            if method == "add_artifact" and outside.startswith("/"):  # a path on the Ray node: recorded as it is
                assert ok
                continue
            assert not ok and "outside its run folder" in str(error), (method, outside)


def test_a_ray_sweep_without_the_ray_extra_is_refused_before_anything_is_recorded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as in a default install
    sweeps = SweepManager(RunManager(Store(tmp_path / "runs.db")))
    doc = scripted_config_dict("classifier")
    doc["sweep"], doc["executor"] = {"strategies": ["p"], "seeds": [0]}, {"kind": "ray"}
    with pytest.raises(ConfigError, match=r"executor 'ray' needs the Ray package, which this install lacks; "
                                          r"install it with `make install-ray`"):
        sweeps.start(parse_config(doc))
    assert sweeps.store.list_sweeps() == [] and sweeps.store.list_runs() == []
