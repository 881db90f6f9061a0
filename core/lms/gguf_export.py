"""Write Hugging Face weights back into a GGUF that llama.cpp serves, and quantize it.

The fine-tuning provider (``core.lms.lora``) trains on the *dequantized* weights of a
shipped GGUF. To serve the result on llama.cpp's fast path (``serve: merged``), the merged weights go
back into a GGUF that is a copy of the shipped one in everything but the tensor values (a LoRA adapter,
and a local model's merged weights, go through llama.cpp's own converters instead: ``core.lms.convert``;
``core.lms.lora.export`` says why the shipped models keep this copy):

- every key/value of the shipped GGUF is copied (tokenizer, chat template, hyper-parameters),
  except ``general.file_type``, which describes the new file;
- the tensors are written in the shipped file's order and with its names; each is looked up
  in the HF state dict through ``gguf.get_tensor_name_map`` (the same table transformers uses
  when it loads a GGUF), and a GGUF tensor with no HF counterpart is copied unchanged;
- the transforms transformers undid on load are redone: llama-architecture ``attn_q``/``attn_k``
  rows get llama.cpp's rope permutation (``convert_hf_to_gguf.py``: ``LlamaModel.permute``), and
  Gemma norm weights are stored as ``weight + 1`` (Gemma's RMSNorm multiplies by ``1 + w``).

``write_gguf`` writes 2-D weights in F32 (or F16) and 1-D tensors in F32; ``quantize_gguf`` then
shrinks the file with ``llama_cpp.llama_model_quantize``. Do not quantize a fine-tune back to a
4-bit type such as the shipped Q4_1: the LoRA delta is smaller than the 4-bit step and is erased
(measured once by hand, November 2026, on a 4-way support-ticket intent task fine-tuned to 100 %:
SmolLM2 merged -> Q4_1 fell to 0 % accuracy, Gemma merged -> Q4_K_M to 67 %). Q8_0 kept 100 % for both
models, and Q4_K_M kept 100 % for SmolLM2 and served fastest: hence ``DEFAULT_QUANT`` in
``core.lms.lora.params``. ``bench/finetune.py`` measures the default's accuracy before and after
fine-tuning and its calls per minute (docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import LMError
from core.lms.native_log import first_error, native_errors

logger = logging.getLogger(__name__)

# Output types of quantize_gguf, by name (llama.cpp's ftype numbers: gguf.LlamaFileType).
QUANT_TYPES: dict[str, int] = {
    "F32": 0,
    "F16": 1,
    "Q4_1": 3,  # the shipped SmolLM2 type: for round-trip checks only, it erases a fine-tune
    "Q8_0": 7,
    "Q4_K_M": 15,
    "Q5_K_M": 17,
    "Q6_K": 18,
}


def _arch_of(reader: Any) -> tuple[Any, str, int]:
    """(gguf.MODEL_ARCH, architecture name, block count) of an open GGUFReader."""
    import gguf

    arch_name = reader.fields["general.architecture"].contents()
    arch = next((k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch_name), None)
    if arch is None:
        raise LMError(f"GGUF architecture {arch_name!r} is unknown to the gguf package")
    n_blocks = int(reader.fields[f"{arch_name}.block_count"].contents())
    return arch, arch_name, n_blocks


def _field_value(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def rope_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp's q/k row permutation for llama-architecture GGUFs (HF order -> GGUF order).

    Same as ``LlamaModel.permute`` in llama.cpp's ``convert_hf_to_gguf.py``; transformers'
    ``LlamaTensorProcessor._reverse_permute_weights`` is its inverse.
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def hf_to_gguf_name_map(hf_names: list[str], base_gguf: Path) -> dict[str, str]:
    """Map GGUF tensor names of ``base_gguf``'s architecture to the HF names in ``hf_names``."""
    import gguf

    reader = gguf.GGUFReader(base_gguf)
    arch, _, n_blocks = _arch_of(reader)
    name_map = gguf.get_tensor_name_map(arch, n_blocks)
    out: dict[str, str] = {}
    for hf_name in hf_names:
        stem, suffix = hf_name, ""
        if hf_name.endswith((".weight", ".bias")):
            stem, suffix = hf_name.rsplit(".", 1)
            suffix = "." + suffix
        gguf_name = name_map.get_name(stem)
        if gguf_name is not None:
            out.setdefault(gguf_name + suffix, hf_name)
    return out


def to_gguf_tensor(
    arr: np.ndarray, gguf_name: str, arch_name: str, n_head: int, n_head_kv: int
) -> np.ndarray:
    """Apply the HF -> GGUF transform of one tensor (rope permutation, Gemma norm shift)."""
    if arch_name == "llama":
        if gguf_name.endswith("attn_q.weight"):
            arr = rope_permute(arr, n_head, n_head)
        elif gguf_name.endswith("attn_k.weight"):
            arr = rope_permute(arr, n_head, n_head_kv)
    elif arch_name.startswith("gemma") and gguf_name.endswith("norm.weight"):
        arr = arr + 1.0
    return arr


def write_gguf(
    state_dict: Mapping[str, Any],
    base_gguf: Path,
    out_path: Path,
    *,
    dtype: str = "F32",
) -> Path:
    """Write ``state_dict`` (HF names, torch tensors) as a GGUF shaped like ``base_gguf``.

    Every key/value of ``base_gguf`` is copied; tensors follow its order and names. ``dtype`` is
    the type of the 2-D weights ("F32" or "F16"); 1-D tensors are always F32. The file is
    written under a temporary name and renamed, so a crash never leaves a truncated GGUF.
    """
    import gguf

    if dtype not in ("F32", "F16"):
        raise LMError(f"write_gguf dtype {dtype!r} is not allowed; allowed: F32, F16")
    started = time.monotonic()
    base_gguf, out_path = Path(base_gguf), Path(out_path)
    reader = gguf.GGUFReader(base_gguf)
    _, arch_name, _ = _arch_of(reader)
    n_head = int(_field_value(reader, f"{arch_name}.attention.head_count"))
    n_head_kv = int(_field_value(reader, f"{arch_name}.attention.head_count_kv") or n_head)
    by_gguf = hf_to_gguf_name_map(list(state_dict), base_gguf)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(f"{out_path.name}.{os.getpid()}.partial")
    writer = gguf.GGUFWriter(partial, arch_name)  # writes general.architecture itself
    try:
        for key, field in reader.fields.items():
            if key.startswith("GGUF.") or key == "general.architecture":
                continue
            if key == "general.file_type":
                continue
            vtype = field.types[0]
            sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), vtype, sub_type=sub_type)
        writer.add_file_type(
            int(gguf.LlamaFileType.ALL_F32 if dtype == "F32" else gguf.LlamaFileType.MOSTLY_F16)
        )

        # Two passes: the tensors' shapes and types first (the header needs them), then each tensor's data made
        # and written one at a time, so no more than one converted weight is in memory beside the model (GGUFWriter's
        # add_tensor keeps every array until the end: the float32 copies of all the weights, ~540 MB for SmolLM2).
        def converted(tensor: Any, hf_name: str) -> np.ndarray:
            value = state_dict[hf_name]
            arr = value.detach().to("cpu").float().numpy() if hasattr(value, "detach") else np.asarray(value)
            arr = np.ascontiguousarray(
                to_gguf_tensor(arr.astype(np.float32), tensor.name, arch_name, n_head, n_head_kv)
            )
            return arr.astype(np.float16) if dtype == "F16" and arr.ndim > 1 else arr

        copied, plan = [], []
        for tensor in reader.tensors:
            expected_shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
            hf_name = by_gguf.get(tensor.name)
            if hf_name is None:
                # Not produced by the HF model (e.g. rope frequency tables): keep the original bytes.
                raw = np.asarray(tensor.data)
                writer.add_tensor_info(tensor.name, expected_shape, raw.dtype, raw.nbytes, raw_dtype=tensor.tensor_type)
                copied.append(tensor.name)
                plan.append((tensor, None, expected_shape))
                continue
            shape = tuple(int(d) for d in state_dict[hf_name].shape)
            if shape != expected_shape:
                raise LMError(
                    f"tensor {hf_name} has shape {shape}, but {tensor.name} in {base_gguf.name} has "
                    f"{expected_shape}: the weights do not belong to this model"
                )
            out_type = np.float16 if dtype == "F16" and len(shape) > 1 else np.float32
            writer.add_tensor_info(tensor.name, shape, np.dtype(out_type),
                                   int(np.prod(shape)) * np.dtype(out_type).itemsize)
            plan.append((tensor, hf_name, expected_shape))
        if copied:
            logger.info(
                "copied %d GGUF tensors unchanged from %s: %s", len(copied), base_gguf.name, copied[:5]
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor, hf_name, expected_shape in plan:
            arr = np.asarray(tensor.data) if hf_name is None else converted(tensor, hf_name)
            if hf_name is not None and arr.shape != expected_shape:
                raise LMError(f"tensor {hf_name} changed shape to {arr.shape} on its way to {tensor.name}")
            writer.write_tensor_data(arr)
        writer.close()
        os.replace(partial, out_path)
    except LMError:
        partial.unlink(missing_ok=True)
        raise
    except Exception as e:
        partial.unlink(missing_ok=True)
        raise LMError(f"cannot write the GGUF {out_path}: {type(e).__name__}: {e}") from e
    logger.info(
        "wrote %s (%s, %.0f MB) in %.1f s",
        out_path,
        dtype,
        out_path.stat().st_size / 1e6,
        time.monotonic() - started,
    )
    return out_path


def quantize_gguf(src: Path, dst: Path, quant: str, nthread: int = 2) -> Path:
    """Quantize ``src`` into ``dst`` with ``llama_cpp.llama_model_quantize`` (``quant`` in QUANT_TYPES)."""
    if quant not in QUANT_TYPES:
        raise LMError(f"quantization {quant!r} is not allowed; allowed: {', '.join(QUANT_TYPES)}")
    import llama_cpp

    started = time.monotonic()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.with_name(f"{dst.name}.{os.getpid()}.partial")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[quant]
    params.nthread = max(1, int(nthread))
    # llama.cpp logs every tensor (and the Q4_K fallbacks): to the "llama.cpp" logger (the run's log file)
    with native_errors() as errors:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(partial).encode(), ctypes.byref(params))
    if rc != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise LMError(f"llama.cpp could not quantize {src} to {quant}: {first_error(errors, f'return code {rc}')}")
    os.replace(partial, dst)
    logger.info(
        "quantized %s -> %s (%s, %.0f MB) in %.1f s",
        Path(src).name,
        dst,
        quant,
        dst.stat().st_size / 1e6,
        time.monotonic() - started,
    )
    return dst


def dequantized_tensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a GGUF as float32 arrays in GGUF order (for checks and tests)."""
    import gguf

    reader = gguf.GGUFReader(path)
    out = {}
    for tensor in reader.tensors:
        shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        out[tensor.name] = (
            gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape).astype(np.float32)
        )
    return out
