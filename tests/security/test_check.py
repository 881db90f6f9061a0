"""The Run page's check is cheap and local; the endpoint (and its key) is contacted at Start only."""

from __future__ import annotations

from pathlib import Path

import pytest

import core.plan.prepare
from core.config.defaults import scripted_config_dict
from core.config.schema import parse_config
from core.errors import LMError
from core.plan.prepare import check_run, prepare_run
from tests.security_helpers import Listener

KEY = "canary-check-key-0123456789"


def hosted_config(api_base: str):
    doc = scripted_config_dict("analyze_classify")
    doc["lms"]["hosted"] = {"kind": "litellm", "model": "openai/smol", "api_base": api_base,
                            "api_key_env": "STUDIO_CHECK_KEY"}
    doc["predictors"]["analyze.predict"]["lm"] = "hosted"
    return parse_config(doc)


def test_check_run_builds_no_lm_calls_nothing_and_reads_a_file_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIO_CHECK_KEY", KEY)
    reads: list[Path] = []
    original = core.plan.prepare.load_table_from_path
    monkeypatch.setattr(core.plan.prepare, "load_table_from_path", lambda p: (reads.append(Path(p)), original(p))[1])

    def no_lm(*args, **kwargs):
        raise AssertionError("check_run built an LM")

    monkeypatch.setattr(core.plan.prepare, "build_lm", no_lm)
    with Listener() as listener:
        config = hosted_config(listener.url)
        core.plan.prepare._table_cache.clear()
        assert check_run(config) == []
        assert check_run(config) == []
        assert listener.requests == []
    assert len(reads) == 1  # the second check found the file unchanged


def test_check_run_still_names_what_is_wrong() -> None:
    doc = scripted_config_dict("analyze_classify")
    doc["data"]["mapping"] = {}
    problems = check_run(parse_config(doc))
    assert len(problems) == 1 and "not mapped" in problems[0]


def test_start_checks_the_endpoint_and_only_then_sends_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIO_CHECK_KEY", KEY)
    with Listener() as listener:
        with pytest.raises(LMError, match="answered HTTP 500"):
            prepare_run(hosted_config(listener.url))
        assert [r["path"] for r in listener.requests] == ["/v1/models"]
        assert listener.requests[0]["headers"].get("Authorization") == f"Bearer {KEY}"
