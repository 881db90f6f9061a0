"""llama.cpp's own converters, run as subprocesses: a Hugging Face folder -> GGUF, a PEFT LoRA adapter -> GGUF.

The converters ship in the sources of the pinned llama-cpp-python (``convert_hf_to_gguf.py``,
``convert_lora_to_gguf.py``, their ``conversion`` package and their own ``gguf-py``, which they put
first on ``sys.path``); ``make converters`` unpacks them into ``<venv>/share/llama.cpp-<version>/``.
They run as a subprocess of ``sys.executable`` with the converters' folder as the working directory,
so that their imports (torch, their ``gguf``) never enter the Studio's process and a crash or a
memory peak of the conversion is the subprocess's own. Their output goes to a logger at DEBUG (the
run's log file, never the console); a failure is an ``LMError`` carrying the converter's last error
line. The output is written under a ``.partial`` name and renamed, so a killed conversion never
leaves a truncated GGUF where a finished one is expected. No download: the subprocess runs with the
Hugging Face hub offline, and a pickle adapter (``adapter_model.bin``) is refused before it starts.
"""

from __future__ import annotations

import ast
import collections
import functools
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from core.errors import LMError, shown

logger = logging.getLogger(__name__)

ENV_DIR = "STUDIO_LLAMA_CONVERTERS"
HF_SCRIPT = "convert_hf_to_gguf.py"
LORA_SCRIPT = "convert_lora_to_gguf.py"
HF_OUTTYPES = ("f32", "f16", "bf16", "q8_0")
LORA_OUTTYPES = ("f32", "f16", "bf16", "q8_0")
DEFAULT_TIMEOUT_S = 3600.0
"""A conversion slower than this is killed (SmolLM2-135M takes ~10 s, a 7B model minutes)."""

_REGISTER = re.compile(r"@ModelBase\.register\((.*?)\)", re.S)
_QUOTED = re.compile(r"[\"']([A-Za-z0-9_.\-]+)[\"']")
_ERROR_LINE = re.compile(r"^(?:ERROR|CRITICAL|FATAL)[:\s]|^[A-Za-z_][\w.]*(?:Error|Exception|Exit)\b.*:")


def _llama_cpp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama_cpp_python")
    except PackageNotFoundError:
        import llama_cpp

        return str(llama_cpp.__version__)


def converters_dir() -> Path:
    """The folder of llama.cpp's converters: env ``STUDIO_LLAMA_CONVERTERS``, else
    ``<sys.prefix>/share/llama.cpp-<llama-cpp-python version>``; LMError naming ``make converters`` when it
    does not hold ``convert_hf_to_gguf.py``."""
    env = os.environ.get(ENV_DIR)
    folder = Path(env).expanduser() if env else Path(sys.prefix) / "share" / f"llama.cpp-{_llama_cpp_version()}"
    if not (folder / HF_SCRIPT).is_file() or not (folder / "conversion").is_dir():
        where = f"{ENV_DIR}={env!r}" if env else str(folder)
        raise LMError(f"llama.cpp's converters ({HF_SCRIPT}, conversion/) are not in {where}: run `make converters` "
                      f"(it unpacks them from the llama-cpp-python sources), or set {ENV_DIR} to a folder holding them")
    return folder


@functools.lru_cache(maxsize=4)
def _architectures_in(folder: str) -> frozenset[str]:
    conversion = Path(folder) / "conversion"
    names: set[str] = set()
    for path in sorted(conversion.glob("*.py")):
        for match in _REGISTER.finditer(path.read_text(encoding="utf-8")):
            names.update(_QUOTED.findall(match.group(1)))
    text_only = _text_model_map(conversion / "__init__.py")
    return frozenset(names & text_only if text_only else names)


def _text_model_map(init: Path) -> set[str]:
    """Keys of ``TEXT_MODEL_MAP`` in the converters' ``conversion/__init__.py`` (read, never imported): the
    registered names a text model converts from; the others are vision or audio projectors only. Empty when a
    version has no such literal."""
    try:
        tree = ast.parse(init.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return set()
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP" and node.value is not None:
            try:
                return set(ast.literal_eval(node.value))
            except ValueError:
                return set()
    return set()


def supported_architectures() -> frozenset[str]:
    """The Hugging Face ``architectures`` names llama.cpp's converter turns into a GGUF text model, read from
    the ``@ModelBase.register(...)`` lines of its ``conversion/*.py`` without importing them (cached)."""
    return _architectures_in(str(converters_dir()))


def _architecture(folder: Path) -> str:
    """The first ``architectures`` name of ``folder/config.json``; LMError when there is none."""
    config = folder / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LMError(f"cannot read {config}: {e}; a Hugging Face model folder needs its config.json") from e
    names = data.get("architectures") if isinstance(data, dict) else None
    if not isinstance(names, list) or not names or not isinstance(names[0], str):
        raise LMError(f"{config} names no architectures (got {shown(names)}); llama.cpp's converter needs one, "
                      "e.g. LlamaForCausalLM")
    return names[0]


def check_architecture(folder: Path) -> str:
    """``folder``'s architecture when llama.cpp's converter supports it; LMError naming it otherwise."""
    arch = _architecture(Path(folder))
    supported = supported_architectures()
    if arch not in supported:
        examples = ", ".join(n for n in ("LlamaForCausalLM", "Qwen2ForCausalLM", "Gemma3ForCausalLM") if n in supported)
        raise LMError(f"architecture {shown(arch)} of {folder} cannot be converted by llama.cpp's converter "
                      f"(it converts {len(supported)} architectures, e.g. {examples})")
    return arch


def _last_error_line(lines: list[str]) -> str:
    """The converter's last line that reads as an error (a logged ERROR, an exception), else its last line."""
    for line in reversed(lines):
        if _ERROR_LINE.search(line.strip()):
            text = line.strip()
            return re.sub(r"^(?:ERROR|CRITICAL|FATAL):[\w.\-]*:", "", text).strip() or text
    return next((line.strip() for line in reversed(lines) if line.strip()), "no output")


def _run(script: str, args: list[str], what: str, log: logging.Logger | None, timeout_s: float) -> None:
    """Run ``script`` of the converters' folder with ``args``; its lines go to ``log`` at DEBUG."""
    folder = converters_dir()
    log = log or logger
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # the converter must use its own gguf-py, not the installed gguf
    command = [sys.executable, str(folder / script), *args]
    log.debug("running %s", " ".join(command))
    started = time.monotonic()
    tail: collections.deque[str] = collections.deque(maxlen=200)
    proc = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace")
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout_s, kill)
    timer.daemon = True
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            log.debug("%s: %s", script, line)
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        timer.cancel()
    seconds = time.monotonic() - started
    if timed_out.is_set():
        raise LMError(f"{what} took longer than {timeout_s:.0f} s and was stopped ({script})")
    if rc != 0:
        raise LMError(f"{what} failed ({script}, exit code {rc}): {_last_error_line(list(tail))}")
    log.debug("%s finished in %.1f s", script, seconds)


def _partial(out: Path) -> Path:
    return out.with_name(f"{out.name}.{os.getpid()}.{threading.get_ident()}.partial")


def _convert_into(out: Path, script: str, args: list[str], what: str, log: logging.Logger | None,
                  timeout_s: float) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial(out)
    partial.unlink(missing_ok=True)
    started = time.monotonic()
    try:
        _run(script, [*args, "--outfile", str(partial)], what, log, timeout_s)
        if not partial.is_file():
            raise LMError(f"{what} wrote no file ({script} finished without writing {partial.name})")
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    (log or logger).info("%s -> %s (%.0f MB) in %.1f s", what, out, out.stat().st_size / 1e6,
                         time.monotonic() - started)
    return out


def hf_to_gguf(folder: Path, out: Path, *, outtype: str = "f16", log: logging.Logger | None = None,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> Path:
    """Convert the Hugging Face model ``folder`` (config.json, safetensors, tokenizer) into the GGUF ``out``
    with llama.cpp's ``convert_hf_to_gguf.py``; ``outtype`` one of HF_OUTTYPES. Returns ``out``."""
    if outtype not in HF_OUTTYPES:
        raise LMError(f"outtype {shown(outtype)} is not allowed; allowed: {', '.join(HF_OUTTYPES)}")
    folder, out = Path(folder).resolve(), Path(out).resolve()
    if not folder.is_dir():
        raise LMError(f"model folder {folder} does not exist")
    arch = check_architecture(folder)
    return _convert_into(out, HF_SCRIPT, [str(folder), "--outtype", outtype],
                         f"converting {folder.name} ({arch}) to GGUF {outtype}", log, timeout_s)


def lora_to_gguf(adapter_dir: Path, base_dir: Path, out: Path, *, outtype: str = "f32",
                 log: logging.Logger | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> Path:
    """Convert the PEFT LoRA adapter in ``adapter_dir`` (adapter_config.json, adapter_model.safetensors),
    trained on the Hugging Face model in ``base_dir``, into the GGUF adapter ``out`` that llama.cpp applies at
    load time (``lora_path``), with llama.cpp's ``convert_lora_to_gguf.py``. Returns ``out``."""
    if outtype not in LORA_OUTTYPES:
        raise LMError(f"outtype {shown(outtype)} is not allowed; allowed: {', '.join(LORA_OUTTYPES)}")
    adapter_dir, base_dir, out = Path(adapter_dir).resolve(), Path(base_dir).resolve(), Path(out).resolve()
    if not (adapter_dir / "adapter_config.json").is_file():
        raise LMError(f"{adapter_dir} holds no adapter_config.json: not a PEFT LoRA adapter")
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        pickle = " (adapter_model.bin is a pickle file: refused)" if (adapter_dir / "adapter_model.bin").exists() else ""
        raise LMError(f"{adapter_dir} holds no adapter_model.safetensors{pickle}; only safetensors adapters load")
    arch = check_architecture(base_dir)
    return _convert_into(out, LORA_SCRIPT, [str(adapter_dir), "--base", str(base_dir), "--outtype", outtype],
                         f"converting the LoRA adapter {adapter_dir.name} ({arch}) to GGUF {outtype}", log, timeout_s)


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ENV_DIR",
    "HF_OUTTYPES",
    "LORA_OUTTYPES",
    "check_architecture",
    "converters_dir",
    "hf_to_gguf",
    "lora_to_gguf",
    "supported_architectures",
]
