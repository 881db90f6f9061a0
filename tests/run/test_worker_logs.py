"""A run's worker writes native and library output to the run's log file: the console (the CLI's stderr,
the app's) shows the Studio's progress lines and its own warnings, one line each."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import dspy

from core.config.defaults import scripted_config_dict
from core.lms.scripted import SCRIPTED_PREFIX, ScriptedEngine, ScriptedProvider
from core.paths import REPO_ROOT as ROOT
from core.run.supervisor import describe_exit
from core.run.worker import RUN_LOG, run_log_path

CHILD = r"""
import logging, os, sys, warnings
from pathlib import Path
from core.run.worker import output_to_run_log, route_logs

log = Path(sys.argv[1])
route_logs(output_to_run_log(log))
from core.errors import LMError
from core.lms import catalog, gguf_export
from core.lms.lora.rows import Tokenizer

Tokenizer("smollm2-135m")  # a vocab-only load: llama.cpp warns about the training context
try:  # the shipped SmolLM2 is Q4_1: llama.cpp warns about ~180 tensors, then refuses to requantize it
    gguf_export.quantize_gguf(catalog.gguf_path("smollm2-135m"), log.parent / "q.gguf", "Q4_K_M")
except LMError as e:
    logging.getLogger("core.test").error("the export failed: %s", e)
import transformers.utils.logging as hf_logging
print("progress bars:", hf_logging.is_progress_bar_enabled())  # DSPy's optimizers print like this
os.write(2, b"native code writing to its stderr itself\n")
warnings.warn("a library's warning")
logging.getLogger("transformers").warning("a transformers warning")
logging.getLogger("core.lms.convert").debug("convert_hf_to_gguf.py: INFO:hf-to-gguf:Loading model")
logging.getLogger("core.test").warning("a Studio warning\nwith details on a second line")
"""


def test_a_worker_sends_native_and_library_lines_to_the_run_log(tmp_path: Path) -> None:
    log = tmp_path / "runs" / "1" / RUN_LOG
    child = subprocess.run([sys.executable, "-c", CHILD, str(log)], capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout == ""
    console = child.stderr.splitlines()
    assert len(console) == 2, console  # the Studio's own lines, one each; the native error inside the first
    assert console[0].startswith("ERROR core.test: the export failed: llama.cpp could not quantize ")
    assert console[0].endswith("Q4_K_M: llama_model_quantize: failed to quantize: requantizing from type q4_1 is "
                               "disabled")
    assert console[1] == "WARNING core.test: a Studio warning"
    text = log.read_text()
    lines = text.splitlines()
    assert any(line.endswith("WARNING llama.cpp: llama_context: n_ctx_seq (512) > n_ctx_train (0) -- possible "
                             "training context overflow") for line in lines)
    fallbacks = [line for line in lines if "falling back to" in line]
    assert len(fallbacks) > 100 and all(" WARNING llama.cpp: warning: blk." in line for line in fallbacks)
    assert "ERROR llama.cpp: llama_model_quantize: failed to quantize: requantizing" in text
    assert " INFO llama.cpp:" not in text  # llama.cpp's INFO (~300 lines a load) stays out
    for expected in ("progress bars: False", "native code writing to its stderr itself", "UserWarning: a library's "
                     "warning", "a transformers warning", "DEBUG core.lms.convert: convert_hf_to_gguf.py: INFO:",
                     "a Studio warning\nwith details on a second line", "the export failed"):
        assert expected in text, expected


def test_a_crash_message_names_the_run_log() -> None:
    message = describe_exit(-signal.SIGABRT, 7)
    assert str(run_log_path(7)) in message and "\n" not in message


# --- the CLI: a scripted run whose LM makes every kind of noise from inside the worker ------------------

_noise_once = threading.Lock()


def _make_noise() -> None:
    """What a weight step's libraries do: llama.cpp's own lines, a print, a write to fd 2, warnings."""
    if not _noise_once.acquire(blocking=False):
        return
    import llama_cpp

    from core.lms.native_log import route_native_logs

    route_native_logs()
    params = llama_cpp.llama_model_quantize_default_params()
    llama_cpp.llama_model_quantize(b"/nonexistent/model.gguf", b"/nonexistent/out.gguf", ctypes.byref(params))
    print("NOISE: a print on stdout", flush=True)
    os.write(2, b"NOISE: native code writing to fd 2\n")
    warnings.warn("NOISE: a library warning", stacklevel=1)
    logging.getLogger("transformers").warning("NOISE: a transformers warning")


class NoisyEngine(ScriptedEngine):
    def complete(self, request: Any) -> Any:
        _make_noise()  # at the first call: in the worker (the CLI process builds factory LMs, never calls them)
        return super().complete(request)


def make_noisy_lm(name: str = "small", **options: Any) -> dspy.LM:
    """Factory of the test config (``allow_user_code``): the scripted LM with a noisy engine."""
    return dspy.LM(f"{SCRIPTED_PREFIX}{name}", engine=NoisyEngine(**options), provider=ScriptedProvider(),
                   cache=False, num_retries=0)


def test_the_cli_shows_only_progress_lines(tmp_path: Path) -> None:
    doc = scripted_config_dict("classifier", tag="logs")
    doc["lms"]["small"] = {"kind": "factory", "factory": f"{__name__}:make_noisy_lm",
                           "options": {**doc["lms"]["small"]["options"], "name": "small"}}
    doc["allow_user_code"] = True
    doc["strategy"] = "p"
    doc["data"]["split"] = {"train": 8, "val": 4, "test": 4, "seed": 0}
    config = tmp_path / "run.json"
    config.write_text(json.dumps(doc))
    out = subprocess.run([sys.executable, "-m", "core", "--db", str(tmp_path / "s.db"), "run", str(config)],
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout)
    assert summary["status"] == "finished"
    progress = out.stderr.splitlines()
    assert progress and all(line.startswith(f"[run {summary['run_id']}] ") for line in progress), progress
    log = (Path(os.environ["STUDIO_HOME"]) / "runs" / str(summary["run_id"]) / RUN_LOG).read_text()
    for expected in ("ERROR llama.cpp: gguf_init_from_file: failed to open GGUF file '/nonexistent/model.gguf'",
                     "NOISE: a print on stdout", "NOISE: native code writing to fd 2", "NOISE: a library warning",
                     "NOISE: a transformers warning"):
        assert expected in log, expected
