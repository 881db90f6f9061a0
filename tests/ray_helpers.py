"""Ray workers of the tests cannot open a run store: ``forbid_store`` is the local Ray instance's
``worker_process_setup_hook`` (it runs in every worker process before any task). Each attempt to open a
``Store`` leaves a file naming the database in the folder ``$STUDIO_TEST_STORE_ATTEMPTS`` and raises."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

ATTEMPTS_ENV = "STUDIO_TEST_STORE_ATTEMPTS"


class StoreForbidden(RuntimeError):
    """A Ray worker tried to open a run store."""


def forbid_store() -> None:
    from core.store.db import Store

    def refuse(self: Store, path: str | Path) -> None:
        folder = Path(os.environ[ATTEMPTS_ENV])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{uuid.uuid4().hex}.txt").write_text(str(path), encoding="utf-8")
        raise StoreForbidden(f"a Ray worker (pid {os.getpid()}) tried to open the run store {path}")

    Store.__init__ = refuse  # type: ignore[method-assign]


def store_attempts(folder: Path) -> list[str]:
    """The databases Ray workers tried to open (one entry per attempt)."""
    return sorted(p.read_text(encoding="utf-8") for p in folder.glob("*.txt")) if folder.is_dir() else []
