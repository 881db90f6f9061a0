"""Threads for native code: 2 on an idle CPU, 1 when other processes already keep the cores busy."""

from __future__ import annotations

import pytest

from core.errors import LMError
from core.lms import cpu, embedded
from core.lms.lora import torch_threads


@pytest.fixture
def two_cores(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 2)
    monkeypatch.delenv("STUDIO_LLAMA_THREADS", raising=False)
    monkeypatch.delenv("STUDIO_TORCH_THREADS", raising=False)
    return monkeypatch


def test_idle_cpu_gets_two_threads_busy_cpu_gets_one(two_cores: pytest.MonkeyPatch) -> None:
    two_cores.setattr(cpu.os, "getloadavg", lambda: (0.3, 0.5, 0.5))
    assert embedded.n_threads() == 2 and torch_threads() == 2
    two_cores.setattr(cpu.os, "getloadavg", lambda: (2.0, 1.0, 1.0))
    assert embedded.n_threads() == 1 and torch_threads() == 1


def test_one_core_never_gets_two(two_cores: pytest.MonkeyPatch) -> None:
    two_cores.setattr(cpu.os, "cpu_count", lambda: 1)
    two_cores.setattr(cpu.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert embedded.n_threads() == 1


def test_the_environment_wins_and_bad_values_are_named(two_cores: pytest.MonkeyPatch) -> None:
    two_cores.setattr(cpu.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    two_cores.setenv("STUDIO_LLAMA_THREADS", "4")
    assert embedded.n_threads() == 4
    two_cores.setenv("STUDIO_LLAMA_THREADS", "two")
    with pytest.raises(LMError, match="STUDIO_LLAMA_THREADS='two' must be a positive integer"):
        embedded.n_threads()


def test_freed_heap_memory_goes_back_to_the_system() -> None:
    """Blocks under glibc's mmap threshold, freed below a live one, stay resident until malloc_trim (what a LoRA
    training's freed activations did: 1.2 GB)."""
    from core.lms.cpu import return_freed_memory
    from core.lms.lora.device import current_rss_mb

    blocks = [bytearray(b"\1" * 65536) for _ in range(3000)]  # ~190 MiB in 64 KiB blocks
    keeper = bytearray(b"\1" * 65536)  # above them on the heap: free() alone cannot shrink it
    del blocks
    kept = current_rss_mb()
    assert return_freed_memory()
    assert current_rss_mb() < kept - 120, (kept, current_rss_mb())
    assert keeper[0] == 1
