"""Where runtime state lives: ``$STUDIO_HOME`` (default ``<repo>/.studio``, git-ignored).

Bundled samples are named, never addressed: a sample name is a plain file name in ``data/``
(no ``..``, no separators), so a config cannot make the app read another file through it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from core.errors import DataError, shown

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
SAMPLE_EXTENSIONS = (".csv", ".json", ".jsonl")
_SAMPLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,100}")


def studio_home() -> Path:
    """The folder holding the database, run artifacts and model caches."""
    return Path(os.environ.get("STUDIO_HOME") or REPO_ROOT / ".studio")


def model_cache_dir() -> Path:
    """Folder for assembled or converted model files: env ``STUDIO_MODEL_CACHE``, else ``<studio home>/models``.

    Converted weights take tens of seconds to make; tests point every temporary home at one cache.
    """
    return Path(os.environ.get("STUDIO_MODEL_CACHE") or studio_home() / "models")


def db_path() -> Path:
    return studio_home() / "studio.db"


def run_dir(run_id: int) -> Path:
    return studio_home() / "runs" / str(run_id)


def sample_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a bundled sample, or None."""
    if (not isinstance(name, str) or not _SAMPLE_NAME.fullmatch(name) or ".." in name
            or not name.endswith(SAMPLE_EXTENSIONS)):
        return (f"sample name {shown(name)} must be the plain file name of a bundled sample in data/ "
                f"(no folders, no '..', ending in {', '.join(SAMPLE_EXTENSIONS)})")
    return None


def sample_path(name: str) -> Path:
    """The file of bundled sample ``name``; ``DataError`` for anything but a plain name in ``data/``."""
    if problem := sample_name_problem(name):
        raise DataError(problem)
    path = (DATA_DIR / name).resolve()
    if path.parent != DATA_DIR.resolve():
        raise DataError(f"sample name {shown(name)} does not name a file in data/")
    return path
