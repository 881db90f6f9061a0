"""A real end-to-end test of hosted LMs without internet: llama-cpp-python's OpenAI-compatible server.

The large role is served over HTTP by ``python -m llama_cpp.server`` on 127.0.0.1 (an ``openai/...``
LM with that API base); the small role is an embedded model fine-tuned locally. Against the same
server: the messages for a bad key, an unreachable server and a wrong model name; and a canary key
that must never appear in the database file, the logs, a downloaded configuration or an export.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from core.bundles.export import export_run
from core.config.defaults import default_config_dict, with_smoke_budget
from core.config.schema import config_to_json, parse_config
from core.errors import LMError
from core.lms.catalog import gguf_path
from core.lms.hosted import check_endpoint
from core.plan.prepare import prepare_run
from core.run import RunManager
from core.store import Store
from core.store.records import RunStatus

pytestmark = pytest.mark.slow
CANARY = "sk-CANARY-7f3a9c-never-store-me"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path("smollm2-135m")),
             "--model_alias", "smol", "--host", "127.0.0.1", "--port", str(port), "--api_key", CANARY,
             "--n_ctx", "2048", "--n_threads", "2", "--verbose", "False"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {CANARY}"}, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError(f"llama_cpp.server did not start: {log.read_text()[-2000:]}")
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def hosted_config(base: str, *, key: str = CANARY, model: str = "openai/smol") -> dict:
    doc = default_config_dict("support_triage")
    doc["name"] = "hosted large, embedded small"
    doc["lms"] = {
        "large": {"kind": "litellm", "model": model, "api_base": base, "api_key": key, "grammar": "gbnf",
                  "num_threads": 1, "max_tokens": 128},
        "small": {"kind": "embedded", "model": "smollm2-135m"},
    }
    return with_smoke_budget(doc, train=5, seed=3)


def test_bad_key_is_named(server: str) -> None:
    with pytest.raises(LMError, match="API key was rejected by the server"):
        check_endpoint("openai/smol", server, "sk-wrong")
    with pytest.raises(LMError, match="API key was rejected by the server"):
        prepare_run(parse_config(hosted_config(server, key="sk-wrong")))


def test_unreachable_server_is_named() -> None:
    port = _free_port()
    with pytest.raises(LMError, match=f"cannot reach the server at http://127.0.0.1:{port}/v1"):
        prepare_run(parse_config(hosted_config(f"http://127.0.0.1:{port}/v1")))


def test_wrong_model_name_is_named(server: str) -> None:
    with pytest.raises(LMError, match=r"unknown model at .*; the server serves \['smol'\]"):
        prepare_run(parse_config(hosted_config(server, model="openai/gpt-9")))


def test_large_role_over_http_small_role_finetuned_locally_and_no_key_anywhere(server: str, tmp_path: Path) -> None:
    log_file = tmp_path / "run.log"
    handler = logging.FileHandler(log_file)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        config = parse_config(hosted_config(server))
        db = tmp_path / "runs.db"
        manager = RunManager(Store(db))
        run_id = manager.start(config)
        assert manager.wait(run_id, timeout=1800)
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()
    store = manager.store
    run = store.get_run(run_id)
    assert run.status is RunStatus.FINISHED, run.error
    rounds = store.list_rounds(run_id)
    assert [r.strategy for r in rounds] == ["", "p", "p -> w"]
    assert all(r.predictor_models["extract"] == "openai/smol" for r in rounds)
    assert rounds[2].predictor_models["classify"].startswith("embedded/smollm2-135m:ft-")
    assert rounds[0].lm_usage["openai/smol"]["calls"] == 3
    assert rounds[0].lm_usage["openai/smol"]["input_tokens"] > 0  # the server reports usage
    assert not store.list_events(run_id, kinds=["finetuned"])[0].data["base"].startswith("openai/")

    bundle = export_run(store, run_id, tmp_path / "bundle.zip")
    store.close()
    places = {"database": b"".join(p.read_bytes() for p in tmp_path.glob("runs.db*")),
              "log": log_file.read_bytes(),
              "config download": config_to_json(config).encode()}
    with zipfile.ZipFile(bundle) as zf:
        places["export"] = b"".join(zf.read(n) for n in zf.namelist())
    for place, data in places.items():
        assert CANARY.encode() not in data, f"the API key leaked into the {place}"
    assert log_file.stat().st_size > 0 and places["export"]
    assert os.environ.get("OPENAI_API_KEY") != CANARY
