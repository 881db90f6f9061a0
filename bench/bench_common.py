"""What the benchmarks share: their logging (progress on stderr, one JSON line on stdout) and reading memory from /proc."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

NOISY_LOGGERS = ("dspy", "LiteLLM", "litellm", "httpx")


def quiet_logging() -> None:
    """Warnings on stderr; the libraries' own chatter (DSPy, LiteLLM, httpx) only when it is an error."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def rss_mb(pid: int | str = "self", field: str = "VmRSS") -> float | None:
    """Resident memory of a process from ``/proc`` (``VmHWM`` is its peak); None where unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        return None
    return None
