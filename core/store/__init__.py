"""The run store: SQLite through sqlite-utils, the channel between run workers (which write) and
the pages (which read).

- ``db``: the ``Store`` (connections per thread, WAL, runs, rounds, events, artifacts);
- ``migrations``: the ordered schema migrations;
- ``rows``: records <-> rows and JSON helpers;
- ``liveness``: whether a run's owner process lives;
- ``secrets``: the guard that keeps secret-named values out of the store.
"""

from core.store.db import BUSY_TIMEOUT_MS, Store
from core.store.liveness import IsAlive, default_is_alive, process_start_time
from core.store.migrations import MIGRATIONS
from core.store.rows import now_iso
from core.store.secrets import find_secrets, is_secret_name

__all__ = [
    "BUSY_TIMEOUT_MS",
    "MIGRATIONS",
    "IsAlive",
    "Store",
    "default_is_alive",
    "find_secrets",
    "is_secret_name",
    "now_iso",
    "process_start_time",
]
