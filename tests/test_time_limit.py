"""The per-test time limit of tests/conftest.py: a hanging test fails instead of hanging CI."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DEFAULT_LIMIT_S, SLOW_LIMIT_S, TestTimeLimit, time_limit

ROOT = Path(__file__).resolve().parent.parent


def test_time_limit_interrupts_a_blocked_main_thread():
    started = time.monotonic()
    with pytest.raises(TestTimeLimit, match="ran past its time limit of 1 s"):
        with time_limit(1, "a sleeping block"):
            time.sleep(30)
    assert time.monotonic() - started < 10


def test_time_limit_is_cancelled_when_the_block_ends():
    with time_limit(1, "a quick block"):
        pass
    time.sleep(1.5)  # no alarm may fire after the block


def test_a_hanging_test_fails_and_the_session_goes_on(tmp_path):
    """A real pytest session with this conftest: the hanging test fails at its limit, the next passes."""
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text(encoding="utf-8"))
    (tmp_path / "test_hang.py").write_text(
        "import threading, time\n"
        "import pytest\n\n"
        "@pytest.mark.time_limit(2)\n"
        "def test_hangs():\n"
        "    threading.Event().wait()  # waits forever\n\n"
        "def test_after():\n"
        "    assert True\n",
        encoding="utf-8",
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 60
    assert done.returncode == 1, done.stdout[-2000:]
    assert "1 failed, 1 passed" in done.stdout
    assert "test_hangs ran past its time limit of 2 s" in done.stdout


def test_limits_stay_well_under_the_ci_budget():
    assert DEFAULT_LIMIT_S <= 300 and SLOW_LIMIT_S <= 15 * 60
