"""Reading model files without loading their weights: safetensors headers, GGUF metadata, content digests.

The local models (``core.lms.local``) are checked and keyed with these. A file's sha256 and a GGUF's metadata
are cached by (path, size, mtime_ns) in ``<model cache>/local/files.json``, so checking a model a second time
reads no weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any

from core.errors import LMError, shown
from core.paths import model_cache_dir

logger = logging.getLogger(__name__)

WEIGHTS_ALLOWED = "model.safetensors, or model.safetensors.index.json with its shards"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LMError(f"cannot read the {what} {path}: {e}") from e


def safetensors_params(path: Path) -> int:
    """Parameters in a safetensors file, from its JSON header (8-byte length, then the header): no weight is read."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 2 <= size <= 100_000_000:
                raise ValueError(f"header length {size}")
            header = json.loads(f.read(size))
        return sum(math.prod(int(d) for d in v["shape"]) for k, v in header.items() if k != "__metadata__")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise LMError(f"{path} is not a readable safetensors file: {type(e).__name__}: {e}") from e


def weight_files(folder: Path) -> list[Path]:
    """The safetensors weights of a Hugging Face folder; LMError for pickle-only or missing weights."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        data = read_json(index, "weights index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise LMError(f"{index} has no weight_map; allowed weights: {WEIGHTS_ALLOWED}")
        shards = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [p.name for p in shards if not p.is_file()]
        if missing:
            raise LMError(f"{index} lists shards that are missing from {folder}: {shown(missing)}")
        return shards
    files = sorted(folder.glob("model*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise LMError(f"{folder} holds pickle weights only ({shown(pickles)}): refused, loading a pickle file can run "
                      f"code; allowed weights: {WEIGHTS_ALLOWED} (convert them with transformers' save_pretrained, "
                      "which writes safetensors)")
    raise LMError(f"{folder} holds no model weights; allowed weights: {WEIGHTS_ALLOWED}")


# --- the digest cache ------------------------------------------------------------------------------------

_cache_lock = threading.Lock()


def _cache_file() -> Path:
    return model_cache_dir() / "local" / "files.json"


def _stamp(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cached(path: Path, field: str, make: Any) -> Any:
    """``make(path)``, cached in the model cache by (path, size, mtime_ns) under ``field``."""
    path = path.resolve()
    stamp = _stamp(path)
    with _cache_lock:
        try:
            cache = json.loads(_cache_file().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cache = {}
        entry = cache.get(str(path)) if isinstance(cache, dict) else None
        if isinstance(entry, dict) and all(entry.get(k) == v for k, v in stamp.items()) and field in entry:
            return entry[field]
    value = make(path)
    with _cache_lock:
        try:
            cache = json.loads(_cache_file().read_text(encoding="utf-8"))
            cache = cache if isinstance(cache, dict) else {}
        except (OSError, ValueError):
            cache = {}
        entry = cache.get(str(path))
        entry = entry if isinstance(entry, dict) and all(entry.get(k) == v for k, v in stamp.items()) else dict(stamp)
        entry[field] = value
        cache = {name: e for name, e in cache.items() if Path(name).exists()}  # files gone: forgotten
        cache[str(path)] = entry
        target = _cache_file()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
            partial.write_text(json.dumps(cache, indent=0), encoding="utf-8")
            os.replace(partial, target)
        except OSError as e:  # a read-only cache costs time, not correctness
            logger.warning("cannot write the local-model cache %s: %s", target, e)
    return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    started = time.monotonic()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    logger.debug("sha256 of %s in %.1f s", path, time.monotonic() - started)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """The sha256 of ``path``, read once per (path, size, mtime_ns)."""
    return cached(path, "sha256", _sha256)


def content_hash(files: list[Path], root: Path | None = None) -> str:
    """A sha256 over the files' names (relative to ``root``) and digests."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(root) if root else path.name}\0{file_digest(path)}\n".encode())
    return digest.hexdigest()


# --- GGUF files ----------------------------------------------------------------------------------------


def gguf_info(path: Path) -> dict[str, Any]:
    """Architecture, parameters, block count, embedding length, chat template and special tokens of a GGUF, read
    once per (path, size, mtime_ns): reading a GGUF's vocabulary takes seconds."""
    return cached(path, "gguf", _read_gguf)


def _read_gguf(path: Path) -> dict[str, Any]:
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
        raise LMError(f"{path} is not a readable GGUF file: {type(e).__name__}: {e}") from e
    fields = reader.fields

    def value(name: str) -> Any:
        field = fields.get(name)
        return None if field is None else field.contents()

    arch = value("general.architecture")
    tokens = fields.get("tokenizer.ggml.tokens")

    def token(name: str) -> str:
        index = value(name)
        return str(tokens.contents(int(index))) if tokens is not None and isinstance(index, int) else ""

    return {"arch": arch, "n_params": int(sum(int(t.n_elements) for t in reader.tensors)),
            "blocks": value(f"{arch}.block_count"), "width": value(f"{arch}.embedding_length"),
            "tokenizer": tokens is not None, "chat_template": value("tokenizer.chat_template"),
            "bos": token("tokenizer.ggml.bos_token_id"), "eos": token("tokenizer.ggml.eos_token_id")}
