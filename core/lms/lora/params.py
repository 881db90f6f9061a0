"""Hyper-parameters of a LoRA fine-tune: the one table of defaults and ranges, validation of
``train_kwargs``, quantization, threads.

``PARAMS`` is the provider's contract, valid for any caller of ``lm.finetune(train_kwargs=...)``;
the run configuration (``core.optimizers.finetune.FinetuneSettings``) builds its fields from the same table, so
a default or a range is written once and the dashboard, the config and the provider cannot disagree.
"""

from __future__ import annotations

import logging
import math
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import LMError, shown
from core.lms.cpu import threads_for_native_code

logger = logging.getLogger(__name__)

# Quantization of the served fine-tune, per model: types measured to keep a LoRA fine-tune.
DEFAULT_QUANT: dict[str, str] = {"smollm2-135m": "Q4_K_M", "gemma3-270m": "Q8_0"}
ALLOWED_QUANTS: tuple[str, ...] = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16")


# --- hyper-parameters ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HyperParam:
    """One hyper-parameter: its type, default and allowed range (``low``/``high`` inclusive unless
    ``*_open``), or for a ``str`` its allowed ``choices``; ``optional``: None is allowed and means "not set"."""

    kind: type  # int, float, or str (one of ``choices``)
    default: int | float | str | None
    low: int | float | None
    high: int | float | None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False
    description: str = ""
    choices: tuple[str, ...] = ()

    def describe(self, name: str) -> str:
        if self.choices:
            return f"{name} one of {', '.join(self.choices)} (default {self.default})"
        lo = "" if self.low is None else f"{self.low} {'<' if self.low_open else '<='} "
        hi = "" if self.high is None else f" {'<' if self.high_open else '<='} {self.high}"
        article = "an" if self.kind.__name__[0] in "aeiou" else "a"
        extra = ", or None" if self.optional else ""
        return f"{lo}{name}{hi} ({article} {self.kind.__name__}{extra}; default {self.default})"

    def bounds(self) -> dict[str, int | float]:
        """The range as the keyword arguments of a pydantic ``Field`` (``ge``/``gt``, ``le``/``lt``)."""
        out: dict[str, int | float] = {}
        if self.low is not None:
            out["gt" if self.low_open else "ge"] = self.low
        if self.high is not None:
            out["lt" if self.high_open else "le"] = self.high
        return out

    def check(self, name: str, value: Any) -> int | float | str | None:
        """``value`` converted to ``kind`` (None: the default, unless optional); LMError naming the
        parameter, its value and the allowed range otherwise."""
        if value is None:
            if self.optional:
                return None
            value = self.default
        if self.choices:
            if value not in self.choices:
                raise LMError(f"train_kwargs[{shown(name)}] = {shown(value)} is not allowed; allowed: "
                              f"{self.describe(name)}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LMError(f"train_kwargs[{shown(name)}] = {shown(value)} is not a number; allowed: {self.describe(name)}")
        if self.kind is int and isinstance(value, float) and not value.is_integer():
            raise LMError(f"train_kwargs[{shown(name)}] = {shown(value)} is not an integer; allowed: {self.describe(name)}")
        value = self.kind(value)
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high or (isinstance(value, float) and not math.isfinite(value)):
            raise LMError(f"train_kwargs[{shown(name)}] = {shown(value)} is out of range; allowed: {self.describe(name)}")
        return value


# Defaults and ranges are the run configuration's since its first version: every run, benchmark and
# estimate used them (the provider's own table had drifted to epochs 3 and wider ranges, e.g. max_length
# up to 8192, that no run could reach). A CPU fine-tune of a 135M-270M model needs no more.
PARAMS: dict[str, HyperParam] = {
    "epochs": HyperParam(int, 2, 1, 20, description="passes over the training rows"),
    "max_steps": HyperParam(int, None, 1, 10_000, optional=True,
                            description="stop after this many training steps (None: all the epochs)"),
    "learning_rate": HyperParam(float, 1e-3, 0.0, 1.0, low_open=True, description="AdamW learning rate"),
    "lora_rank": HyperParam(int, 16, 1, 256, description="rank r of the LoRA matrices"),
    "lora_alpha": HyperParam(int, 32, 1, 512, description="LoRA scale: the update is multiplied by alpha / r"),
    "lora_dropout": HyperParam(float, 0.0, 0.0, 1.0, high_open=True, description="dropout on the LoRA input"),
    "batch_size": HyperParam(int, 8, 1, 128, description="training rows per step"),
    # Memory of a CPU fine-tune grows with the tokens of a forward pass: a batch of 8 rows of 384 tokens in one pass
    # took 4.9 GB above the process's RSS on SmolLM2, in passes of at most 768 tokens 1.4-1.9 GB, at the same or a
    # better speed (rows sorted by length pad less); 384 saved 0.5 GB more and cost 7-13 % of speed
    # (`python bench/finetune_memory.py`, 7 Dec 2026).
    "micro_batch_tokens": HyperParam(int, 768, 32, 524_288,
                                     description="padded tokens per forward pass: a batch larger than this trains in "
                                                 "several passes whose gradients add up (less memory, the same step)"),
    # The budget is chosen on held-out rows (``core.lms.lora.validation``): epochs and max_steps are its upper
    # bound, the training keeps its best checkpoint and stops after `patience` checkpoints without a better one.
    "validation_fraction": HyperParam(float, 0.2, 0.0, 0.5,
                                      description="share of the training rows held out to choose the training budget "
                                                  "(never trained on; 0: train every row for the whole budget)"),
    "patience": HyperParam(int, 2, 1, 50,
                           description="validation checks without a better score before training stops early"),
    "eval_every": HyperParam(int, None, 1, 10_000, optional=True,
                             description="training steps between validation checks (None: after every epoch)"),
    "max_minutes": HyperParam(float, None, 0.0, 10_000.0, low_open=True, optional=True,
                              description="stop training after this many minutes, scoring included (at least one step "
                                          "trains; the best checkpoint so far is kept; None: no time bound)"),
    # 512: the default run's rows (support triage's classify predictor, ~414 tokens) train whole; at 384 every one lost
    # ~30 prompt tokens from the left, and rows cut by different amounts share no prompt prefix (core.lms.lora.prefix)
    "max_length": HyperParam(int, 512, 32, 4096,
                             description="tokens per row; a longer row loses prompt tokens from the left"),
    "seed": HyperParam(int, 0, 0, 2**32 - 1, description="row order and LoRA initialisation"),
    "weight_decay": HyperParam(float, 0.0, 0.0, 1.0, description="AdamW weight decay"),
    # merged is the default because it serves faster. `python bench/serve_finetune.py` (SmolLM2, 48 training rows,
    # 12 steps, one LoRA exported both ways, 30 held-out tickets, 2 alternating rounds; 7 Dec 2026, 2 cores shared
    # with other work): merged (Q4_K_M) 25.9 calls/min, load 0.53 s, export 26.2 s, accuracy 0.60; lora (F32
    # adapter on the shipped Q4_1 GGUF) 19.3 calls/min, load 0.39 s, export 17.5 s, accuracy 0.50; base model
    # 21.2 calls/min, accuracy 0.33. A quieter 2-step run (`--train 8 --test 8 --max-steps 2 --rounds 1`) gave
    # merged 77.5 and lora 53.4 calls/min. The adapter is applied at every call, on the Q4_1 base, which serves
    # slower than Q4_K_M. Its weights are the trained ones (the LoRA was trained on what the Q4_1 GGUF
    # dequantizes to), and it stays closer to the torch model: the bench's kl_to_torch in that 2-step run was
    # 0.0058 for lora and 0.0208 for merged. The 30 tickets did not show that as accuracy (3 tickets apart).
    "serve": HyperParam(str, "merged", None, None, choices=("lora", "merged"),
                        description="how the fine-tune is served: merged (the LoRA merged into the weights, "
                                    "re-quantized) or lora (a GGUF adapter applied to the base model at load time)"),
}
# share_prefix: a step runs its rows' common prompt prefix once (core.lms.lora.prefix); off only to measure it.
FLAGS: dict[str, bool] = {"bf16": True, "gradient_checkpointing": False, "release_served_models": True,
                          "share_prefix": True}


def train_value(train_kwargs: dict[str, Any] | None, name: str) -> Any:
    """Hyper-parameter ``name`` of ``train_kwargs`` checked against ``PARAMS``; its ``PARAMS`` default when
    absent or None (None for an optional one). How a provider that reads only a few of them (the scripted
    and hosted ones) takes its defaults: from this table, never from a fallback of its own."""
    return PARAMS[name].check(name, (train_kwargs or {}).get(name))


def train_overrides(**values: Any) -> dict[str, Any]:
    """Hyper-parameters a recipe sets differently from ``PARAMS``'s defaults (a model family's measured
    values, a smoke test's tiny budget), each checked against its range. ``LMError`` for a name ``PARAMS``
    does not hold, a bad value, or a value equal to the default (not an override: it would hide the
    default's later changes)."""
    unknown = sorted(set(values) - set(PARAMS))
    if unknown:
        raise LMError(f"unknown fine-tuning hyper-parameter(s) {', '.join(unknown)}; allowed: {', '.join(PARAMS)}")
    same = sorted(name for name, value in values.items() if value == PARAMS[name].default)
    if same:
        raise LMError(f"override(s) {', '.join(f'{n}={values[n]!r}' for n in same)} equal the PARAMS default; "
                      "drop them from the overrides")
    return {name: PARAMS[name].check(name, value) for name, value in values.items()}
CALLBACKS = ("progress", "should_stop", "on_checkpoint")
OTHER_KEYS = ("output_dir", "quant", "validation_data")


@dataclass(frozen=True)
class TrainParams:
    """Validated hyper-parameters of one fine-tune (defaults and ranges: ``PARAMS``)."""

    epochs: int = PARAMS["epochs"].default
    max_steps: int | None = PARAMS["max_steps"].default
    learning_rate: float = PARAMS["learning_rate"].default
    lora_rank: int = PARAMS["lora_rank"].default
    lora_alpha: int = PARAMS["lora_alpha"].default
    lora_dropout: float = PARAMS["lora_dropout"].default
    batch_size: int = PARAMS["batch_size"].default
    max_length: int = PARAMS["max_length"].default
    seed: int = PARAMS["seed"].default
    weight_decay: float = PARAMS["weight_decay"].default
    serve: str = PARAMS["serve"].default
    micro_batch_tokens: int = PARAMS["micro_batch_tokens"].default
    validation_fraction: float = PARAMS["validation_fraction"].default
    patience: int = PARAMS["patience"].default
    eval_every: int | None = PARAMS["eval_every"].default
    max_minutes: float | None = PARAMS["max_minutes"].default
    bf16: bool = FLAGS["bf16"]
    gradient_checkpointing: bool = FLAGS["gradient_checkpointing"]
    release_served_models: bool = FLAGS["release_served_models"]
    share_prefix: bool = FLAGS["share_prefix"]
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
            f"fine-tuning needs train_kwargs['output_dir'] (the run's artifact folder, a path); got {shown(output_dir)}"
        )
    values: dict[str, Any] = {name: spec.check(name, kw.get(name, spec.default)) for name, spec in PARAMS.items()}
    for name, default in FLAGS.items():
        value = kw.get(name, default)
        if not isinstance(value, bool):
            raise LMError(f"train_kwargs[{shown(name)}] = {shown(value)} must be True or False (default {default})")
        values[name] = value
    quant = kw.get("quant") or DEFAULT_QUANT.get(key, "Q8_0")
    if quant not in ALLOWED_QUANTS:
        raise LMError(
            f"train_kwargs['quant'] = {shown(quant)} is not allowed; allowed: {', '.join(ALLOWED_QUANTS)} "
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


_earlier_peak_kb = 0
"""The process's peak before the last ``restart_peak_rss`` (which lowers the kernel's own)."""


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux ``ru_maxrss`` is in KiB), the peak before any
    ``restart_peak_rss`` included."""
    return round(max(_earlier_peak_kb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024, 1)


def restart_peak_rss() -> bool:
    """Start a new peak for ``window_peak_rss_mb``: Linux resets a process's high-water RSS (VmHWM) when ``5`` is
    written to ``/proc/self/clear_refs``. A long-lived process (the tests', the app's) may have peaked higher before
    a fine-tune than the fine-tune does, so the process's lifetime peak says nothing about what training took.
    False where the reset is not possible (``window_peak_rss_mb`` is then the lifetime peak)."""
    global _earlier_peak_kb
    _earlier_peak_kb = max(_earlier_peak_kb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, _vm_hwm_kb() or 0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _vm_hwm_kb() is not None


def _vm_hwm_kb() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def window_peak_rss_mb() -> float:
    """Peak resident memory since the last ``restart_peak_rss``, in MB (the lifetime peak where it cannot tell)."""
    kb = _vm_hwm_kb()
    return round(kb / 1024, 1) if kb is not None else peak_rss_mb()

