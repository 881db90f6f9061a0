"""LoRA fine-tuning of the embedded GGUF models on the CPU (transformers + peft), served by llama.cpp.

``LocalLoRAProvider`` is the DSPy provider of the embedded LMs (see "Provider contract" in
docs/architecture.md). ``finetune`` does, in its own thread:

1. **Base weights.** The shipped GGUF is dequantized by transformers
   (``from_pretrained(dir, gguf_file=...)``) once and cached as safetensors with its tokenizer
   under ``model_cache_dir()/<key>-hf/``; later runs reload the cache in a fraction of a second.
   Training always starts from the base model of the catalogue key: a fine-tuned name
   (``embedded/<key>:ft-...``) is fine-tuned again *from the base weights*, not stacked on the
   previous fine-tune (the rows of a BetterTogether weight step are the whole task anyway).
2. **LoRA training.** Rows ``{"messages": [...]}`` are rendered with ``catalog.render_prompt``
   (prompt) and ``catalog.end_of_turn`` (closing the answer), then tokenized with llama.cpp's own
   tokenizer of the shipped GGUF (``add_bos=True, special=True``, exactly as the engine tokenizes
   its prompts): training sees the tokens the served model sees. The loss covers the answer
   tokens only, and the LM head is applied only at those positions (the full batch x seq x vocab
   logits would dominate a CPU step). Rows longer than ``max_length`` lose prompt tokens from the
   left (the BOS token is kept). Deterministic for a seed.
3. **Serving.** The LoRA is merged into the dequantized weights, written as a GGUF that copies
   every key/value of the shipped one (``core.lms.gguf_export``), and quantized to a type that
   keeps the fine-tune (SmolLM2: Q4_K_M, Gemma: Q8_0; never the shipped 4-bit type, which erases
   the LoRA delta).
4. **Artifact.** ``output_dir/<safe name>/model.gguf`` + ``meta.json`` (``kind: merged``), then
   ``LlamaEngine.shared().register_finetuned(name, folder)``; the new name is
   ``embedded/<key>:ft-<8 hex>``.

Training is serialised process-wide (one fine-tune at a time: two would only share 2 cores and
double the memory). Only ordinary exceptions leave ``finetune``: ``StepCancelled`` when
``should_stop()`` (or ``job.cancel()``) asks, ``LMError`` for everything else.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import resource
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dspy.clients.provider import Provider, TrainingJob
from dspy.clients.utils_finetune import TrainingStatus

from core.errors import LMError, RunCancelled, StepCancelled
from core.lms import catalog

logger = logging.getLogger(__name__)

MODEL_PREFIX = "embedded/"
FT_MARKER = ":ft-"
CACHE_FORMAT = 1  # bump to invalidate the safetensors caches

# Quantization of the served fine-tune, per model: types measured to keep a LoRA fine-tune.
DEFAULT_QUANT: dict[str, str] = {"smollm2-135m": "Q4_K_M", "gemma3-270m": "Q8_0"}
ALLOWED_QUANTS: tuple[str, ...] = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16")

_TRAIN_LOCK = threading.Lock()
_CACHE_LOCK = threading.Lock()


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


def model_key(model: str) -> str:
    """Catalogue key of ``embedded/<key>`` or of a fine-tuned ``embedded/<key>:ft-...`` name."""
    name = model[len(MODEL_PREFIX) :] if isinstance(model, str) and model.startswith(MODEL_PREFIX) else model
    if not isinstance(name, str):
        raise LMError(f"model {model!r} is not an embedded model name (embedded/<key>)")
    key = name.split(":", 1)[0]
    return catalog.get_model(key).key  # LMError naming the allowed keys


def safe_name(model_name: str) -> str:
    """A folder name for ``model_name`` (``embedded/smollm2-135m:ft-1a2b`` -> ``smollm2-135m_ft-1a2b``)."""
    name = model_name[len(MODEL_PREFIX) :] if model_name.startswith(MODEL_PREFIX) else model_name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def torch_threads() -> int:
    """Threads for torch: env ``STUDIO_TORCH_THREADS``, else 2, or 1 when the CPU is already busy.

    Measured on 2 shared cores with other processes running (load average ~7): a training step
    took 75-98 s with 2 OpenMP threads and 14 s with 1 thread (OpenMP threads spin-waiting on a
    core another process holds). Without contention 2 threads are faster. So without the env
    variable: 2 threads (at most the core count) unless the 1-minute load average already
    reaches the core count, then 1.
    """
    value = os.environ.get("STUDIO_TORCH_THREADS")
    if value:
        try:
            n = int(value)
        except ValueError as e:
            raise LMError(f"STUDIO_TORCH_THREADS={value!r} must be a positive integer") from e
        if n < 1:
            raise LMError(f"STUDIO_TORCH_THREADS={value!r} must be a positive integer")
        return n
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0] >= cores
    except OSError:
        busy = False
    return 1 if busy else max(1, min(2, cores))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux ``ru_maxrss`` is in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# --- base weights ---------------------------------------------------------------------------------


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


# --- rows -> tokens -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedRow:
    """One training row as token ids: the prompt and the answer (the loss covers the answer only)."""

    prompt: list[int]
    answer: list[int]
    truncated: bool = False


class Tokenizer:
    """llama.cpp's tokenizer of the shipped GGUF (vocab only), as the engine tokenizes prompts."""

    def __init__(self, key: str) -> None:
        import llama_cpp

        self.key = key
        self._llama = llama_cpp.Llama(model_path=str(catalog.gguf_path(key)), vocab_only=True, verbose=False)
        self.bos = int(self._llama.token_bos())

    def prompt(self, text: str) -> list[int]:
        """Tokens of a rendered prompt (BOS added when the model wants one)."""
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def answer(self, text: str) -> list[int]:
        """Tokens of an answer continuing a prompt (no BOS)."""
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))


def _row_messages(row: Any, index: int) -> list[dict]:
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages:
        raise LMError(
            f"training row {index} must be {{'messages': [...]}} (chat format); got {str(row)[:120]!r}"
        )
    if not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
        raise LMError(f"training row {index} must end with an assistant message (the target)")
    return messages


def encode_rows(
    key: str, rows: Sequence[dict], max_length: int, tokenizer: Tokenizer | None = None
) -> list[EncodedRow]:
    """Render and tokenize chat rows; truncate each to ``max_length`` keeping the answer.

    The prompt loses tokens from the left (after the BOS token, which is kept); an answer longer
    than ``max_length - 1`` tokens is cut at the end (it keeps at least one prompt token).
    """
    tokenizer = tokenizer or Tokenizer(key)
    end = catalog.end_of_turn(key)
    out = []
    for i, row in enumerate(rows):
        messages = _row_messages(row, i)
        try:
            prompt_text = catalog.render_prompt(key, messages[:-1], add_generation_prompt=True)
        except LMError as e:
            raise LMError(f"training row {i}: {e}") from e
        answer_text = messages[-1].get("content")
        if not isinstance(answer_text, str):
            raise LMError(f"training row {i}: the assistant message must have a str 'content'")
        prompt = tokenizer.prompt(prompt_text)
        answer = tokenizer.answer(answer_text + end)
        truncated = False
        if len(answer) > max_length - 1:
            answer, truncated = answer[: max_length - 1], True
        room = max_length - len(answer)
        if len(prompt) > room:
            keep_bos = bool(prompt) and prompt[0] == tokenizer.bos
            head = prompt[:1] if keep_bos else []
            tail_len = room - len(head)
            prompt = head + (prompt[-tail_len:] if tail_len > 0 else [])
            truncated = True
        out.append(EncodedRow(prompt, answer, truncated))
    return out


# --- training -------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What one training run produced (the merged model stays in memory for the export)."""

    steps: int
    total_steps: int
    losses: list[float]
    seconds: float
    seconds_per_step: float
    rows: int
    truncated_rows: int
    peak_rss_mb: float
    threads: int = 1
    model: Any = field(default=None, repr=False)

    @property
    def first_loss(self) -> float | None:
        """Loss of the first step."""
        return self.losses[0] if self.losses else None

    @property
    def final_loss(self) -> float | None:
        """Loss of the last step."""
        return self.losses[-1] if self.losses else None


def batch_schedule(n_rows: int, params: TrainParams) -> list[list[int]]:
    """Row indices of every optimizer step: seeded shuffle per epoch, capped by ``max_steps``."""
    rng = random.Random(params.seed)
    batches: list[list[int]] = []
    for _ in range(params.epochs):
        order = list(range(n_rows))
        rng.shuffle(order)
        batches += [order[i : i + params.batch_size] for i in range(0, n_rows, params.batch_size)]
    if params.max_steps is not None:
        batches = batches[: params.max_steps]
    return batches


def _batch_tensors(rows: list[EncodedRow], pad_id: int) -> tuple[Any, Any, Any, Any, Any]:
    """(input_ids, attention_mask, target row index, target hidden position, target token ids)."""
    import torch

    length = max(len(r.prompt) + len(r.answer) for r in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    b_idx, pos, targets = [], [], []
    for b, row in enumerate(rows):
        ids = row.prompt + row.answer
        input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[b, : len(ids)] = 1
        for j in range(len(row.prompt), len(ids)):
            b_idx.append(b)
            pos.append(j - 1)  # the hidden state at j-1 predicts token j
            targets.append(ids[j])
    return (
        input_ids,
        mask,
        torch.tensor(b_idx, dtype=torch.long),
        torch.tensor(pos, dtype=torch.long),
        torch.tensor(targets, dtype=torch.long),
    )


def answer_loss(causal_lm: Any, rows: list[EncodedRow], bf16: bool, pad_id: int = 0) -> Any:
    """Mean cross-entropy over the answer tokens; the LM head runs only at those positions."""
    import torch
    import torch.nn.functional as F

    input_ids, mask, b_idx, pos, targets = _batch_tensors(rows, pad_id)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = causal_lm.model(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        logits = causal_lm.lm_head(hidden[b_idx, pos])
    logits = logits.float()
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets)


def train_lora(
    key: str,
    rows: Sequence[dict],
    params: TrainParams,
    *,
    progress: Callable[[int, int, float], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
    merge: bool = True,
) -> TrainResult:
    """Train a LoRA on ``rows`` for ``key``; return losses and (with ``merge``) the merged model.

    ``progress(step, total_steps, loss)`` is called after every optimizer step; ``should_stop()``
    is checked before every step and raises StepCancelled when it returns True.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    if not rows:
        raise LMError("fine-tuning needs at least one training row; got 0")
    threads = torch_threads()
    torch.set_num_threads(threads)
    started = time.monotonic()
    encoded = encode_rows(key, rows, params.max_length)
    truncated = sum(r.truncated for r in encoded)
    if truncated:
        logger.info(
            "%d of %d rows were longer than max_length=%d and were truncated",
            truncated,
            len(rows),
            params.max_length,
        )
    batches = batch_schedule(len(encoded), params)
    total = len(batches)

    torch.manual_seed(params.seed)
    base = load_base_model(key)
    config = LoraConfig(
        r=params.lora_rank,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(base, config)
    peft_model.train()
    causal_lm = peft_model.get_base_model()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate, weight_decay=params.weight_decay)
    logger.info(
        "fine-tuning %s: %d rows, %d steps (batch %d, %d epochs%s), LoRA r=%d alpha=%g, lr=%g, %d trainable "
        "parameters, %d torch threads, bf16=%s",
        key,
        len(rows),
        total,
        params.batch_size,
        params.epochs,
        f", max_steps {params.max_steps}" if params.max_steps else "",
        params.lora_rank,
        params.lora_alpha,
        params.learning_rate,
        sum(p.numel() for p in trainable),
        torch.get_num_threads(),
        params.bf16,
    )
    losses: list[float] = []
    train_started = time.monotonic()
    for step, batch in enumerate(batches, start=1):
        if should_stop is not None and should_stop():
            raise StepCancelled(f"fine-tuning cancelled at step {step - 1} of {total}")
        step_started = time.monotonic()
        loss = answer_loss(causal_lm, [encoded[i] for i in batch], params.bf16)
        if not torch.isfinite(loss):
            raise LMError(
                f"fine-tuning diverged at step {step} (loss {loss.item()}); lower learning_rate "
                f"(now {params.learning_rate})"
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.item())
        losses.append(value)
        logger.info(
            "step %d/%d loss %.4f (%.1f s, peak RSS %.0f MB)",
            step,
            total,
            value,
            time.monotonic() - step_started,
            peak_rss_mb(),
        )
        if progress is not None:
            progress(step, total, value)
    train_seconds = time.monotonic() - train_started
    merged = None
    if merge:
        peft_model.eval()
        merged = peft_model.merge_and_unload()
    return TrainResult(
        steps=len(losses),
        total_steps=total,
        losses=losses,
        seconds=round(time.monotonic() - started, 2),
        seconds_per_step=round(train_seconds / max(1, len(losses)), 3),
        rows=len(rows),
        truncated_rows=truncated,
        peak_rss_mb=peak_rss_mb(),
        threads=threads,
        model=merged,
    )


# --- export ---------------------------------------------------------------------------------------


def export_merged(key: str, merged_model: Any, folder: Path, quant: str) -> tuple[Path, float]:
    """Write ``merged_model`` as ``folder/model.gguf`` quantized to ``quant``; (path, seconds)."""
    from core.lms import gguf_export

    started = time.monotonic()
    folder.mkdir(parents=True, exist_ok=True)
    full = folder / "model.full.gguf"
    target = folder / "model.gguf"
    try:
        gguf_export.write_gguf(merged_model.state_dict(), catalog.gguf_path(key), full, dtype="F32")
        if quant == "F16":
            gguf_export.write_gguf(merged_model.state_dict(), catalog.gguf_path(key), target, dtype="F16")
        else:
            gguf_export.quantize_gguf(full, target, quant, nthread=torch_threads())
    finally:
        full.unlink(missing_ok=True)
    return target, round(time.monotonic() - started, 2)


# --- provider -------------------------------------------------------------------------------------


class LocalLoRATrainingJob(TrainingJob):
    """A fine-tuning job of ``LocalLoRAProvider``; ``status()`` and ``progress`` report where it is."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress: dict[str, Any] = {}
        self.started = False
        self.cancel_event = threading.Event()

    def cancel(self) -> bool:
        """Ask the training loop to stop before its next step (it raises StepCancelled)."""
        self.cancel_event.set()
        return True

    def status(self) -> str:
        """A ``dspy.clients.utils_finetune.TrainingStatus`` value."""
        if self.done():
            result = self.result()
            if isinstance(result, StepCancelled):
                return TrainingStatus.cancelled.value
            return (
                TrainingStatus.failed.value
                if isinstance(result, Exception)
                else TrainingStatus.succeeded.value
            )
        if self.cancel_event.is_set():
            return TrainingStatus.cancelled.value
        return TrainingStatus.running.value if self.started else TrainingStatus.pending.value


class LocalLoRAProvider(Provider):
    """Fine-tunes embedded models with LoRA on the CPU and serves them with the llama.cpp engine."""

    def __init__(self) -> None:
        super().__init__()
        self.finetunable = True
        self.TrainingJob = LocalLoRATrainingJob

    def __deepcopy__(self, memo: dict) -> LocalLoRAProvider:
        return self

    @staticmethod
    def is_provider_model(model: str) -> bool:
        """Embedded models are ``embedded/<key>`` (fine-tuned: ``embedded/<key>:ft-...``)."""
        return isinstance(model, str) and model.startswith(MODEL_PREFIX)

    def finetune(
        self,
        job: Any,
        model: str,
        train_data: list[dict[str, Any]],
        train_data_format: Any,
        train_kwargs: dict[str, Any] | None = None,
    ) -> str:
        """Fine-tune ``model`` on ``train_data``; return the new registered model name.

        Raises StepCancelled when cancelled between steps and LMError for anything else.
        """
        try:
            return self._finetune(job, model, train_data, train_data_format, train_kwargs)
        except (StepCancelled, LMError):
            raise
        except RunCancelled as e:
            raise StepCancelled(f"fine-tuning {model} cancelled: {e}") from None
        except BaseException as e:  # noqa: BLE001 - a BaseException would leave DSPy's job unresolved
            logger.exception("fine-tuning %s failed", model)
            raise LMError(f"fine-tuning {model} failed: {type(e).__name__}: {e}") from e

    def _finetune(
        self,
        job: Any,
        model: str,
        train_data: list[dict[str, Any]],
        train_data_format: Any,
        train_kwargs: dict[str, Any] | None,
    ) -> str:
        fmt = getattr(train_data_format, "value", train_data_format)
        if fmt not in (None, "chat"):
            raise LMError(f"train_data_format {fmt!r} is not supported by the embedded models; allowed: chat")
        key = model_key(model)
        params, output_dir = parse_train_kwargs(key, train_kwargs)
        if not train_data:
            raise LMError("fine-tuning needs at least one training row; got 0")
        kw = train_kwargs or {}
        user_progress, user_stop = kw.get("progress"), kw.get("should_stop")
        cancel_event = getattr(job, "cancel_event", None)

        def should_stop() -> bool:
            if cancel_event is not None and cancel_event.is_set():
                return True
            return bool(user_stop()) if user_stop is not None else False

        def progress(step: int, total: int, loss: float) -> None:
            if job is not None and hasattr(job, "progress"):
                job.progress = {
                    "step": step,
                    "total_steps": total,
                    "loss": loss,
                    "peak_rss_mb": peak_rss_mb(),
                }
            if user_progress is not None:
                user_progress(step, total, loss)

        new_name = f"{MODEL_PREFIX}{key}{FT_MARKER}{uuid.uuid4().hex[:8]}"
        folder = output_dir / safe_name(new_name)
        if model != f"{MODEL_PREFIX}{key}":
            logger.info("%s is fine-tuned again from the base weights of %s", model, key)
        if should_stop():
            raise StepCancelled("fine-tuning cancelled before step 1")
        with _TRAIN_LOCK:
            if job is not None and hasattr(job, "started"):
                job.started = True
            try:
                result = train_lora(key, train_data, params, progress=progress, should_stop=should_stop)
                if should_stop():
                    raise StepCancelled(
                        f"fine-tuning cancelled after step {result.steps} (before the export)"
                    )
                gguf, export_seconds = export_merged(key, result.model, folder, params.quant)
                result.model = None
                meta = {
                    "base": key,
                    "kind": "merged",
                    "file": gguf.name,
                    "quant": params.quant,
                    "source_model": model,
                    "train": {
                        **{k: v for k, v in asdict(params).items() if k != "quant"},
                        "steps": result.steps,
                        "total_steps": result.total_steps,
                        "first_loss": result.first_loss,
                        "final_loss": result.final_loss,
                        "losses": [round(x, 5) for x in result.losses],
                        "seconds": result.seconds,
                        "seconds_per_step": result.seconds_per_step,
                        "export_seconds": export_seconds,
                        "rows": result.rows,
                        "truncated_rows": result.truncated_rows,
                        "peak_rss_mb": peak_rss_mb(),
                        "torch_threads": result.threads,
                    },
                }
                (folder / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        register_artifact(new_name, folder)
        logger.info(
            "fine-tuned %s -> %s (%d steps, final loss %.4f, %s, %s)",
            model,
            new_name,
            result.steps,
            result.final_loss or float("nan"),
            params.quant,
            folder,
        )
        return new_name


def register_artifact(model_name: str, folder: Path) -> None:
    """Serve ``model_name`` from ``folder`` with the shared llama.cpp engine."""
    from core.lms.embedded import LlamaEngine

    LlamaEngine.shared().register_finetuned(model_name, folder)
