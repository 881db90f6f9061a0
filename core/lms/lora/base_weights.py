"""The dequantized base weights of an embedded model, cached once as safetensors."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from core.errors import LMError
from core.lms import catalog

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
    """Convert ``key``'s GGUF to safetensors + tokenizer once; return the cache folder.

    The conversion writes into a temporary folder renamed at the end, so a crash never leaves a
    half-written cache; ``source.json`` records which GGUF it came from.
    """
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


def load_base_model(key: str) -> Any:
    """A fresh float32 ``AutoModelForCausalLM`` of ``key``'s base weights (from the cache)."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = ensure_hf_cache(key)
    started = time.monotonic()
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    except Exception as e:
        raise LMError(
            f"cannot load the cached weights of {key} from {folder} (delete it to rebuild): {e}"
        ) from e
    logger.info("loaded %s base weights from %s in %.2f s", key, folder, time.monotonic() - started)
    return hf

