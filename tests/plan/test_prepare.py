"""A run is prepared once: Start checks it and reads its data (``plan_run``); the worker gets that
plan as one JSON line (``WorkerJob``) and builds the run from it (``build_run``) without reading the
data or contacting an endpoint again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import core.plan.prepare
from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.errors import DataError
from core.plan.prepare import build_run, plan_run
from core.run.worker import WorkerJob
from tests.security_helpers import Listener

KEY = "sk-typed-plan-CANARY-0042"


def _config_with_a_typed_key(tmp_path: Path):
    """The scripted two-step program from a data file, its large predictor on a hosted LM (no API
    base: no endpoint check) whose key was typed in the app."""
    doc = scripted_config_dict("analyze_classify", tag="plan")
    source = core.plan.prepare.data_source_path(parse_config(doc))
    data = tmp_path / f"data{source.suffix}"
    data.write_bytes(source.read_bytes())
    doc["data"]["source"] = {"kind": "file", "path": str(data)}
    doc["lms"]["hosted"] = {"kind": "litellm", "model": "openai/gpt-4o-mini", "api_key": KEY}
    doc["predictors"]["analyze.predict"] = {"lm": "hosted", "role": "large"}
    return parse_config(doc), data


def _job(plan) -> WorkerJob:
    return WorkerJob(run_id=7, db_path="/runs.db", plan=plan, studio_home=None, resume=True)


def test_the_plan_crosses_as_json_and_comes_back_whole(tmp_path: Path) -> None:
    config, _ = _config_with_a_typed_key(tmp_path)
    plan = plan_run(config)
    assert plan.label_choices  # its labels are classes: choices were found at Start
    text = _job(plan).to_json()
    back = WorkerJob.from_json(text)
    assert (back.run_id, back.db_path, back.studio_home, back.resume) == (7, "/runs.db", None, True)
    assert back.plan.config == plan.config
    assert back.plan.config.typed_api_keys() == {"hosted": KEY}
    assert back.plan.split.to_dict() == plan.split.to_dict()
    for part in ("train", "val", "test"):
        before, after = getattr(plan.split, part), getattr(back.plan.split, part)
        assert [dict(e.inputs()) for e in after] == [dict(e.inputs()) for e in before] and after
        assert [dict(e.labels()) for e in after] == [dict(e.labels()) for e in before]
    assert back.plan.label_choices == plan.label_choices
    assert back.plan.capabilities == plan.capabilities
    assert back.plan.uses_local_cpu is plan.uses_local_cpu
    # the typed key is in the line only once, beside the plan: never in the plan's dump or a repr
    document = json.loads(text)
    assert document["api_keys"] == {"hosted": KEY}
    assert KEY not in json.dumps(document["plan"]) and KEY not in json.dumps(plan.to_dict())
    assert KEY not in repr(_job(plan)) and KEY not in repr(back)


def test_the_worker_builds_the_run_without_reading_the_data_or_calling_an_endpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config, data = _config_with_a_typed_key(tmp_path)
    plan = plan_run(config)
    job = WorkerJob.from_json(_job(plan).to_json())
    data.unlink()  # what the worker needs of the data crossed in the job

    def forbidden(*args, **kwargs):
        raise AssertionError("the worker read the data or contacted an endpoint again")

    monkeypatch.setattr(core.plan.prepare, "load_table_from_path", forbidden)
    monkeypatch.setattr(core.plan.prepare, "check_endpoint", forbidden)
    prepared = build_run(job.plan)
    assert prepared.split.sizes == plan.split.sizes
    assert prepared.label_choices == plan.label_choices
    models = {name: p.lm.model for name, p in prepared.program.named_predictors()}
    assert "openai/gpt-4o-mini" in models.values() and all(models.values())
    assert prepared.lms["hosted"].kwargs.get("api_key") == KEY  # the typed key reached the worker's LM


def test_start_contacts_an_endpoint_only_when_everything_local_is_right() -> None:
    doc = scripted_config_dict("analyze_classify")
    doc["lms"]["hosted"] = {"kind": "litellm", "model": "openai/smol", "api_key": KEY}
    doc["predictors"]["analyze.predict"]["lm"] = "hosted"
    doc["data"]["mapping"] = {**doc["data"]["mapping"], doc["data"]["inputs"][0]: "no such column"}
    with Listener() as listener:
        doc["lms"]["hosted"]["api_base"] = listener.url
        with pytest.raises(DataError, match="no such column"):
            plan_run(parse_config(doc))
        assert listener.requests == []  # the key did not leave the machine for a run that cannot start


def test_a_local_model_s_relative_path_is_read_against_the_configuration_s_folder(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """As a data or program file: ``studio run configs/x.json`` from any folder reads ``models/m`` next to the
    configuration, and the run records the absolute path (a resume from elsewhere reads the same model)."""
    from core.config.local_lm import LocalLMSpec
    from core.errors import LMError
    from core.plan.prepare import local_paths_resolved

    doc = scripted_config_dict("classifier")
    doc["lms"]["large"] = {"kind": "local", "path": "models/mine"}
    doc["lms"]["other"] = {"kind": "local", "path": "~/models/home", "quant": "Q8_0"}
    doc["lms"]["gguf"] = {"kind": "local", "path": "/abs/m.gguf", "weights": "hf/m"}
    config = parse_config(doc)
    base = tmp_path / "configs"
    resolved = local_paths_resolved(config, base)
    assert resolved.lms["large"] == LocalLMSpec(kind="local", path=str(base / "models/mine"))
    assert resolved.lms["other"] == config.lms["other"]  # ~ is the user's home, not the folder's
    assert (resolved.lms["gguf"].path, resolved.lms["gguf"].weights) == ("/abs/m.gguf", str(base / "hf/m"))
    assert resolved.lms["small"] == config.lms["small"]
    assert local_paths_resolved(config, None) is config
    monkeypatch.chdir(tmp_path)
    doc["lms"] = {"large": {"kind": "local", "path": "models/mine"}, "small": doc["lms"]["small"]}
    with pytest.raises(LMError, match="does not exist") as refused:
        plan_run(parse_config(doc), base_dir=base)
    # the folder's path, not the working directory's (a long path is shortened in the message: its start is kept)
    assert str(refused.value).startswith(f"LM 'large': local model path '{str(base / 'models/mine')[:60]}")
