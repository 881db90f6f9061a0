"""The dequantized base weights of an embedded model, cached once as safetensors."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import LMError
from core.lms import catalog

if TYPE_CHECKING:
    from core.lms.lora.device import TrainDevice

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump to invalidate the safetensors caches
_CACHE_LOCK = threading.Lock()


def hf_cache_dir(key: str) -> Path:
    """Folder of the cached safetensors copy of ``key``'s dequantized GGUF."""
    return catalog.model_cache_dir() / f"{key}-hf"


def _cache_stamp(gguf: Path) -> dict[str, Any]:
    stat = gguf.stat()
    return {"format": CACHE_FORMAT, "gguf": gguf.name, "size": stat.st_size}


def ensure_hf_cache(key: str) -> Path:
    """The Hugging Face folder ``key`` is fine-tuned from: a local model's own folder (``catalog.hf_folder``),
    or a shipped model's GGUF converted to safetensors + tokenizer once into the cache folder.

    The conversion writes into a temporary folder renamed at the end, so a crash never leaves a
    half-written cache; ``source.json`` records which GGUF it came from.
    """
    local_folder = catalog.hf_folder(key)  # LMError for an unknown key or a GGUF-only local model
    if local_folder is not None:
        return local_folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = catalog.get_model(key)
    gguf = catalog.gguf_path(key)
    target = hf_cache_dir(key)
    stamp = _cache_stamp(gguf)
    with _CACHE_LOCK:
        marker = target / "source.json"
        if marker.is_file():
            try:
                if json.loads(marker.read_text(encoding="utf-8")) == stamp:
                    return target
            except ValueError:
                pass
            logger.info("cached weights in %s are stale: converting again", target)
        seconds = {"smollm2-135m": 30, "gemma3-270m": 75}.get(key, 60)
        logger.info(
            "converting %s GGUF to safetensors, first time only, ~%d s -> %s",
            model.display_name,
            seconds,
            target,
        )
        started = time.monotonic()
        partial = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            hf = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            # A GGUF-loaded model refuses to save ("quantized with gguf and is not serializable").
            hf.hf_quantizer = None
            if hasattr(hf.config, "quantization_config"):
                del hf.config.quantization_config
            hf.is_quantized = False
            hf.save_pretrained(partial)
            tokenizer.save_pretrained(partial)
            (partial / "source.json").write_text(json.dumps(stamp), encoding="utf-8")
            del hf
            if marker.is_file() and marker.read_text(encoding="utf-8") == json.dumps(stamp):
                shutil.rmtree(partial)  # another process finished the same conversion first
            else:
                if target.exists():
                    shutil.rmtree(target)
                os.replace(partial, target)
        except Exception as e:
            shutil.rmtree(partial, ignore_errors=True)
            raise LMError(f"cannot convert the {key} GGUF ({gguf}) to safetensors in {target}: {e}") from e
        logger.info("converted %s in %.1f s", key, time.monotonic() - started)
    return target


def load_base_model(key: str, device: TrainDevice | None = None) -> Any:
    """A fresh ``AutoModelForCausalLM`` of ``key``'s base weights (from the cache): float32 on the CPU, or on
    ``device`` in its dtype (``core.lms.lora.device``: bfloat16 where the device computes in it)."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = ensure_hf_cache(key)
    started = time.monotonic()
    dtype = device.torch_dtype() if device is not None else torch.float32
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
        if device is not None and device.kind != "cpu":
            hf = hf.to(device.kind)
    except Exception as e:
        raise LMError(
            f"cannot load the cached weights of {key} from {folder} (delete it to rebuild): {e}"
        ) from e
    logger.info("loaded %s base weights from %s in %.2f s (%s)", key, folder, time.monotonic() - started,
                device.describe() if device is not None else "cpu, float32")
    return hf

