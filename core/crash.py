"""What killed a child process: the signal's name from an exit status, and what that signal means.

Shared by the doctor (which tells how to fix the build) and the run supervisor (which tells how to
go on with the run), so both name a crash the same way.
"""

from __future__ import annotations

import signal

SIGNAL_MEANING: dict[str, str] = {
    "SIGILL": "illegal instruction",
    "SIGSEGV": "segmentation fault",
    "SIGBUS": "bus error",
    "SIGFPE": "arithmetic fault",
    "SIGABRT": "aborted",
    "SIGKILL": "killed",
    "SIGTERM": "terminated",
}


def signal_of(exit_code: int | None) -> str | None:
    """Name of the signal that ended a child: a negative status (Popen), or 128+n from a shell wrapper."""
    if exit_code is None:
        return None
    number = -exit_code if exit_code < 0 else exit_code - 128 if 128 < exit_code < 160 else None
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
