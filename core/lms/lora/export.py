"""The served form of a LoRA fine-tune (the ``serve`` setting of ``core.lms.lora.params``, where the two are
measured against each other).

- ``export_merged`` (``serve: merged``, the default): the LoRA merged into the weights and re-quantized to
  ``quant`` into ``model.gguf``; a shipped model's go into a copy of its GGUF (``core.lms.gguf_export``), a local
  model's through llama.cpp's converter.
- ``export_adapter`` (``serve: lora``): the LoRA alone, saved by peft as safetensors and converted by
  llama.cpp's own ``convert_lora_to_gguf.py`` (``core.lms.convert``) into ``adapter.gguf``, which the engine
  applies to the base model's GGUF at load time (``lora_path``). Nothing of the base model is rewritten. For a
  shipped model the LoRA was trained on the weights its GGUF dequantizes to (``base_weights``), so base GGUF +
  adapter has the trained weights; a local model's base GGUF is quantized from the folder it trained on.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from core.errors import LMError
from core.lms import catalog, convert
from core.lms.lora.base_weights import ensure_hf_cache
from core.lms.lora.params import torch_threads

logger = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.gguf"
MERGED_FILE = "model.gguf"
# what a Hugging Face folder holds besides weights and config that the converter reads (tokenizer, chat template)
_TOKENIZER_FILES = ("tokenizer", "special_tokens_map", "added_tokens", "chat_template", "vocab.", "merges.txt")


def export_adapter(key: str, peft_model: Any, folder: Path) -> tuple[Path, float]:
    """Write the LoRA of ``peft_model`` (trained on ``key``) as ``folder/adapter.gguf``; (path, seconds).

    The adapter's ``base_model_name_or_path`` is the Hugging Face folder the training started from
    (``ensure_hf_cache(key)``), which the converter reads the architecture from.
    """
    started = time.monotonic()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base_dir = ensure_hf_cache(key)
    with tempfile.TemporaryDirectory(prefix=".adapter-", dir=folder) as tmp:
        adapter = Path(tmp)
        peft_model.save_pretrained(str(adapter), safe_serialization=True)
        config_path = adapter / "adapter_config.json"
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise LMError(f"peft wrote no readable adapter_config.json for {key}: {e}") from e
        config["base_model_name_or_path"] = str(base_dir)
        config_path.write_text(json.dumps(config, indent=1), encoding="utf-8")
        target = convert.lora_to_gguf(adapter, base_dir, folder / ADAPTER_FILE, log=logger)
    return target, round(time.monotonic() - started, 2)


def export_merged(key: str, merged_model: Any, folder: Path, quant: str) -> tuple[Path, float]:
    """Write ``merged_model`` as ``folder/model.gguf`` quantized to ``quant``; (path, seconds).

    A shipped model's weights go into a copy of its GGUF (``gguf_export.write_gguf``), which keeps the shipped
    tokenizer: its dequantized folder has no ``tokenizer.model``, and from ``tokenizer.json`` alone llama.cpp's
    converter gives Gemma a BPE vocabulary that prints byte tokens as text ("<0xC2><0xA0>" for a no-break space;
    compared by hand on the dequantized gemma3-270m folder). A local model's go through llama.cpp's converter,
    as its base GGUF did (``core.lms.local``): it knows every architecture's tensor transforms (SmolLM3's q/k
    permutation, for one, which ``write_gguf`` applies to the ``llama`` architecture only).
    """
    from core.lms import gguf_export

    started = time.monotonic()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / MERGED_FILE
    hf_dir = catalog.hf_folder(key)
    if hf_dir is not None:
        _convert_merged(merged_model, Path(hf_dir), folder, target, quant)
        return target, round(time.monotonic() - started, 2)
    full = folder / "model.full.gguf"
    try:
        gguf_export.write_gguf(merged_model.state_dict(), catalog.gguf_path(key), full, dtype="F32")
        if quant == "F16":
            gguf_export.write_gguf(merged_model.state_dict(), catalog.gguf_path(key), target, dtype="F16")
        else:
            gguf_export.quantize_gguf(full, target, quant, nthread=torch_threads())
    finally:
        full.unlink(missing_ok=True)
    return target, round(time.monotonic() - started, 2)


def _convert_merged(merged_model: Any, hf_dir: Path, folder: Path, target: Path, quant: str) -> None:
    """``merged_model`` saved as safetensors beside ``hf_dir``'s tokenizer and chat template, converted to f16 by
    llama.cpp's converter and quantized to ``quant`` (F16: the converter's output itself)."""
    from core.lms import gguf_export

    with tempfile.TemporaryDirectory(prefix=".merged-", dir=folder) as tmp:
        hf = Path(tmp) / "hf"
        merged_model.save_pretrained(str(hf), safe_serialization=True)
        for path in hf_dir.iterdir():
            if path.is_file() and path.name.startswith(_TOKENIZER_FILES) and not (hf / path.name).exists():
                shutil.copy2(path, hf / path.name)
        if quant == "F16":
            convert.hf_to_gguf(hf, target, outtype="f16", log=logger)
            return
        f16 = convert.hf_to_gguf(hf, Path(tmp) / "model.f16.gguf", outtype="f16", log=logger)
        gguf_export.quantize_gguf(f16, target, quant, nthread=torch_threads())
