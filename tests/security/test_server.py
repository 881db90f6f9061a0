"""A server beyond loopback asks who you are; sample names cannot reach other files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from core.config.defaults import default_config_dict
from core.config.schema import parse_config
from core.config.trust import needs_token, serve_problem, token_matches
from core.errors import ConfigError, DataError
from core.paths import sample_path

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "a-long-enough-test-token-1234"


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1", "::1", "LOCALHOST"])
def test_loopback_needs_no_token(address: str) -> None:
    assert not needs_token(address)
    assert serve_problem(address, None) is None


@pytest.mark.parametrize("address", ["0.0.0.0", "192.168.1.20", "my-laptop.local", "127.0.0.2", "", None, "::"])
def test_any_other_bind_needs_a_token(address: str | None) -> None:
    assert needs_token(address)
    problem = serve_problem(address, None)
    assert problem and "STUDIO_TOKEN" in problem and "\n" not in problem
    assert "at least 16" in serve_problem(address, "short")
    assert serve_problem(address, TOKEN) is None


def test_token_comparison() -> None:
    assert token_matches(TOKEN, TOKEN)
    assert not token_matches("wrong", TOKEN)
    assert not token_matches("", "")
    assert not token_matches(TOKEN, None)


@pytest.fixture
def bound_wide(monkeypatch: pytest.MonkeyPatch, studio_home: Path):
    monkeypatch.chdir(ROOT)
    previous = st_config.get_option("server.address")
    st_config.set_option("server.address", "0.0.0.0")
    yield
    st_config.set_option("server.address", previous)


def test_app_bound_wide_without_a_token_renders_nothing(bound_wide, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STUDIO_TOKEN", raising=False)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    assert any("refuses to serve on 0.0.0.0 without a token" in e.value for e in at.error)
    assert [t.value for t in at.title] == []


def test_app_bound_wide_asks_for_the_token_before_any_page(bound_wide, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDIO_TOKEN", TOKEN)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["BetterTogether Studio"]
    at.text_input[0].set_value("not it").run()
    assert any("not right" in e.value for e in at.error)
    assert "Program" not in [t.value for t in at.title]
    at.text_input[0].set_value(TOKEN).run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Program"]


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@pytest.mark.time_limit(180)
def test_real_server_on_another_loopback_address_without_a_token_refuses(tmp_path: Path) -> None:
    """``streamlit run`` bound to 127.0.0.2 (not the default bind) with no STUDIO_TOKEN: the first script
    run (here the script health check, over loopback only) refuses and the server exits."""
    host, port = "127.0.0.2", _free_port("127.0.0.2")
    env = {k: v for k, v in os.environ.items() if k != "STUDIO_TOKEN"}
    env["STUDIO_HOME"] = str(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.address", host, "--server.port", str(port),
         "--server.headless", "true", "--server.scriptHealthCheckEnabled", "true"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{host}:{port}/_stcore/health", timeout=2).read()
                break
            except (urllib.error.URLError, OSError):
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.5)
        else:
            raise AssertionError("the server did not come up in 90 s")
        try:
            status = urllib.request.urlopen(f"http://{host}:{port}/_stcore/script-health-check", timeout=30).status
        except urllib.error.HTTPError as e:
            status = e.code
        except (urllib.error.URLError, OSError):
            status = None  # the server went away while answering
        assert status in (200, 503, None)  # the answer races the shutdown; what matters is below
        proc.wait(timeout=60)
        stderr = proc.stderr.read()
        assert "refuses to serve on 127.0.0.2 without a token" in stderr, stderr[-2000:]
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- sample names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../core/config.py", "../../etc/passwd.csv", "/etc/hosts.csv", "sub/x.csv",
                                  "..\\x.csv", "..csv", ".studio.csv", "README.md"])
def test_a_sample_names_only_a_bundled_sample(name: str) -> None:
    doc = default_config_dict()
    doc["data"]["source"] = {"kind": "sample", "name": name}
    with pytest.raises(ConfigError, match="bundled sample"):
        parse_config(doc)
    with pytest.raises(DataError, match="bundled sample"):
        sample_path(name)


def test_bundled_samples_still_resolve() -> None:
    assert sample_path("documents.csv").is_file()
