"""Rows -> tokens, the LoRA training loop (answer-only loss), and the merged GGUF export."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import LMError, StepCancelled
from core.lms import catalog
from core.lms.lora.base_weights import load_base_model
from core.lms.lora.params import TrainParams, peak_rss_mb, torch_threads

logger = logging.getLogger(__name__)

# --- rows -> tokens -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedRow:
    """One training row as token ids: the prompt and the answer (the loss covers the answer only)."""

    prompt: list[int]
    answer: list[int]
    truncated: bool = False
    cut: int = 0
    """Tokens the row lost to ``max_length`` (prompt tokens from the left, answer tokens from the end)."""


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
        whole = len(prompt) + len(answer)
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
        out.append(EncodedRow(prompt, answer, truncated, whole - len(prompt) - len(answer)))
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
    row_tokens: float = 0.0
    """Mean tokens of a row before ``max_length`` cut it."""
    cut_tokens: float = 0.0
    """Mean tokens a cut row lost (0 when none was cut)."""
    max_cut_tokens: int = 0

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
    cuts = [r.cut for r in encoded if r.cut]
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
        row_tokens=round(sum(len(r.prompt) + len(r.answer) + r.cut for r in encoded) / len(encoded), 1),
        cut_tokens=round(sum(cuts) / len(cuts), 1) if cuts else 0.0,
        max_cut_tokens=max(cuts, default=0),
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

