"""The per-run call cache: answers a repeated deterministic call once on, never when switched off."""

from __future__ import annotations

import pytest

from core.lms.call_cache import CallCache, run_cache


def test_an_enabled_cache_answers_the_second_identical_call() -> None:
    cache = CallCache()
    key = ("embedded/smollm2-135m", "prompt", None, 64, ())
    assert cache.get(key) is None
    cache.put(key, "answer")
    assert cache.get(key) == "answer"
    assert cache.get(("embedded/smollm2-135m", "other prompt", None, 64, ())) is None
    assert cache.stats() == {"hits": 1, "misses": 2, "entries": 1, "enabled": True}


def test_a_disabled_cache_counts_calls_but_never_answers() -> None:
    cache = CallCache(enabled=False)
    cache.put("k", "answer")
    assert cache.get("k") is None
    assert cache.get("k") is None
    assert cache.stats() == {"hits": 0, "misses": 2, "entries": 0, "enabled": False}


@pytest.mark.parametrize(("value", "enabled"), [(None, True), ("1", True), ("0", False), ("off", False),
                                                ("False", False), ("no", False), ("yes", True)])
def test_the_environment_switch_decides_a_new_runs_cache(monkeypatch, value, enabled) -> None:
    if value is None:
        monkeypatch.delenv("STUDIO_CALL_CACHE", raising=False)
    else:
        monkeypatch.setenv("STUDIO_CALL_CACHE", value)
    assert run_cache().enabled is enabled
