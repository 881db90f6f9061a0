"""llama.cpp's own lines become records of the ``llama.cpp`` logger at their real level; a failed native
call says why in its one-line LMError; nothing reaches the process's stderr."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import LMError
from core.lms import catalog, gguf_export
from core.lms.llama_models import load_model
from core.lms.native_log import NATIVE_LOGGER, first_error, take
from core.paths import REPO_ROOT as ROOT


def _native_records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == NATIVE_LOGGER]


def test_fragments_become_whole_lines_at_ggml_levels(caplog) -> None:
    caplog.set_level(logging.DEBUG, logger=NATIVE_LOGGER)
    take(3, "warning: blk.0.attn_k.weight - ncols 576 not divisible by 256 ")  # llama.cpp writes it in two pieces
    take(3, "-> falling back to q5_0\n")
    take(4, "llama_model_quantize: failed to quantize: bad\n")
    take(2, "llama_model_loader: loaded meta data")
    take(5, " with 30 key-value pairs\n\n")  # 5: continuation of the line before; a blank line is dropped
    take(1, "a debug line\n")
    assert _native_records(caplog) == [
        (logging.WARNING, "warning: blk.0.attn_k.weight - ncols 576 not divisible by 256 -> falling back to q5_0"),
        (logging.ERROR, "llama_model_quantize: failed to quantize: bad"),
        (logging.INFO, "llama_model_loader: loaded meta data with 30 key-value pairs"),
        (logging.DEBUG, "a debug line"),
    ]


def test_the_native_logger_passes_errors_only_unless_asked() -> None:
    code = "import logging, core.lms.native_log as n; print(logging.getLogger(n.NATIVE_LOGGER).level)"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert int(fresh.stdout) == logging.ERROR  # what verbose=False meant; a run's worker asks for warnings


def test_a_failed_quantize_logs_its_warnings_and_says_why_in_one_line(tmp_path: Path, caplog, capfd) -> None:
    caplog.set_level(logging.WARNING, logger=NATIVE_LOGGER)
    target = tmp_path / "q.gguf"
    # the shipped SmolLM2 is Q4_1: llama.cpp refuses to requantize it (after warning about each fallback tensor)
    with pytest.raises(LMError) as raised:
        gguf_export.quantize_gguf(catalog.gguf_path("smollm2-135m"), target, "Q4_K_M")
    message = str(raised.value)
    assert "requantizing from type q4_1 is disabled" in message and "\n" not in message
    records = _native_records(caplog)
    fallbacks = [text for level, text in records if level == logging.WARNING and "falling back to" in text]
    assert len(fallbacks) > 100 and all(text.startswith("warning: blk.") for text in fallbacks)
    assert (logging.ERROR, "llama_model_quantize: failed to quantize: requantizing from type q4_1 is disabled") in records
    assert capfd.readouterr() == ("", "")  # nothing written to fd 1 or 2 (llama-cpp-python printed them)
    assert list(tmp_path.iterdir()) == []  # no partial file left


def test_a_model_that_will_not_load_says_why_in_one_line(tmp_path: Path, capfd) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(LMError) as raised:
        load_model("smollm2-135m", bad)
    message = str(raised.value)
    assert "invalid magic characters: 'not ', expected 'GGUF'" in message  # llama.cpp's reason, not just "failed"
    assert str(bad) in message and "\n" not in message
    assert capfd.readouterr() == ("", "")


def test_first_error_is_short() -> None:
    assert first_error([], "return code 1") == "return code 1"
    assert first_error(["a", "b"], "x") == "a"
    assert len(first_error(["e" * 1000], "x")) == 300
