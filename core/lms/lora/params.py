"""Hyper-parameters of a LoRA fine-tune: validation of ``train_kwargs``, quantization, threads."""

from __future__ import annotations

import logging
import math
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import LMError
from core.lms.cpu import threads_for_native_code

logger = logging.getLogger(__name__)

# Quantization of the served fine-tune, per model: types measured to keep a LoRA fine-tune.
DEFAULT_QUANT: dict[str, str] = {"smollm2-135m": "Q4_K_M", "gemma3-270m": "Q8_0"}
ALLOWED_QUANTS: tuple[str, ...] = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16")


# --- hyper-parameters ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Param:
    kind: type
    default: Any
    low: float | None
    high: float | None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False

    def describe(self, name: str) -> str:
        lo = "" if self.low is None else f"{self.low} {'<' if self.low_open else '<='} "
        hi = "" if self.high is None else f" {'<' if self.high_open else '<='} {self.high}"
        extra = ", or None" if self.optional else ""
        return f"{lo}{name}{hi} (a {self.kind.__name__}{extra}; default {self.default})"


PARAMS: dict[str, _Param] = {
    "epochs": _Param(int, 3, 1, 1000),
    "max_steps": _Param(int, None, 1, 1_000_000, optional=True),
    "learning_rate": _Param(float, 1e-3, 0.0, 1.0, low_open=True),
    "lora_rank": _Param(int, 16, 1, 512),
    "lora_alpha": _Param(float, 32.0, 0.0, 10_000.0, low_open=True),
    "lora_dropout": _Param(float, 0.0, 0.0, 1.0, high_open=True),
    "batch_size": _Param(int, 8, 1, 512),
    "max_length": _Param(int, 384, 16, 8192),
    "seed": _Param(int, 0, 0, 2**32 - 1),
    "weight_decay": _Param(float, 0.0, 0.0, 1.0),
}
FLAGS: dict[str, bool] = {"bf16": True}
CALLBACKS = ("progress", "should_stop")
OTHER_KEYS = ("output_dir", "quant")


@dataclass(frozen=True)
class TrainParams:
    """Validated hyper-parameters of one fine-tune (see ``PARAMS`` for ranges and defaults)."""

    epochs: int = 3
    max_steps: int | None = None
    learning_rate: float = 1e-3
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    batch_size: int = 8
    max_length: int = 384
    seed: int = 0
    weight_decay: float = 0.0
    bf16: bool = True
    quant: str = "Q8_0"


def parse_train_kwargs(key: str, train_kwargs: dict[str, Any] | None) -> tuple[TrainParams, Path]:
    """Validate ``train_kwargs`` for model ``key``: (hyper-parameters, output_dir).

    Raises LMError naming the bad parameter, its value and the allowed range. Unknown keys are
    ignored with a warning (DSPy optimizers may pass keys meant for other providers).
    """
    kw = dict(train_kwargs or {})
    output_dir = kw.get("output_dir")
    if not output_dir or not isinstance(output_dir, (str, os.PathLike)):
        raise LMError(
            f"fine-tuning needs train_kwargs['output_dir'] (the run's artifact folder, a path); got {output_dir!r}"
        )
    values: dict[str, Any] = {}
    for name, spec in PARAMS.items():
        value = kw.get(name, spec.default)
        if value is None:
            if spec.optional:
                values[name] = None
                continue
            value = spec.default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LMError(
                f"train_kwargs[{name!r}] = {value!r} is not a number; allowed: {spec.describe(name)}"
            )
        if spec.kind is int and (isinstance(value, float) and not value.is_integer()):
            raise LMError(
                f"train_kwargs[{name!r}] = {value!r} is not an integer; allowed: {spec.describe(name)}"
            )
        value = spec.kind(value)
        too_low = spec.low is not None and (value <= spec.low if spec.low_open else value < spec.low)
        too_high = spec.high is not None and (value >= spec.high if spec.high_open else value > spec.high)
        if too_low or too_high or (isinstance(value, float) and not math.isfinite(value)):
            raise LMError(
                f"train_kwargs[{name!r}] = {value!r} is out of range; allowed: {spec.describe(name)}"
            )
        values[name] = value
    for name, default in FLAGS.items():
        value = kw.get(name, default)
        if not isinstance(value, bool):
            raise LMError(f"train_kwargs[{name!r}] = {value!r} must be True or False (default {default})")
        values[name] = value
    quant = kw.get("quant") or DEFAULT_QUANT.get(key, "Q8_0")
    if quant not in ALLOWED_QUANTS:
        raise LMError(
            f"train_kwargs['quant'] = {quant!r} is not allowed; allowed: {', '.join(ALLOWED_QUANTS)} "
            f"(default for {key}: {DEFAULT_QUANT.get(key, 'Q8_0')}; 4-bit types like the shipped Q4_1 "
            "erase the fine-tune)"
        )
    values["quant"] = quant
    for name in callable_keys(kw):
        if not callable(kw[name]):
            raise LMError(f"train_kwargs[{name!r}] must be a callable; got {type(kw[name]).__name__}")
    unknown = sorted(set(kw) - set(PARAMS) - set(FLAGS) - set(CALLBACKS) - set(OTHER_KEYS))
    if unknown:
        logger.warning(
            "ignoring unknown train_kwargs %s; known: %s",
            unknown,
            ", ".join([*PARAMS, *FLAGS, *CALLBACKS, *OTHER_KEYS]),
        )
    return TrainParams(**values), Path(output_dir)


def callable_keys(kw: dict[str, Any]) -> list[str]:
    """The callback keys present (not None) in ``kw``."""
    return [name for name in CALLBACKS if kw.get(name) is not None]


def torch_threads() -> int:
    """Threads for torch: env ``STUDIO_TORCH_THREADS``, else 2, or 1 when the CPU is already busy
    (see ``core.lms.cpu``)."""
    return threads_for_native_code("STUDIO_TORCH_THREADS")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux ``ru_maxrss`` is in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

