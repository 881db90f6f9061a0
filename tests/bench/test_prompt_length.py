"""bench/prompt_length.py on the real embedded model (--quick): a call that reads a longer text takes longer,
as the estimate's SECONDS_PER_INPUT_CHAR says; the JSON names what the estimate would say for each length."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.plan.estimate import SECONDS_PER_INPUT_CHAR

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.time_limit(300)]


def test_longer_inputs_take_longer_to_read(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "bench/prompt_length.py", "--quick"], cwd=ROOT, capture_output=True,
                         text=True, timeout=240, env={**os.environ, "STUDIO_HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["bench"] == "prompt_length" and result["model"] == "smollm2-135m"
    medians = {int(k): v for k, v in result["median_seconds"].items()}
    assert sorted(medians) == [150, 1500] and all(len(v) == 2 for v in result["seconds"].values())
    assert medians[1500] > medians[150] * 1.5  # measured idle: 1.19 s against 0.41 s
    assert result["seconds_per_char"] > 0
    assert result["estimate_seconds_per_char"] == SECONDS_PER_INPUT_CHAR["embedded"]
