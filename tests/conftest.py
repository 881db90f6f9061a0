"""Shared fixtures: every test gets its own STUDIO_HOME so no test touches a user's database.

And no test can hang CI: every test (setup, call and teardown) runs under a time limit
(``time_limit``): 5 minutes, 15 for tests marked ``slow`` or ``e2e``, or ``@pytest.mark.time_limit(s)``.
At the limit a SIGALRM handler raises ``TestTimeLimit`` in the main thread (the test fails, the
run goes on); if the main thread is stuck in native code and cannot take the exception, faulthandler
dumps every thread's stack and ends the process a minute later. No plugin needed.
"""

from __future__ import annotations

import contextlib
import faulthandler
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_LIMIT_S = 300.0
SLOW_LIMIT_S = 900.0
HARD_STOP_GRACE_S = 60.0


class TestTimeLimit(Exception):
    """A test ran past its time limit."""

    __test__ = False  # not a test class


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "time_limit(seconds): this test's time limit (default 300, slow/e2e 900)")


def limit_for(item: pytest.Item) -> float:
    """The time limit of ``item`` in seconds."""
    marker = item.get_closest_marker("time_limit")
    if marker is not None:
        return float(marker.args[0])
    if item.get_closest_marker("slow") or item.get_closest_marker("e2e"):
        return SLOW_LIMIT_S
    return DEFAULT_LIMIT_S


@contextlib.contextmanager
def time_limit(seconds: float, label: str) -> Iterator[None]:
    """Raise TestTimeLimit in the main thread after ``seconds``; hard-stop the process a minute later."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise TestTimeLimit(f"{label} ran past its time limit of {seconds:g} s (tests/conftest.py)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    faulthandler.dump_traceback_later(seconds + HARD_STOP_GRACE_S, exit=True)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    with time_limit(limit_for(item), item.nodeid):
        yield


@pytest.fixture(autouse=True)
def studio_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "studio-home"
    monkeypatch.setenv("STUDIO_HOME", str(home))
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):  # a user's tracking server never sees a test run
        monkeypatch.delenv(name, raising=False)
    # Model caches (dequantized weights) are expensive: share them across tests.
    monkeypatch.setenv("STUDIO_MODEL_CACHE", str(ROOT / ".studio" / "models"))
    return home
