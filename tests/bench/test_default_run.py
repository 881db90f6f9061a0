"""bench/default_run.py's lever switches on the real embedded models (--quick budget): with
--no-call-cache every call generates, without it repeated calls are answered from the run's cache, and
--set changes the setting the run uses. docs/benchmarks.md's "what each lever saved" comes from these switches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.time_limit(900)]


def _default_run(*args: str, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "STUDIO_CALL_CACHE"}
    out = subprocess.run([sys.executable, "bench/default_run.py", "--quick", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=800, env={**env, "STUDIO_HOME": str(home)})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_call_cache_switch_and_a_setting_override_reach_the_run(tmp_path: Path) -> None:
    plain = _default_run(home=tmp_path / "plain")
    assert plain["status"] == "finished" and plain["call_cache"] is True
    assert plain["cache"]["enabled"] is True
    assert plain["cache"]["hits"] > 0  # the validation example's upstream call is asked again after the step

    off = _default_run("--no-call-cache", "--set", "w.trace_source=self", home=tmp_path / "off")
    assert off["status"] == "finished" and off["call_cache"] is False
    assert off["cache"] == {"hits": 0, "misses": off["cache"]["misses"], "entries": 0, "enabled": False}
    assert off["cache"]["misses"] > plain["cache"]["misses"]  # the calls the cache answered now generate
    assert off["overrides"] == {"w.trace_source": "self"}
    traces = [r["details"]["traces"] for r in off["rounds"] if r["details"].get("traces")]
    assert traces and set(traces[0]["sources"].values()) == {"self"}
    assert plain["estimate_seconds"] > 0 and plain["estimate_error_pct"] is not None


def test_small_names_a_predictor_of_the_program_or_says_which_there_are(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "bench/default_run.py", "--quick", "--small", "summarize"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "STUDIO_HOME": str(tmp_path)})
    assert out.returncode != 0
    assert "--small 'summarize': the program's predictors are ['classify', 'extract']" in out.stderr
