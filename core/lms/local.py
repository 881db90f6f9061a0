"""Your own model on disk (the ``local`` LM kind): checked before use, keyed by its content, converted once.

A local model is a Hugging Face folder (``config.json``, safetensors weights, a tokenizer, a chat template) or a
``.gguf`` file. ``inspect_local`` checks it without loading a weight (the safetensors headers give the parameter
count) and raises an ``LMError`` naming what is wrong and what is allowed; ``register_local`` makes its key known
to the catalogue (``core.lms.catalog``), which then serves it like a shipped model: ``local/<key>`` on the llama.cpp
engine, fine-tunes ``local/<key>:ft-<8 hex>``.

- **Key**: ``<slug>-<8 hex of the content hash>`` (``qwen2.5-0.5b-instruct-1a2b3c4d``; a quantization other than
  the default joins the slug). The content hash is a sha256 over config.json, the weight files and the tokenizer
  and chat-template files (everything the GGUF is made of); each file's digest is cached by (path, size,
  mtime_ns) in ``<model cache>/local/files.json``, so a second inspect reads no weights.
- **Serving**: ``local_gguf`` converts the folder ONCE with llama.cpp's own converter (``core.lms.convert``) to an
  f16 GGUF, quantizes it (``core.lms.gguf_export.quantize_gguf``) into ``<model cache>/local/<content
  hash>/model-<quant>.gguf`` (written under a temporary name and renamed, under a lock), and deletes the f16
  file; a ``.gguf`` source is served as it is.
- **Fine-tuning** needs the Hugging Face folder: a ``.gguf`` is inference only unless ``weights`` names its folder.
- **Prompts** are the model's own chat template (``core.lms.chat_template``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import LMError, shown
from core.lms import chat_template as templates
from core.lms.chat_template import ChatTemplate
from core.lms.model_files import (
    WEIGHTS_ALLOWED,
    content_hash,
    gguf_info,
    read_json,
    safetensors_params,
    weight_files,
)
from core.paths import model_cache_dir

logger = logging.getLogger(__name__)

PREFIX = "local/"
DEFAULT_QUANT = "Q4_K_M"
QUANTS: tuple[str, ...] = ("F32", "F16", "Q8_0", "Q4_K_M", "Q5_K_M", "Q6_K")
"""Types a local model may be served as: ``core.lms.gguf_export.QUANT_TYPES`` but Q4_1, which erases fine-tunes
(written out so that the catalogue does not import numpy; tests/lms/test_local.py checks the two agree)."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
TEMPLATE_FILES = ("tokenizer_config.json", "chat_template.jinja", "chat_template.json", "special_tokens_map.json")
# Bits per weight of each served type: llama.cpp's block layouts (Q8_0: 34 bytes per 32 weights; Q6_K: 210 per 256;
# the _M mixes keep some tensors at a larger type, hence more than Q4_K's 4.5 and Q5_K's 5.5).
BITS_PER_WEIGHT = {"Q4_K_M": 4.9, "Q5_K_M": 5.7, "Q6_K": 6.6, "Q8_0": 8.5, "F16": 16.0, "F32": 32.0}
SERVING_ALLOWANCE = 1.25
"""Serving memory = weights x this, for the context (KV cache) and compute buffers: an allowance, not measured
per model."""
TRAINING_BYTES_PER_PARAM = 8
"""Extra memory of a ``small`` role: the float32 weights the trainer loads and the merged copy it exports (an
allowance; the fine-tuning checks the device's memory with its own numbers before training)."""


@dataclass(frozen=True)
class LocalModel:
    """A checked local model (nothing converted yet)."""

    key: str
    display_name: str
    path: Path
    """What the user gave: the folder or the .gguf file."""
    hf_dir: Path | None
    """The Hugging Face folder to convert and to fine-tune from; None for a .gguf without ``weights``."""
    gguf_source: Path | None
    """The user's .gguf file, served as it is; None for a folder."""
    arch: str
    n_params: int
    finetunable: bool
    quant: str
    content_hash: str
    template: ChatTemplate

    @property
    def model_name(self) -> str:
        """The served name, ``local/<key>``."""
        return f"{PREFIX}{self.key}"

    def summary(self) -> dict[str, Any]:
        """What was found, as plain data (for the Models page and ``--json``)."""
        return {"key": self.key, "model": self.model_name, "display_name": self.display_name, "path": str(self.path),
                "hf_dir": None if self.hf_dir is None else str(self.hf_dir),
                "gguf": None if self.gguf_source is None else str(self.gguf_source), "architecture": self.arch,
                "parameters": self.n_params, "finetunable": self.finetunable, "quant": self.quant,
                "content_hash": self.content_hash, "memory_bytes": memory_need(self, training=False)}


def inspect_gguf(path: Path) -> dict[str, Any]:
    """``model_files.gguf_info`` of ``path`` checked: an architecture llama.cpp runs, a tokenizer and a chat
    template."""
    import gguf

    info = gguf_info(path)
    known = set(gguf.MODEL_ARCH_NAMES.values())
    if info["arch"] not in known:
        raise LMError(f"{path}: architecture {shown(info['arch'])} is not one llama.cpp runs "
                      f"({len(known)} known, e.g. llama, qwen2, gemma3)")
    if not info["tokenizer"]:
        raise LMError(f"{path} holds no tokenizer (tokenizer.ggml.tokens); a GGUF made by llama.cpp's converter has one")
    if not info["chat_template"]:
        raise LMError(f"{path} has no chat template (tokenizer.chat_template); allowed: a GGUF with one, or a Hugging "
                      "Face folder with chat_template.jinja, chat_template.json or a chat_template in "
                      "tokenizer_config.json")
    return info


# --- checking a model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Folder:
    arch: str
    n_params: int
    files: list[Path]
    template: ChatTemplate
    config: dict


def _config_value(config: dict, name: str) -> Any:
    text = config.get("text_config")
    return config.get(name, text.get(name) if isinstance(text, dict) else None)


def inspect_folder(folder: Path) -> _Folder:
    """A Hugging Face folder checked: config.json with a supported architecture, safetensors weights, a
    tokenizer and a chat template."""
    from core.lms.convert import supported_architectures

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise LMError(f"{folder} has no config.json: not a Hugging Face model folder; allowed: a folder with "
                      f"config.json, {WEIGHTS_ALLOWED}, a tokenizer and a chat template, or a .gguf file")
    config = read_json(config_path, "model config")
    names = config.get("architectures") if isinstance(config, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise LMError(f"{config_path} names no architectures (got {shown(names)}); llama.cpp's converter needs "
                      "one, e.g. \"architectures\": [\"LlamaForCausalLM\"]")
    supported = supported_architectures()
    if names[0] not in supported:
        examples = [n for n in ("LlamaForCausalLM", "Qwen2ForCausalLM", "Gemma3ForCausalLM", "MistralForCausalLM",
                                "Phi3ForCausalLM") if n in supported]
        raise LMError(f"architecture {shown(names[0])} of {folder} is not one llama.cpp's converter supports "
                      f"({len(supported)} are, e.g. {', '.join(examples)})")
    weights = weight_files(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise LMError(f"{folder} has no tokenizer; allowed: {' or '.join(TOKENIZER_FILES)}")
    template = templates.folder_template(folder)
    if template is None:
        raise LMError(f"{folder} has no chat template; allowed: chat_template.jinja, chat_template.json or a "
                      "chat_template in tokenizer_config.json (a base model without one cannot be prompted here)")
    templates.end_of_turn(template)  # a template that cannot render a turn fails here, not in a run
    n_params = sum(safetensors_params(p) for p in weights)
    extra = [folder / n for n in (*TOKENIZER_FILES, *TEMPLATE_FILES) if (folder / n).is_file()]
    return _Folder(names[0], n_params, [config_path, *weights, *extra], template, config)


def available_memory() -> int | None:
    """Bytes of memory free for a new process (``MemAvailable`` of /proc/meminfo); None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def memory_need(model: LocalModel, *, training: bool) -> int:
    """Bytes ``model`` needs to be served (its GGUF: the file's size, or the parameters at the served type), plus
    the training allowance for a ``small`` role."""
    if model.gguf_source is not None:
        weights = model.gguf_source.stat().st_size
    else:
        weights = model.n_params * BITS_PER_WEIGHT[model.quant] / 8
    need = weights * SERVING_ALLOWANCE
    if training:
        need += model.n_params * TRAINING_BYTES_PER_PARAM
    return int(need)


def check_memory(model: LocalModel, *, training: bool = False) -> None:
    """LMError with both numbers when ``model`` needs more memory than is free (skipped where it cannot be read)."""
    free = available_memory()
    need = memory_need(model, training=training)
    if free is not None and need > free:
        use = ("served" + (f" as {model.quant}" if model.gguf_source is None else "")
               + (" and fine-tuned" if training else ""))
        raise LMError(f"model {model.display_name} ({model.n_params / 1e9:.2f} B parameters) needs about "
                      f"{_size(need)} of memory {use}, but only {_size(free)} is free; free memory, choose a "
                      f"smaller quant (allowed: {', '.join(QUANTS)}) or a smaller model")


def _size(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", name.lower()).strip("-.")[:48].strip("-.") or "model"


def inspect_local(path: str | Path, weights: str | Path | None = None, quant: str = DEFAULT_QUANT, *,
                  training: bool = False) -> LocalModel:
    """Check the model at ``path`` (a Hugging Face folder or a .gguf file; ``weights``: the HF folder of a
    .gguf, to fine-tune it) without converting anything; ``training``: it will be fine-tuned (a ``small``
    role), which the memory check counts. LMError naming what is wrong and what is allowed."""
    if quant not in QUANTS:
        raise LMError(f"quant {shown(quant)} is not allowed for a local model; allowed: {', '.join(QUANTS)}")
    allowed = ("a Hugging Face model folder (config.json, safetensors weights, tokenizer, chat template) or a "
               ".gguf file")
    source = Path(path).expanduser()
    if not source.exists():
        raise LMError(f"local model path {shown(str(path))} does not exist; allowed: {allowed}")
    source = source.resolve()
    if source.is_dir():
        if weights is not None:
            raise LMError(f"weights {shown(str(weights))} is only for a .gguf path; {source} is a folder, whose own "
                          "weights are used")
        folder = inspect_folder(source)
        digest = content_hash(folder.files, source)
        slug = _slug(source.name) + ("" if quant == DEFAULT_QUANT else f"-{quant.lower()}")
        model = LocalModel(f"{slug}-{digest[:8]}", f"{source.name} ({quant})", source, source, None, folder.arch,
                           folder.n_params, True, quant, digest, folder.template)
    elif source.is_file() and source.suffix.lower() == ".gguf":
        info = inspect_gguf(source)
        template = ChatTemplate(info["chat_template"], info["bos"], info["eos"])
        templates.end_of_turn(template)
        hf_dir, files, arch = None, [source], info["arch"]
        if weights is not None:
            hf_dir = Path(weights).expanduser()
            if not hf_dir.is_dir():
                raise LMError(f"weights {shown(str(weights))} is not a folder; allowed: the Hugging Face folder the "
                              f"GGUF {source.name} was made from (to fine-tune it)")
            hf_dir = hf_dir.resolve()
            folder = inspect_folder(hf_dir)
            _check_match(source, info, hf_dir, folder)
            files, arch = [source, *folder.files], folder.arch
        digest = content_hash(files)
        model = LocalModel(f"{_slug(source.stem)}-{digest[:8]}", source.name, source, hf_dir, source, arch,
                           info["n_params"], hf_dir is not None, quant, digest, template)
    else:
        raise LMError(f"local model path {source} is neither a folder nor a .gguf file; allowed: {allowed}")
    check_memory(model, training=training)
    return model


def _check_match(gguf_path: Path, info: dict, hf_dir: Path, folder: _Folder) -> None:
    """LMError when the HF folder ``weights`` is not the model of the GGUF (layers or width differ)."""
    for gguf_key, hf_name, what in (("blocks", "num_hidden_layers", "layers"), ("width", "hidden_size", "width")):
        theirs, ours = info.get(gguf_key), _config_value(folder.config, hf_name)
        if theirs is not None and ours is not None and int(theirs) != int(ours):
            raise LMError(f"weights {hf_dir} is not the model of {gguf_path.name}: {what} {ours} in its config.json, "
                          f"{theirs} in the GGUF; allowed: the Hugging Face folder the GGUF was made from")


# --- the models known to this process ------------------------------------------------------------------------

_registered: dict[str, LocalModel] = {}
_registry_lock = threading.Lock()
_KEY = re.compile(r"[a-z0-9][a-z0-9._-]{0,80}")


def register_local(model: LocalModel) -> str:
    """Make ``model`` known to this process (the catalogue, the engine, the fine-tuning); returns its key."""
    with _registry_lock:
        _registered[model.key] = model
    return model.key


def register_local_gguf(key: str, gguf_path: str | Path, display_name: str | None = None) -> LocalModel:
    """Register the GGUF ``gguf_path`` under the given ``key`` (a bundle's model: inference only)."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise LMError(f"local model key {shown(key)} must be lowercase letters, digits, '.', '_' or '-'")
    path = Path(gguf_path).resolve()
    if not path.is_file():
        raise LMError(f"GGUF {path} of local model {shown(key)} does not exist")
    info = inspect_gguf(path)
    model = LocalModel(key, display_name or path.name, path, None, path, info["arch"], info["n_params"], False,
                       DEFAULT_QUANT, key.rpartition("-")[2],
                       ChatTemplate(info["chat_template"], info["bos"], info["eos"]))
    register_local(model)
    return model


def local_model(key: object) -> LocalModel | None:
    """The registered local model ``key``, else None."""
    with _registry_lock:
        return _registered.get(key) if isinstance(key, str) else None


def local_keys() -> list[str]:
    """Keys of the local models registered in this process, sorted."""
    with _registry_lock:
        return sorted(_registered)


def require(key: str) -> LocalModel:
    """The registered local model ``key``; LMError naming the registered ones otherwise."""
    model = local_model(key)
    if model is None:
        raise LMError(f"local model {shown(key)} is not registered in this process; registered: "
                      f"{', '.join(local_keys()) or 'none'} (an LM of kind 'local' registers its model when built)")
    return model


# --- serving ---------------------------------------------------------------------------------------------------

_convert_lock = threading.Lock()


def gguf_target(model: LocalModel) -> Path:
    """Where the converted GGUF of a folder model lives: ``<model cache>/local/<content hash>/model-<quant>.gguf``."""
    return model_cache_dir() / "local" / model.content_hash / f"model-{model.quant}.gguf"


def local_gguf(key: str) -> Path:
    """The GGUF serving local model ``key``: the user's .gguf, or the folder converted once (cached by content)."""
    model = require(key)
    if model.gguf_source is not None:
        return model.gguf_source
    target = gguf_target(model)
    if target.is_file():
        return target
    with _convert_lock, _file_lock(target.parent / ".lock"):
        if target.is_file():  # another thread or process converted it meanwhile
            return target
        _convert(model, target)
    return target


def _convert(model: LocalModel, target: Path) -> None:
    from core.lms import convert, gguf_export

    assert model.hf_dir is not None
    started = time.monotonic()
    logger.info("converting %s to GGUF %s, first use only: %s", model.hf_dir, model.quant, target)
    if model.quant in ("F16", "F32"):
        convert.hf_to_gguf(model.hf_dir, target, outtype=model.quant.lower(), log=logger)
    else:
        f16 = target.with_name(f"model-f16.{os.getpid()}.{threading.get_ident()}.gguf")
        try:
            convert.hf_to_gguf(model.hf_dir, f16, outtype="f16", log=logger)
            gguf_export.quantize_gguf(f16, target, model.quant)
        finally:
            f16.unlink(missing_ok=True)
    source = {"path": str(model.hf_dir), "key": model.key, "quant": model.quant, "architecture": model.arch,
              "seconds": round(time.monotonic() - started, 1)}
    (target.parent / f"source-{model.quant}.json").write_text(json.dumps(source, indent=1), encoding="utf-8")
    logger.info("converted %s in %.1f s", model.key, time.monotonic() - started)


class _file_lock:  # noqa: N801 - used as a context manager, like a function
    """An exclusive lock on ``path`` across processes (``fcntl.flock``; a no-op where fcntl is missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle: Any = None

    def __enter__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a")  # noqa: SIM115 - closed in __exit__
        try:
            import fcntl

            fcntl.flock(self.handle, fcntl.LOCK_EX)
        except ImportError:
            pass

    def __exit__(self, *exc: object) -> None:
        self.handle.close()  # closing releases the lock


# --- prompts ----------------------------------------------------------------------------------------------------


def render_prompt(key: str, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """``messages`` in local model ``key``'s own chat template (without a leading BOS)."""
    return templates.render(require(key).template, messages, add_generation_prompt)


def end_of_turn(key: str) -> str:
    """What closes a turn of local model ``key`` (derived from its chat template)."""
    return templates.end_of_turn(require(key).template)


def stop_strings(key: str) -> list[str]:
    """Strings that end an answer of local model ``key``."""
    return templates.stop_strings(require(key).template)
