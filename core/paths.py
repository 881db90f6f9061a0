"""Where runtime state lives: ``$STUDIO_HOME`` (default ``<repo>/.studio``, git-ignored)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"


def studio_home() -> Path:
    """The folder holding the database, run artifacts and model caches."""
    return Path(os.environ.get("STUDIO_HOME") or REPO_ROOT / ".studio")


def db_path() -> Path:
    return studio_home() / "studio.db"


def run_dir(run_id: int) -> Path:
    return studio_home() / "runs" / str(run_id)


def sample_path(name: str) -> Path:
    return DATA_DIR / name
