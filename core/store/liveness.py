"""Whether the process that owns a run still lives (pid plus start time, from /proc)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

IsAlive = Callable[[int, "float | None"], bool]


def process_start_time(pid: int) -> float | None:
    """Start time of process ``pid`` in seconds since the epoch, or None where unknown.

    Read from ``/proc`` (Linux); returns None when ``/proc`` is missing or the process is gone.
    Two processes that share a pid at different times have different start times.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot_time = _boot_time()
    except (OSError, ValueError):
        return None
    if boot_time is None:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        start_ticks = int(fields[19])  # field 22 of proc(5); fields[0] is field 3
    except (IndexError, ValueError):
        return None
    return boot_time + start_ticks / os.sysconf("SC_CLK_TCK")


def _boot_time() -> float | None:
    """Boot time in seconds since the epoch, from ``/proc/stat``."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    return None


def _is_zombie(pid: int) -> bool:
    """True when ``/proc`` says the process has exited and waits to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].startswith("Z")


def default_is_alive(pid: int, started: float | None) -> bool:
    """True when process ``pid`` exists and, where known, started at ``started``.

    ``os.kill(pid, 0)`` tells whether the pid exists; where ``/proc`` is available the start
    time must also match (within a second) so that a recycled pid is not taken for the owner.
    """
    if os.name == "nt":  # os.kill would terminate the process there; assume alive.
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # It exists but belongs to another user.
    if _is_zombie(pid):
        return False
    if started is None:
        return True
    actual = process_start_time(pid)
    return actual is None or abs(actual - started) < 1.0
