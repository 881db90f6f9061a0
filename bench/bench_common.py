"""What the benchmarks share: their logging (they print progress on stderr and one JSON line on stdout)."""

from __future__ import annotations

import logging
import sys

NOISY_LOGGERS = ("dspy", "LiteLLM", "litellm", "httpx")


def quiet_logging() -> None:
    """Warnings on stderr; the libraries' own chatter (DSPy, LiteLLM, httpx) only when it is an error."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
