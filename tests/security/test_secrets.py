"""Secrets stay out of text: canary keys in a provider error and in an ``api_base`` reach neither the
database (WAL included), nor the logs, nor an export, nor a config download."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import pytest

from core.bundles.export import export_run
from core.config.defaults import scripted_config_dict
from core.config.schema import config_to_json, parse_config
from core.errors import LMError
from core.lms.hosted import check_endpoint, explain_lm_error
from core.store.records import Round, RunStatus
from core.store.secrets import REDACTED, RedactingFilter, install_log_redaction, redact, redact_value
from tests.security_helpers import finished_run

ENV_KEY = "canary-env-value-5f4e3d2c1b0a"  # no well-known prefix: caught because it is the configured key's value
SK_KEY = "sk-proj-canaryPREFIX0123456789"  # caught by its shape
URL_PASSWORD = "canaryUrlPassword42"
CANARIES = (ENV_KEY, SK_KEY, URL_PASSWORD)


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIO_CANARY_KEY", ENV_KEY)


def hosted_doc() -> dict:
    doc = scripted_config_dict("analyze_classify", tag="secrets")
    doc["lms"]["hosted"] = {"kind": "litellm", "model": "openai/smol", "api_key_env": "STUDIO_CANARY_KEY",
                            "api_base": f"http://studio:{URL_PASSWORD}@127.0.0.1:9/v1"}
    doc["predictors"]["analyze.predict"]["lm"] = "hosted"
    return doc


@pytest.mark.parametrize("text", [
    f"Incorrect API key provided: {SK_KEY}.",
    f"Error code: 401 - key {ENV_KEY} rejected",
    f"cannot reach http://studio:{URL_PASSWORD}@127.0.0.1:9/v1/models",
    f"headers {{'Authorization': 'Bearer {ENV_KEY}'}}",
    f"GET https://host/v1/models?api_key={URL_PASSWORD}",
])
def test_redact_removes_each_kind_of_secret(text: str) -> None:
    cleaned = redact(text)
    assert not any(c in cleaned for c in CANARIES) and REDACTED in cleaned


def test_redact_keeps_ordinary_text() -> None:
    text = ("predictor 'classify' scored 42.0 on 20 examples; max_tokens=512; see http://127.0.0.1:8080/v1; "
            "a basic example from the bearer of bad news; Basic configuration")
    assert redact(text) == text
    assert redact_value({"a": [text, 1, None]}) == {"a": [text, 1, None]}


def test_no_canary_in_database_logs_exports_or_downloads(tmp_path: Path) -> None:
    log_file = tmp_path / "studio.log"
    handler = logging.FileHandler(log_file)
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    install_log_redaction()
    try:
        store, run_id = finished_run(tmp_path, hosted_doc())
        # a provider error quoting the keys, as LiteLLM's exceptions do
        provider_error = Exception(f"AuthenticationError: Incorrect API key provided: {SK_KEY} ({ENV_KEY})")
        message = explain_lm_error(provider_error, "openai/smol", f"http://studio:{URL_PASSWORD}@127.0.0.1:9/v1")
        store.add_event(run_id, "error", f"step p failed: {provider_error}", {"raw": str(provider_error)})
        store.add_round(Round(run_id=run_id, index=1, strategy="p", eval_failed=True, eval_error=str(provider_error)))
        second = store.create_run("second", parse_config(hosted_doc()))
        store.set_status(second, RunStatus.FAILED, error=message)
        # the endpoint check's own message, with the credentials of the URL
        with pytest.raises(LMError) as info:
            check_endpoint("openai/smol", f"http://studio:{URL_PASSWORD}@127.0.0.1:9/v1", ENV_KEY, timeout=1)
        store.add_event(second, "error", str(info.value))
        logging.getLogger("LiteLLM").error("request failed: %s", provider_error)
        try:
            raise RuntimeError(f"boom with {SK_KEY}")
        except RuntimeError:
            logging.getLogger("core.run").exception("worker failed for key %s", ENV_KEY)
        places = {"database": b"".join(p.read_bytes() for p in tmp_path.glob("runs.db*"))}
        assert (tmp_path / "runs.db-wal").exists()  # the WAL is read before any checkpoint
        bundle = export_run(store, run_id, tmp_path / "bundle.zip")
        folder = export_run(store, run_id, tmp_path / "bundle-folder")
        store.close()
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()
    with zipfile.ZipFile(bundle) as zf:
        places["export (.zip)"] = b"".join(zf.read(n) for n in zf.namelist())
    places["export (folder)"] = b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())
    places["database after close"] = b"".join(p.read_bytes() for p in tmp_path.glob("runs.db*"))
    places["log"] = log_file.read_bytes()
    places["config download"] = config_to_json(parse_config(hosted_doc())).encode()
    for place, data in places.items():
        for canary in CANARIES:
            assert canary.encode() not in data, f"{canary} leaked into the {place}"
    assert b"incorrect api key" in places["log"].lower() and REDACTED.encode() in places["log"]
    assert places["export (.zip)"] and REDACTED.encode() in places["database"]


def test_no_canary_in_what_a_run_logs_to_mlflow(tmp_path: Path) -> None:
    """Parameters, tags, metric names and every artifact file of the MLflow run, read back with MLflow's own
    client, and the MLflow store's files: no key, even with one in the tracking URI itself."""
    from core.tracking.mlflow import MlflowRunLog, mlflow_client
    from core.tracking.target import TrackingTarget

    doc = hosted_doc()
    doc["tracking"] = {"mlflow": True, "tracking_uri": f"https://studio:{URL_PASSWORD}@mlflow.example.com"}
    store, run_id = finished_run(tmp_path, doc)
    store.add_event(run_id, "error", f"step p failed: Incorrect API key provided: {SK_KEY} ({ENV_KEY})")
    target = TrackingTarget(f"sqlite:///{tmp_path / 'mlflow.db'}", "secrets")
    log = MlflowRunLog(target)
    mlflow_id = log.open(store.get_run(run_id))
    assert log.finish(store, store.get_run(run_id), tmp_path / "home") == []
    client = mlflow_client(target.uri)  # MLflow's own MlflowClient
    data = client.get_run(mlflow_id).data
    places = {"params and tags": "\n".join([*data.params, *data.params.values(), *data.tags, *data.tags.values(),
                                             *data.metrics]).encode()}
    pending = [a for a in client.list_artifacts(mlflow_id)]
    while pending:
        item = pending.pop()
        if item.is_dir:
            pending.extend(client.list_artifacts(mlflow_id, item.path))
        else:
            places[f"artifact {item.path}"] = Path(client.download_artifacts(mlflow_id, item.path,
                                                                              str(tmp_path / "down"))).read_bytes()
    places["MLflow store"] = b"".join(p.read_bytes() for p in tmp_path.glob("mlflow.db*"))
    places["MLflow artifact folder"] = b"".join(p.read_bytes() for p in (tmp_path / "mlartifacts").rglob("*")
                                                if p.is_file())
    assert {"artifact report.html", "artifact bundle/manifest.json", "artifact bundle/config.json"} <= set(places)
    for place, content in places.items():
        for canary in CANARIES:
            assert canary.encode() not in content, f"{canary} leaked into the MLflow {place}"
    assert data.params["tracking.tracking_uri"] == f"https://{REDACTED}@mlflow.example.com"
    assert data.params["lms.hosted.api_key_env"] == "STUDIO_CANARY_KEY"  # the variable's name, never its value


def test_the_filter_redacts_a_record_with_arguments() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "key=%s url=%s", (ENV_KEY, f"http://a:{URL_PASSWORD}@h"),
                               None)
    RedactingFilter().filter(record)
    assert not any(c in record.getMessage() for c in CANARIES)
