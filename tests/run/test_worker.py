"""A run's worker process may die or hang: only that run fails, the manager keeps working.

The scripted LM's ``crash_at_round`` option makes the worker kill itself with a real signal when a
round starts, as a native crash (SIGSEGV in llama.cpp) or the OOM killer (SIGKILL) would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from core.bundles.export import export_run, load_bundle
from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.paths import sample_path
from core.run import RunManager
from core.run.supervisor import describe_exit
from core.store import Store
from core.store.records import RunStatus


def _local_config(tag: str, **options):
    doc = scripted_config_dict("classifier", tag=tag, **options)
    for spec in doc["lms"].values():
        spec["options"]["local_cpu"] = True  # behave like the embedded CPU models (queued one at a time)
    return parse_config(doc)


@pytest.fixture
def manager(tmp_path: Path) -> RunManager:
    return RunManager(Store(tmp_path / "runs.db"), cancel_grace_s=1.0)


@pytest.mark.parametrize("name", ["SIGKILL", "SIGSEGV"])
def test_a_worker_killed_by_a_signal_fails_only_its_run_and_the_queue_goes_on(
        manager: RunManager, tmp_path: Path, name: str) -> None:
    crashing = manager.start(_local_config(f"crash-{name}", crash_at_round=2, crash_signal=name))
    queued = manager.start(_local_config(f"after-{name}"))
    assert manager.store.get_run(queued).status is RunStatus.QUEUED
    assert manager.wait(crashing, timeout=90)
    run = manager.store.get_run(crashing)
    assert run.status is RunStatus.FAILED
    assert f"died with {name}" in run.error and f"resume {crashing}" in run.error
    if name == "SIGKILL":
        assert "out-of-memory" in run.error
    else:
        assert "python -m core doctor" in run.error
    rounds = manager.store.list_rounds(crashing)
    assert [r.strategy for r in rounds] == ["", "p"]  # round 2 ('p -> w') was starting
    assert run.best_score == max(r.score for r in rounds) and run.baseline_score == rounds[0].score
    # the supervising process (this one) is fine, and the next queued run takes the CPU and finishes
    assert manager.wait(queued, timeout=90)
    after = manager.store.get_run(queued)
    assert after.status is RunStatus.FINISHED, after.error
    assert after.started_at >= run.finished_at
    assert manager.store.cpu_holder() is None


def test_export_of_a_run_whose_worker_died_holds_the_best_round_so_far(manager: RunManager, tmp_path: Path) -> None:
    run_id = manager.start(_local_config("crash-export", crash_at_round=3))
    assert manager.wait(run_id, timeout=90)
    store = manager.store
    run = store.get_run(run_id)
    assert run.status is RunStatus.FAILED
    rounds = store.list_rounds(run_id)
    assert [r.strategy for r in rounds] == ["", "p", "p -> w"]
    best = max(range(len(rounds)), key=lambda i: (rounds[i].score, -i))
    bundle = export_run(store, run_id, tmp_path / "crashed.zip")
    manifest = json.loads(zipfile.ZipFile(bundle).read("manifest.json"))
    assert manifest["round"] == best and manifest["status"] == "failed"
    assert manifest["best_strategy"] == rounds[best].strategy
    program = load_bundle(bundle)
    models = {p.lm.model for _, p in program.named_predictors()}
    assert models == {rounds[best].predictor_models["classify"]}


def test_cancel_escalates_to_a_kill_when_the_worker_does_not_stop(manager: RunManager) -> None:
    run_id = manager.start(_local_config("hang", crash_at_round=1, crash_signal="hang"))
    store = manager.store
    deadline = time.monotonic() + 60
    while not any(e.data.get("index") == 1 for e in store.list_events(run_id, kinds=["step_start"])):
        assert time.monotonic() < deadline, "round 1 never started"
        time.sleep(0.05)
    asked = time.monotonic()
    assert manager.cancel(run_id)
    assert manager.wait(run_id, timeout=30)
    took = time.monotonic() - asked
    assert 1.0 <= took < 10.0, took  # the grace period (1 s here), then the kill
    run = store.get_run(run_id)
    assert run.status is RunStatus.CANCELLED
    assert "did not stop within 1 s" in run.error and "killed" in run.error
    assert run.best_strategy == "" and run.best_score == store.list_rounds(run_id)[0].score
    assert {a.kind for a in store.list_artifacts(run_id)} >= {"best_program", "baseline_program"}


def test_cancel_is_cooperative_first(manager: RunManager) -> None:
    run_id = manager.start(_local_config("coop", delay=0.01))
    store = manager.store
    deadline = time.monotonic() + 60
    while not store.list_events(run_id, kinds=["step_start"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    asked = time.monotonic()
    assert manager.cancel(run_id)
    assert manager.wait(run_id, timeout=30)
    assert time.monotonic() - asked < 2.0
    run = store.get_run(run_id)
    assert run.status is RunStatus.CANCELLED and "killed" not in run.error


def test_messages_name_the_signal_and_the_fix() -> None:
    assert "SIGILL (illegal instruction)" in describe_exit(-signal.SIGILL, 7)
    assert "rebuild llama-cpp-python portable (`make install`)" in describe_exit(-signal.SIGILL, 7)
    assert "out-of-memory killer" in describe_exit(-signal.SIGKILL, 7)
    assert "resume 7" in describe_exit(-signal.SIGSEGV, 7)
    assert "exited with code 3" in describe_exit(3, 7)


def test_the_memory_benchmark_harness_reports_a_flat_supervisor(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "bench/run_memory.py", "--quick", "--lm", "scripted", "--runs", "2"],
                         cwd=root, env={**os.environ, "STUDIO_HOME": str(tmp_path / "bench")}, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["statuses"] == ["finished", "finished"] and result["within_bound"]
    assert len(result["supervisor_rss_mb_after_each"]) == 2 and result["growth_mb"] is not None
    assert all(p and p > 0 for p in result["worker_peak_rss_mb"])
    assert all(s is not None and s < 30 for s in result["worker_startup_s"])


def test_the_app_keeps_answering_when_the_worker_of_its_run_dies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start from the Run page a run whose worker dies with SIGSEGV: the page still renders, says why,
    and the next run started from it finishes."""
    from streamlit.testing.v1 import AppTest

    from core.document import new_document, revise, use_scripted
    from core.paths import db_path
    from core.run import get_manager

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    doc = use_scripted(new_document(), True)
    crash = {"crash_at_round": 1, "crash_signal": "SIGSEGV", "local_cpu": True}
    doc = revise(doc, lms={name: revise(spec, options={**spec.options, **crash}) for name, spec in doc.lms.items()})
    at = AppTest.from_file(str(root / "pages" / "run.py"), default_timeout=60)
    at.session_state["config_doc"] = doc
    at.session_state["doc_rev"] = 0
    at.run()
    next(b for b in at.button if b.label == "Start run").click().run()
    assert not at.exception, at.exception
    manager = get_manager(db_path())
    crashed = manager.store.list_runs()[0].id
    assert manager.wait(crashed, timeout=90)
    at.run()  # the app answers
    assert not at.exception, at.exception
    assert any("died with SIGSEGV" in e.value for e in at.error)
    at.session_state["config_doc"] = use_scripted(new_document(), True)
    at.run()
    next(b for b in at.button if b.label == "Start run").click().run()
    after = manager.store.list_runs()[0].id
    assert after != crashed and manager.wait(after, timeout=90)
    assert manager.store.get_run(after).status is RunStatus.FINISHED


class _ChatServer:
    """An OpenAI-compatible chat endpoint on loopback that answers every label with 'positive' and
    records the path and Authorization header of every request."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.auth: list[str] = []
        self.paths: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                server.paths.append(self.path)
                server.auth.append(self.headers.get("Authorization", ""))
                self._send({"object": "list", "data": [{"id": "tiny", "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.paths.append(self.path)
                server.auth.append(self.headers.get("Authorization", ""))
                text = "[[ ## label ## ]]\npositive\n\n[[ ## completed ## ]]"
                self._send({"id": "x", "object": "chat.completion", "created": 0, "model": "tiny",
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": text}}],
                            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _hosted_doc(server: _ChatServer, key: str, tag: str) -> dict:
    """The scripted classifier with every predictor on ``server``'s model, one short prompt step."""
    doc = scripted_config_dict("classifier", tag=tag)
    doc["lms"]["large"] = {"kind": "litellm", "model": "openai/tiny", "api_base": server.url, "api_key": key}
    doc["predictors"] = {name: {"lm": "large", "role": "large"} for name in doc["predictors"]}
    doc["strategy"] = "p"
    doc["data"]["split"] = {"train": 4, "val": 2, "test": 2, "seed": 0}
    doc["optimizers"] = {"p": {"type": "random_search", "settings": {
        "max_bootstrapped_demos": 1, "max_labeled_demos": 1, "num_candidate_programs": 1}}}
    return doc


def test_a_run_checks_its_endpoint_once_and_reads_its_data_once(manager: RunManager, tmp_path: Path) -> None:
    """Start checks the endpoint (the key leaves the machine once) and reads the data; the worker
    uses what Start found: a data file gone after Start does not stop the run."""
    server = _ChatServer()
    try:
        doc = _hosted_doc(server, "sk-typed-once-1234", "once")
        sample = sample_path(doc["data"]["source"]["name"])
        data = tmp_path / sample.name
        data.write_bytes(sample.read_bytes())
        doc["data"]["source"] = {"kind": "file", "path": str(data)}
        run_id = manager.start(parse_config(doc))
        data.unlink()  # the worker, a fresh interpreter, is still starting
        assert manager.wait(run_id, timeout=120)
    finally:
        server.close()
    run = manager.store.get_run(run_id)
    assert run.status is RunStatus.FINISHED, run.error
    assert server.paths.count("/v1/models") == 1, server.paths
    assert len(server.paths) > 5  # the worker did call the model


def test_an_api_key_typed_in_the_app_reaches_the_worker_and_nothing_else(manager: RunManager, tmp_path: Path) -> None:
    key = "sk-typed-CANARY-4242"
    server = _ChatServer()
    try:
        run_id = manager.start(parse_config(_hosted_doc(server, key, "typed-key")))
        assert manager.wait(run_id, timeout=120)
    finally:
        server.close()
    run = manager.store.get_run(run_id)
    assert run.status is RunStatus.FINISHED, run.error
    assert len(server.auth) > 5 and set(server.auth) == {f"Bearer {key}"}  # the worker's calls carried it
    assert run.config.typed_api_keys() == {}  # the stored config came back without the typed key
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("runs.db*"))
    assert key.encode() not in stored
    assert not [p for p in Path(os.environ["STUDIO_HOME"]).rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
