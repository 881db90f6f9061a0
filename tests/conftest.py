"""Shared fixtures: every test gets its own STUDIO_HOME so no test touches a user's database."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def studio_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "studio-home"
    monkeypatch.setenv("STUDIO_HOME", str(home))
    # Model caches (dequantized weights) are expensive: share them across tests.
    monkeypatch.setenv("STUDIO_MODEL_CACHE", str(ROOT / ".studio" / "models"))
    return home
