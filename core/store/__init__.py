"""The run store: SQLite through sqlite-utils, the channel between run workers (which write) and
the pages (which read).

- ``db``: the ``Store`` (connections per thread, WAL, runs, rounds, events, artifacts);
- ``migrations``: the ordered schema migrations;
- ``records``: the frozen records read from and written to the store (``Run``, ``Round``...) and ``RunStatus``;
- ``rows``: records <-> rows and JSON helpers;
- ``liveness``: who owns a run across processes: heartbeats, cancel requests, the CPU lease;
- ``evidence``: per-example results, their LM calls and the weight steps' training rows;
- ``secrets``: the guard that keeps secret-named values out of the store;
- ``sweeps`` / ``sweep_records``: sweeps (strategies x seeds as one job), their child runs and summaries.
"""

from core.store.db import BUSY_TIMEOUT_MS, Store
from core.store.liveness import (
    HEARTBEAT_EVERY_S,
    HEARTBEAT_TIMEOUT_S,
    RESUMABLE,
    host_name,
    process_start_time,
)
from core.store.migrations import MIGRATIONS
from core.store.rows import now_iso
from core.store.secrets import find_secrets, is_secret_name

__all__ = [
    "BUSY_TIMEOUT_MS",
    "MIGRATIONS",
    "HEARTBEAT_EVERY_S",
    "HEARTBEAT_TIMEOUT_S",
    "Store",
    "RESUMABLE",
    "find_secrets",
    "host_name",
    "is_secret_name",
    "now_iso",
    "process_start_time",
]
