"""How many threads native code (llama.cpp, torch) should use on this CPU, right now.

Both run their threads under OpenMP, which spins at every barrier. When another process already
keeps the cores busy, a spinning thread waits for a whole scheduler slice, and two threads become
far slower than one. Measured on 2 cores with another job running (load average ~4): 24 generated
tokens took 31.9 s with two llama.cpp threads and 0.5 s with one; a torch LoRA step took 75-98 s
with two threads and 14 s with one. On an idle machine two threads win (llama.cpp: 0.34 s per call
vs 1.2 s with OpenMP's passive wait policy, which is why we do not switch that instead). So: the
environment variable if set, else 2 (at most the core count), or 1 when the 1-minute load average
already reaches the core count. Decided when a model is loaded or a training starts.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from core.errors import LMError, shown


def threads_for_native_code(env_name: str) -> int:
    """Threads for a llama.cpp context or a torch training: ``env_name`` if set, else 2 or 1 (see above)."""
    value = os.environ.get(env_name)
    if value:
        try:
            n = int(value)
        except ValueError as e:
            raise LMError(f"{env_name}={shown(value)} must be a positive integer") from e
        if n < 1:
            raise LMError(f"{env_name}={shown(value)} must be a positive integer")
        return n
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0] >= cores
    except OSError:
        busy = False
    return 1 if busy else max(1, min(2, cores))


def return_freed_memory() -> bool:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim(0)``); False where there is no glibc.

    torch frees a training step's activations to glibc, which keeps them: its mmap threshold rises as large
    blocks are freed, so later large blocks come from the heap, whose free pages stay resident. After a LoRA
    training of SmolLM2 (8 steps of batch 4) a process held 1799 MB, and 621 MB after ``malloc_trim(0)``
    (measured in one process on the 2-core machine, 7 Dec 2026: 1.2 GB of freed memory still resident, on top of
    which the merge and the export would load the float32 weights)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, looked up once (``find_library`` runs ``ldconfig``), or None."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # musl, macOS: no malloc_trim
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim
