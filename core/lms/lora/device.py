"""The device a LoRA fine-tune trains on, its precision, and whether the training fits in its memory.

``pick_device`` takes CUDA, then Apple MPS, then the CPU; env ``STUDIO_TRAIN_DEVICE`` (``cuda``, ``mps`` or
``cpu``) picks one, and asking for one that is not there is an ``LMError`` naming those that are.

Precision, per device:

- **CUDA**: where the GPU computes in bfloat16 (``torch.cuda.is_bf16_supported()``: Ampere and newer) the base
  weights are loaded in bfloat16 and the forward pass runs under bfloat16 autocast; the LoRA matrices and their
  AdamW state stay float32 (peft keeps adapters in float32). A GPU without bfloat16 trains in float32: float16
  would need loss scaling (a GradScaler that skips the steps whose gradients overflow), a failure mode nothing
  here has run, for models small enough that float32 fits.
- **MPS**: bfloat16 as on CUDA when a bfloat16 matmul under autocast runs on this Mac (it needs macOS 14 and a
  recent torch: probed, not assumed), else float32; never float16, for the reason above.
- **CPU**: bfloat16 weights where the CPU has bfloat16 instructions (AVX512-BF16, AMX, Arm BF16), else float32
  (bfloat16 emulated on an AVX2-only CPU was ~20x slower than float32: ``_cpu_device``).

``bf16`` off means float32 on every device. After training the LoRA comes back to the CPU in float32 for the
export (``core.lms.lora.train``), whatever the device.

``check_fits`` estimates the memory of the training (``estimate_memory``) from the model's ``config.json`` and
refuses it *before* the first step when the device has less free, with the numbers.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.errors import LMError, shown
from core.lms.lora.params import TrainParams

logger = logging.getLogger(__name__)

ENV = "STUDIO_TRAIN_DEVICE"
KINDS = ("cuda", "mps", "cpu")

# --- the memory model -------------------------------------------------------------------------------------
# Calibrated on the CPU with SmolLM2-135M (hidden 576, 30 layers, 134.5 M parameters, LoRA r=16 on all linear
# layers: 4.9 M), 2 steps of ``train_lora`` on rows cut to max_length with 18-token answers; memory = peak RSS minus
# the RSS before training, in MiB like every "MB" of the training logs. Every fine-tune records the three in its
# meta.json ``train`` (``memory_estimate_mb``, ``rss_before_mb``, ``train_peak_rss_mb``) and ``bench/finetune.py``
# prints the first and the difference of the others (``train_memory_mb``). Measured -> estimated by this model:
#   bf16 autocast on:  batch 2 x 384: 1888 -> 2241;  8 x 192: 2955 -> 3436;  8 x 384: 4764 -> 5663
#   float32:           batch 2 x 384: 2367 -> 2845;  8 x 192: 4078 -> 4900;  8 x 384: 7569 -> 8849
#   ``bench/finetune.py --quick`` (ticket rows, batch 8, at most 2224 tokens a batch, bf16): 4190 -> 4438
# Memory grows linearly with the tokens of a batch (no attention term showed: torch's SDPA; a batch of rows of
# unequal lengths padded to 8 x 384 took 3725, less than 8 full rows), by 76 bytes per token, hidden unit and
# layer under bf16 autocast and 137 in float32 in the runs above; the bench's process, which served the model
# before training, took ~9 % more than those predict for its tokens, so the constants below are 88 and 156 (the
# estimate is 6-20 % above every measure). Autocast on float32 weights also keeps a bfloat16 copy of every weight
# for the backward pass (+2 bytes per parameter: the bf16 runs held ~297 MiB more than the float32 ones before
# their activations). On a GPU the reduced-precision figure is an upper bound (the activations are bfloat16 there,
# where the CPU's autocast keeps some in float32), not measured here.
ACTIVATION_BYTES = {"reduced": 88, "float32": 156}
"""Bytes kept for the backward pass per token, hidden unit and layer."""


def pass_token_budget(micro_batch_tokens: int, device: TrainDevice) -> int:
    """The tokens of one forward pass on ``device``: ``micro_batch_tokens`` under reduced precision; in float32
    without autocast, as many as hold the same activation memory (88/156 of it: 768 -> 433), so that a CPU without
    bfloat16 instructions trains in the memory a CPU with them takes (``bench/finetune_memory.py --matrix levers``)."""
    if device.dtype != "float32" or device.autocast:
        return micro_batch_tokens
    return max(32, round(micro_batch_tokens * ACTIVATION_BYTES["reduced"] / ACTIVATION_BYTES["float32"]))


LORA_BYTES = 16
"""Per LoRA parameter: float32 weight, gradient and AdamW's two moments."""
HEAD_BYTES = 16
"""Per answer token and vocabulary entry: the LM head's logits (autocast and float32 copies), log-softmax, gradient."""
OVERHEAD_BYTES = {"cpu": 256 << 20, "mps": 512 << 20, "cuda": 1 << 30}
"""What the training needs beyond the tensors: allocator slack, and on CUDA the context and cuBLAS workspaces."""
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class TrainDevice:
    """Where a fine-tune trains: ``kind`` (cuda, mps or cpu), ``dtype`` of the base weights (bfloat16 or float32),
    ``autocast`` (the forward pass under ``autocast_dtype`` autocast), ``name`` (the GPU's, or the CPU's), the
    device's ``total_bytes`` and ``free_bytes`` of memory when picked (0: unknown) and ``why`` (how the precision
    was chosen)."""

    kind: str
    dtype: str
    autocast: bool
    name: str = ""
    total_bytes: int = 0
    free_bytes: int = 0
    autocast_dtype: str = "bfloat16"
    why: str = ""

    def torch_dtype(self) -> Any:
        """The ``torch.dtype`` of the base weights."""
        import torch

        return getattr(torch, self.dtype)

    def precision(self) -> str:
        """``"bfloat16"``, or ``"float32, bf16 autocast on"`` / ``"float32, bf16 autocast off"``."""
        if self.dtype != "float32":
            return self.dtype
        short = {"bfloat16": "bf16", "float16": "fp16"}.get(self.autocast_dtype, self.autocast_dtype)
        return f"float32, {short} autocast {'on' if self.autocast else 'off'}"

    def describe(self) -> str:
        """``"cpu (float32, bf16 autocast on)"``, ``"cuda: NVIDIA H100 80GB HBM3 (bfloat16)"``."""
        named = f": {self.name}" if self.name and self.kind != "cpu" else ""
        return f"{self.kind}{named} ({self.precision()})"

    def to_json(self) -> dict[str, Any]:
        """The form meta.json keeps (``train.device``)."""
        return {**asdict(self), "describe": self.describe()}


def _cuda_available(torch: Any) -> bool:
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken driver is "no CUDA", not a crash
        return False


def _mps_available(torch: Any) -> bool:
    mps = getattr(torch.backends, "mps", None)
    try:
        return mps is not None and bool(mps.is_available())
    except Exception:  # noqa: BLE001
        return False


def available_kinds() -> list[str]:
    """The device kinds present here, best first (the CPU always)."""
    import torch

    return [kind for kind, there in (("cuda", _cuda_available(torch)), ("mps", _mps_available(torch))) if there] + [
        "cpu"]


def pick_device(prefer: str | None = None, *, bf16: bool = True) -> TrainDevice:
    """The device to train on: ``prefer``, else env ``STUDIO_TRAIN_DEVICE``, else the best one present (CUDA, MPS,
    CPU); ``bf16`` is the fine-tuning setting (off: float32 everywhere). LMError for an unknown kind or one that is
    not present, naming those that are."""
    import torch

    source = "prefer" if prefer else ENV
    wanted = (prefer if prefer else os.environ.get(ENV, "")).strip().lower()
    if wanted in ("", "auto"):
        wanted = ""
    elif wanted not in KINDS:
        raise LMError(f"{source} = {shown(wanted)} is not a training device; allowed: {', '.join(KINDS)} "
                      "(or unset: the best one present)")
    present = available_kinds()
    if wanted and wanted not in present:
        build = f"torch {torch.__version__}" + (", a CPU-only build" if "+cpu" in torch.__version__ else "")
        raise LMError(f"{source} = {shown(wanted)} but no {wanted.upper()} device is available here ({build}); "
                      f"available: {', '.join(present)}")
    kind = wanted or present[0]
    device = {"cuda": _cuda_device, "mps": _mps_device, "cpu": _cpu_device}[kind](torch, bf16)
    logger.debug("training device: %s (%s)", device.describe(), device.why)
    return device


def _cuda_device(torch: Any, bf16: bool) -> TrainDevice:
    free, total = (int(x) for x in torch.cuda.mem_get_info())
    name = str(torch.cuda.get_device_name())
    if not bf16:
        return TrainDevice("cuda", "float32", False, name, total, free, why="bf16 is off in the fine-tuning settings")
    if torch.cuda.is_bf16_supported():
        return TrainDevice("cuda", "bfloat16", True, name, total, free, why="the GPU computes in bfloat16")
    return TrainDevice("cuda", "float32", False, name, total, free,
                       why="the GPU has no bfloat16; float16 would need loss scaling: float32")


def mps_bf16_works(torch: Any) -> bool:
    """Whether a bfloat16 matmul under MPS autocast runs here (macOS 14 and a recent torch)."""
    try:
        with torch.autocast(device_type="mps", dtype=torch.bfloat16):
            x = torch.ones((2, 2), device="mps")
            (x @ x).sum().item()
        return True
    except Exception:  # noqa: BLE001 - any failure means: not this Mac
        return False


def _mps_device(torch: Any, bf16: bool) -> TrainDevice:
    system_total, system_free = _system_memory()
    mps = getattr(torch, "mps", None)
    recommended = getattr(mps, "recommended_max_memory", None)
    total = int(recommended()) if recommended else system_total
    used = getattr(mps, "driver_allocated_memory", lambda: 0)()
    free = max(0, min(total - int(used), system_free or total))  # the GPU shares the system's memory
    name = "Apple GPU (MPS)"
    if not bf16:
        return TrainDevice("mps", "float32", False, name, total, free, why="bf16 is off in the fine-tuning settings")
    if mps_bf16_works(torch):
        return TrainDevice("mps", "bfloat16", True, name, total, free, why="bfloat16 runs on this Mac")
    return TrainDevice("mps", "float32", False, name, total, free,
                       why="bfloat16 does not run on this Mac (macOS 14 and a recent torch needed): float32")


def _system_memory() -> tuple[int, int]:
    """(total, available) bytes of the system's memory; (0, 0) where they cannot be read."""
    try:
        import psutil

        memory = psutil.virtual_memory()
        return int(memory.total), int(memory.available)
    except Exception:  # noqa: BLE001 - psutil missing or failing: /proc/meminfo, else unknown
        pass
    values: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            name, _, rest = line.partition(":")
            values[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    return values.get("MemTotal", 0), values.get("MemAvailable", 0)


def cpu_computes_bf16(torch: Any) -> bool:
    """Whether this CPU has bfloat16 instructions (x86 AVX512-BF16 or AMX, Arm BF16) that torch's oneDNN uses: its
    own check, else the kernel's CPU flags."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - an older or other build: read the flags
        pass
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_flags() -> set[str]:
    """The kernel's CPU flags (``/proc/cpuinfo``; empty where there is none), read without torch."""
    try:
        return set(Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").split())
    except OSError:
        return set()


NO_BF16_WHY = ("the CPU has no bfloat16 instructions: float32 (bfloat16 is emulated there, ~20x slower: "
               "bench/finetune_memory.py --matrix levers)")


def _cpu_device(torch: Any, bf16: bool) -> TrainDevice:
    """On a CPU with bfloat16 instructions the base weights are loaded in bfloat16 (as on a GPU); elsewhere
    everything is float32, whatever ``bf16`` says. ``bench/finetune_memory.py`` measured on SmolLM2 (batch 8 of
    384-token rows, a CPU with AMX): bfloat16 weights took 0.5 GB less than float32 weights under bfloat16 autocast
    and their steps ran as fast or faster, with the same losses to 2 %. On a CPU with AVX2 only (AMD EPYC, 2
    cores, 7 Dec 2026) oneDNN emulates bfloat16: a step of 4 of the default run's rows took 164 s under bfloat16
    autocast and 8.4 s in float32 (``bench/finetune_memory.py --matrix levers``), so autocast is never used there."""
    total, free = _system_memory()
    name = platform.processor() or platform.machine() or "CPU"
    if not bf16:
        return TrainDevice("cpu", "float32", False, name, total, free, why="bf16 is off in the fine-tuning settings")
    if cpu_computes_bf16(torch):
        return TrainDevice("cpu", "bfloat16", True, name, total, free,
                           why="the CPU computes in bfloat16 (AVX512-BF16 or AMX): bfloat16 weights, float32 LoRA")
    return TrainDevice("cpu", "float32", False, name, total, free, why=NO_BF16_WHY)


def current_rss_mb() -> float:
    """This process's resident memory now, in MiB (0 where psutil cannot read it)."""
    try:
        import psutil

        return round(psutil.Process().memory_info().rss / 2**20, 1)
    except Exception:  # noqa: BLE001
        return 0.0


# --- will it fit ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a fine-tune needs on its device, by part (``estimate_memory``)."""

    weights: int
    autocast_copies: int
    lora: int
    activations: int
    lm_head: int
    overhead: int
    tokens: int
    """Tokens of the largest forward pass (rows x padded length) the activations were counted for."""

    @property
    def total(self) -> int:
        return self.weights + self.autocast_copies + self.lora + self.activations + self.lm_head + self.overhead

    def describe(self) -> str:
        """``"~5.4 GB (weights 0.54, LoRA + AdamW 0.08, activations 4.25 for 3072 tokens, ...)"``."""
        parts = [f"weights {_gb(self.weights + self.autocast_copies)}", f"LoRA + AdamW {_gb(self.lora)}",
                 f"activations {_gb(self.activations)} for {self.tokens} tokens a pass",
                 f"LM head {_gb(self.lm_head)}", f"runtime {_gb(self.overhead)}"]
        return f"~{_gb(self.total)} GB ({', '.join(parts)})"


def _gb(n: float) -> str:
    """Bytes in GB of 2^30 bytes (as the training logs' MB are MiB): ``"0.54"``, ``"12"``."""
    gb = n / 2**30
    return f"{gb:.2f}".rstrip("0").rstrip(".") if gb < 10 else f"{gb:.0f}"


def _shape(config: Mapping[str, Any] | None, n_params: int) -> dict[str, int]:
    """hidden, layers, intermediate, heads, kv_heads, head_dim and vocab from a ``config.json`` (its
    ``text_config`` where the model nests one); missing values are guessed from ``n_params`` on the large side:
    12 x layers x hidden^2 = n_params with layers = hidden / 16, a deeper model than most (SmolLM2: hidden / 19),
    so more activations than the real shape."""
    config = dict(config or {})
    if isinstance(config.get("text_config"), Mapping):
        config = {**config, **config["text_config"]}

    def value(*names: str) -> int | None:
        for name in names:
            v = config.get(name)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
        return None

    guess = max(64, round((max(n_params, 1) * 16 / 12) ** (1 / 3)))
    hidden = value("hidden_size", "n_embd", "d_model") or guess
    heads = value("num_attention_heads", "n_head") or max(1, hidden // 64)
    head_dim = value("head_dim") or max(1, hidden // heads)
    return {"hidden": hidden, "layers": value("num_hidden_layers", "n_layer") or max(1, hidden // 16),
            "intermediate": value("intermediate_size", "n_inner") or 4 * hidden, "heads": heads,
            "kv_heads": value("num_key_value_heads") or heads, "head_dim": head_dim,
            "vocab": value("vocab_size") or 262_144}


def lora_parameters(config: Mapping[str, Any] | None, n_params: int, rank: int) -> int:
    """LoRA parameters of rank ``rank`` on every linear layer of a decoder (q, k, v, o, gate, up, down)."""
    s = _shape(config, n_params)
    q, kv = s["heads"] * s["head_dim"], s["kv_heads"] * s["head_dim"]
    per_layer = 2 * (s["hidden"] + q) + 2 * (s["hidden"] + kv) + 3 * (s["hidden"] + s["intermediate"])
    return rank * s["layers"] * per_layer


def estimate_memory(n_params: int, params: TrainParams, device: TrainDevice, config: Mapping[str, Any] | None = None,
                    *, tokens: int | None = None, answer_tokens: int | None = None) -> MemoryEstimate:
    """Bytes the fine-tune needs on ``device``: the base weights in its dtype, a reduced-precision copy of them
    when autocast runs on float32 weights, the LoRA with its gradient and AdamW state, the activations of the
    largest forward pass (``tokens``: rows x padded length; default what ``micro_batch_tokens`` allows: at most
    ``batch_size x max_length``, at least one row of ``max_length``), the LM head at the answer positions
    (``answer_tokens`` of the largest pass; default a quarter of ``tokens``) and the runtime."""
    tokens = tokens or min(params.batch_size * params.max_length,
                           max(pass_token_budget(params.micro_batch_tokens, device), params.max_length))
    answer_tokens = answer_tokens if answer_tokens is not None else tokens // 4
    s = _shape(config, n_params)
    reduced = device.dtype != "float32" or device.autocast
    return MemoryEstimate(
        weights=n_params * DTYPE_BYTES.get(device.dtype, 4),
        autocast_copies=n_params * 2 if device.autocast and device.dtype == "float32" else 0,
        lora=lora_parameters(config, n_params, params.lora_rank) * LORA_BYTES,
        activations=_activation_bytes(tokens, s, ACTIVATION_BYTES["reduced" if reduced else "float32"],
                                      params.gradient_checkpointing),
        lm_head=answer_tokens * s["vocab"] * HEAD_BYTES,
        overhead=OVERHEAD_BYTES.get(device.kind, OVERHEAD_BYTES["cpu"]),
        tokens=tokens,
    )


def _activation_bytes(tokens: int, shape: Mapping[str, int], per_unit: int, checkpointing: bool) -> int:
    """Activations kept for the backward pass of ``tokens``: every layer's (``per_unit`` bytes per token, hidden unit
    and layer), or with gradient checkpointing each layer's float32 input plus one layer recomputed at a time."""
    if checkpointing:
        return tokens * shape["hidden"] * (4 * shape["layers"] + per_unit)
    return tokens * shape["hidden"] * shape["layers"] * per_unit


def check_fits(n_params: int, params: TrainParams, device: TrainDevice, config: Mapping[str, Any] | None = None,
               *, tokens: int | None = None, answer_tokens: int | None = None,
               model: str = "the model") -> MemoryEstimate:
    """The memory estimate of the fine-tune (``estimate_memory``); LMError with the numbers when it is more than
    ``device`` has free, before training starts (an unknown free memory, 0, is not checked)."""
    estimate = estimate_memory(n_params, params, device, config, tokens=tokens, answer_tokens=answer_tokens)
    if device.free_bytes and estimate.total > device.free_bytes:
        other = ""
        if not params.bf16:
            other = ", turn bf16 on (fewer bytes of activations)"
        if not params.gradient_checkpointing:
            other += ", turn gradient_checkpointing on (activations recomputed, not kept)"
        raise LMError(
            f"fine-tuning {model} ({n_params / 1e6:.0f} M parameters) needs {estimate.describe()}, "
            f"{_gb(device.free_bytes)} GB free on {device.describe()}; lower micro_batch_tokens (now "
            f"{params.micro_batch_tokens}: the tokens of one pass) or max_length (now {params.max_length}){other}, "
            "free memory, or train a smaller model")
    return estimate


def model_size(folder: Path) -> tuple[int, dict[str, Any]]:
    """(parameters, config.json) of a Hugging Face folder, from its safetensors headers (no weight is read)."""
    import json

    from core.lms.model_files import safetensors_params, weight_files

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LMError(f"cannot read {folder / 'config.json'}: {e}") from e
    return sum(safetensors_params(p) for p in weight_files(folder)), config if isinstance(config, dict) else {}


def train_line(train: Mapping[str, Any]) -> str | None:
    """What the Run page says of a fine-tune's training, from its meta.json ``train`` section: ``"trained on cpu
    (float32, bf16 autocast on): 8 rows, 4 steps of batch 8 (2 epochs, max_length 384), memory ~5.1 GB estimated,
    4.6 GB used"`` (used: the peak RSS above the RSS before training; on a GPU, the peak torch reserved there);
    None for a fine-tune from before the device was recorded."""
    device = train.get("device")
    if not isinstance(device, Mapping) or not device.get("describe"):
        return None
    epochs = train.get("epochs", "?")
    tokens = train.get("pass_tokens") or train.get("micro_batch_tokens")
    passes = f" in passes of at most {tokens} tokens" if tokens else ""
    if train.get("shared_tokens"):
        passes += f", {train['shared_tokens']:.0f} prompt tokens shared per step"
    plan = (f"{train.get('rows', '?')} rows, {train.get('steps', '?')} steps of batch {train.get('batch_size', '?')}"
            f"{passes} ({epochs} epoch{'' if epochs == 1 else 's'}, max_length {train.get('max_length', '?')})")
    memory = []
    if train.get("memory_estimate_mb"):
        memory.append(f"~{float(train['memory_estimate_mb']) / 1024:.1f} GB estimated")
    if train.get("device_peak_mb"):
        memory.append(f"{float(train['device_peak_mb']) / 1024:.1f} GB used on the device")
    elif train.get("train_peak_rss_mb") and train.get("rss_before_mb"):
        memory.append(f"{(float(train['train_peak_rss_mb']) - float(train['rss_before_mb'])) / 1024:.1f} GB used")
    return f"trained on {device['describe']}: {plan}" + (f", memory {', '.join(memory)}" if memory else "")
