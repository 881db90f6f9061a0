"""The LoRA training loop (answer-only loss), its budget chosen on held-out rows (``validation``); the rows' tokens
are ``rows``', the served forms ``export``'s."""

from __future__ import annotations

import gc
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from core.errors import LMError, StepCancelled
from core.lms.cpu import return_freed_memory
from core.lms.lora.base_weights import ensure_hf_cache, load_base_model
from core.lms.lora.device import TrainDevice, check_fits, current_rss_mb, model_size, pass_token_budget, pick_device
from core.lms.lora.params import TrainParams, restart_peak_rss, torch_threads, window_peak_rss_mb
from core.lms.lora.prefix import SharedPrefix, pass_tokens, step_shared
from core.lms.lora.rows import EncodedRow, encode_rows
from core.lms.lora.validation import BudgetChooser, Checkpoint, holdout_split, score_rows, trainable_tensors

logger = logging.getLogger(__name__)

# --- training -------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What one training run produced (the merged model, or the PEFT model, stays in memory for the export)."""

    steps: int
    total_steps: int
    losses: list[float]
    seconds: float
    seconds_per_step: float
    rows: int
    truncated_rows: int
    peak_rss_mb: float
    """Peak RSS through the training steps (the process's earlier peaks not counted; the merge after them not
    either: meta.json's ``peak_rss_mb`` is the process's whole peak)."""
    threads: int = 1
    merge_peak_rss_mb: float = 0.0
    """Peak RSS from the end of the training steps through the LoRA's return to the CPU and the merge."""
    model: Any = field(default=None, repr=False)
    """The LoRA merged into the base weights (``train_lora(merge=True)``), else None."""
    peft_model: Any = field(default=None, repr=False)
    """The PEFT model with its LoRA unmerged (``train_lora(merge=False)``: what ``save_pretrained`` writes as an
    adapter), else None."""
    row_tokens: float = 0.0
    """Mean tokens of a row before ``max_length`` cut it."""
    cut_tokens: float = 0.0
    """Mean tokens a cut row lost (0 when none was cut)."""
    max_cut_tokens: int = 0
    device: TrainDevice | None = None
    """Where it trained, in which precision."""
    memory_estimate_mb: float = 0.0
    """What ``device.check_fits`` estimated the training needs (MiB, as ``peak_rss_mb``)."""
    rss_before_mb: float = 0.0
    """This process's RSS before training (peak RSS minus it: what the training took on the CPU)."""
    device_peak_mb: float = 0.0
    """Peak memory torch reserved on a GPU (0 on the CPU)."""
    held_out_rows: int = 0
    """Rows held out to choose the budget (0: every row trained for the whole budget)."""
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    """Each checkpoint's step and held-out scores (``validation.Checkpoint.to_json``), step 0 the untrained LoRA."""
    chosen_step: int | None = None
    """The step whose LoRA the model carries (None without held-out rows: the last)."""
    stopped: str = "budget"
    """Why training ended: ``budget`` (every epoch, or ``max_steps``), ``patience`` (early) or ``time``."""
    validation_seconds: float = 0.0
    """Time spent scoring checkpoints (not in ``seconds_per_step``)."""
    pass_tokens: int = 0
    """The tokens a forward pass held at most (``device.pass_token_budget`` of ``micro_batch_tokens``)."""
    shared_tokens: float = 0.0
    """Mean prompt-prefix tokens a step's rows shared, run once for the step (``prefix``; 0: whole rows)."""

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


def micro_batches(batch: Sequence[int], lengths: Sequence[int], budget: int, shared: int = 0) -> list[list[int]]:
    """The rows of one optimizer step (indices into ``lengths``, their tokens) as forward passes of at most
    ``budget`` padded tokens each (``prefix.pass_tokens``: a ``shared`` prefix counts once): longest first, so a
    pass pads to its first row; a row longer than the budget goes alone. Their gradients add up to the whole
    batch's (``train_lora`` weighs each pass by its answer tokens), in the memory of one pass."""
    out: list[list[int]] = []
    current: list[int] = []
    for i in sorted(batch, key=lambda i: (-lengths[i], i)):
        if current and pass_tokens([lengths[current[0]]] * (len(current) + 1), shared) > budget:
            out.append(current)
            current = []
        current.append(i)
    if current:
        out.append(current)
    return out


def _batch_tensors(rows: list[EncodedRow], pad_id: int, shared: int = 0) -> tuple[Any, Any, Any, Any, Any]:
    """(input_ids, attention_mask, target row index, target hidden position, target token ids) of the rows' tokens
    after the first ``shared`` (a ``prefix.SharedPrefix`` holds those)."""
    import torch

    length = max(len(r.prompt) + len(r.answer) for r in rows) - shared
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    b_idx, pos, targets = [], [], []
    for b, row in enumerate(rows):
        ids = (row.prompt + row.answer)[shared:]
        input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[b, : len(ids)] = 1
        for j in range(len(row.prompt) - shared, len(ids)):
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


def answer_logits(causal_lm: Any, rows: list[EncodedRow], device: TrainDevice, pad_id: int = 0,
                  prefix: SharedPrefix | None = None) -> tuple[Any, Any, Any]:
    """(logits in float32, target token ids, row index of each target) at the answer positions only: the LM head
    runs only there (on ``device``, under its autocast). With a ``prefix`` (the rows' shared first tokens, computed
    once) only the rows' own tokens run."""
    import torch

    shared = prefix.length if prefix is not None else 0
    input_ids, mask, b_idx, pos, targets = (t.to(device.kind) for t in _batch_tensors(rows, pad_id, shared))
    cache = {}
    if prefix is not None:
        mask = torch.cat([torch.ones((len(rows), shared), dtype=mask.dtype, device=mask.device), mask], dim=1)
        cache = {"past_key_values": prefix.cache(len(rows)), "use_cache": True}
    with torch.autocast(device_type=device.kind, dtype=getattr(torch, device.autocast_dtype), enabled=device.autocast):
        hidden = causal_lm.model(input_ids=input_ids, attention_mask=mask, **({"use_cache": False} | cache)
                                 ).last_hidden_state
        logits = causal_lm.lm_head(hidden[b_idx, pos])
    logits = logits.float()
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits, targets, b_idx


def answer_loss(causal_lm: Any, rows: list[EncodedRow], device: TrainDevice, pad_id: int = 0,
                prefix: SharedPrefix | None = None) -> Any:
    """Mean cross-entropy over the answer tokens."""
    import torch.nn.functional as F

    logits, targets, _ = answer_logits(causal_lm, rows, device, pad_id, prefix)
    return F.cross_entropy(logits, targets)


def train_lora(
    key: str,
    rows: Sequence[dict],
    params: TrainParams,
    *,
    progress: Callable[[int, int, float], Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
    merge: bool = True,
    device: TrainDevice | None = None,
    on_checkpoint: Callable[[dict[str, Any]], Any] | None = None,
    validation_rows: Sequence[dict] | None = None,
) -> TrainResult:
    """Train a LoRA on ``rows`` for ``key``; return losses and the merged model (``merge``) or the PEFT model.

    ``progress(step, total_steps, loss)`` is called after every optimizer step; ``should_stop()``
    is checked before every step and raises StepCancelled when it returns True. ``device``: where to train
    (default ``pick_device``); LMError before the first step when the training does not fit in its memory. The
    returned model is on the CPU in float32, whatever the device.

    With ``validation_fraction`` > 0, ``validation_rows`` (the run's validation examples as chat rows), or else a
    stratified share of ``rows`` when there are enough, is held out (never trained on) and scores the LoRA before training and at every checkpoint (each epoch, or every ``eval_every`` steps);
    training stops after ``patience`` checkpoints without a better score or past ``max_minutes``, and the returned
    model carries the best checkpoint's LoRA (``validation``). ``on_checkpoint(data)`` hears each checkpoint
    (``step``, ``val_loss``, ``val_exact``, ``best``) and, last, the choice (``chosen_step``, ``stopped``).
    """
    import torch
    from peft import LoraConfig, get_peft_model

    if not rows:
        raise LMError("fine-tuning needs at least one training row; got 0")
    threads = torch_threads()
    torch.set_num_threads(threads)
    started = time.monotonic()
    every_row = encode_rows(key, rows, params.max_length)
    truncated = sum(r.truncated for r in every_row)
    cuts = [r.cut for r in every_row if r.cut]
    if truncated:
        logger.info(
            "%d of %d rows were longer than max_length=%d and were truncated",
            truncated,
            len(rows),
            params.max_length,
        )
    if validation_rows and params.validation_fraction > 0:  # the caller's: every training row trains
        encoded, held = every_row, encode_rows(key, validation_rows, params.max_length)
    else:
        train_idx, held_idx = holdout_split([repr(r.answer) for r in every_row], params.validation_fraction,
                                            params.seed)
        encoded, held = [every_row[i] for i in train_idx], [every_row[i] for i in held_idx]
    batches = batch_schedule(len(encoded), params)
    total = len(batches)
    every = params.eval_every or max(1, -(-len(encoded) // params.batch_size))  # default: once per epoch
    device = device or pick_device(bf16=params.bf16)
    n_params, model_config = model_size(ensure_hf_cache(key))
    lengths = [len(r.prompt) + len(r.answer) for r in encoded]

    def shared_of(rows: Sequence[EncodedRow]) -> int:  # the prompt prefix a step's rows share (``prefix``)
        return step_shared([r.prompt for r in rows], model_config, max(len(r.prompt) + len(r.answer) for r in rows),
                           gradient_checkpointing=params.gradient_checkpointing) if params.share_prefix else 0

    shares = [shared_of([encoded[i] for i in b]) for b in batches]
    budget = pass_token_budget(params.micro_batch_tokens, device)  # float32: fewer tokens, the same memory
    passes = [micro_batches(b, lengths, budget, n) for b, n in zip(batches, shares, strict=True)]
    estimate = check_fits(n_params, params, device, model_config, model=key,
                          tokens=max(pass_tokens([lengths[i] for i in m], n)
                                     for p, n in zip(passes, shares, strict=True) for m in p),
                          answer_tokens=max(sum(len(encoded[i].answer) for i in m) for p in passes for m in p))
    logger.info("training on %s (%s): needs %s, %s GB free", device.describe(), device.why, estimate.describe(),
                f"{device.free_bytes / 2**30:.1f}" if device.free_bytes else "unknown")
    restart_peak_rss()  # the peak below is the training's, not an earlier one of this process
    rss_before = current_rss_mb()
    if device.kind == "cuda":
        torch.cuda.reset_peak_memory_stats()

    torch.manual_seed(params.seed)
    base = load_base_model(key, device)
    config = LoraConfig(
        r=params.lora_rank,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules="all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(base, config)
    causal_lm = peft_model.get_base_model()
    if params.gradient_checkpointing:  # each layer's activations recomputed in the backward pass
        causal_lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model.train()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate, weight_decay=params.weight_decay)
    logger.info(
        "fine-tuning %s: %d rows (%d more held out to choose the budget), at most %d steps (batch %d in passes of "
        "at most %d tokens, %d of a step's prompt prefix shared at most, %d epochs%s), LoRA r=%d alpha=%g, lr=%g, "
        "%d trainable parameters, %d torch threads, on %s", key, len(encoded), len(held), total, params.batch_size,
        budget, max(shares, default=0), params.epochs, f", max_steps {params.max_steps}" if params.max_steps else "",
        params.lora_rank, params.lora_alpha, params.learning_rate, sum(p.numel() for p in trainable),
        torch.get_num_threads(), device.describe())
    losses: list[float] = []
    chooser = BudgetChooser(params.patience)
    held_shared = shared_of(held) if held else 0  # the held-out rows' common prefix: run once per checkpoint
    held_passes = micro_batches(range(len(held)), [len(r.prompt) + len(r.answer) for r in held], budget, held_shared)
    held_prefix: list[SharedPrefix | None] = []

    def held_logits(lm: Any, rows: list[EncodedRow], on: TrainDevice) -> tuple[Any, Any, Any]:  # no gradient
        if not held_prefix:
            held_prefix.append(SharedPrefix(lm, held[0].prompt[:held_shared], on, grad=False) if held_shared else None)
        return answer_logits(lm, rows, on, prefix=held_prefix[0])

    tensors = trainable_tensors(peft_model)
    validation_seconds = 0.0

    def checkpoint(step: int) -> None:
        nonlocal validation_seconds
        scoring = time.monotonic()
        held_prefix.clear()  # the LoRA changed since the last checkpoint: so did the prefix's keys and values
        loss, exact = score_rows(causal_lm, held, held_passes, device, held_logits)
        held_prefix.clear()
        validation_seconds += time.monotonic() - scoring
        point = Checkpoint(step, loss, exact)
        best = chooser.record(point, tensors)
        logger.info("checkpoint at step %d: held-out loss %.4f, exact answers %.0f%% of %d%s", step, loss,
                    100 * exact, len(held), " (best so far)" if best else "")
        if on_checkpoint is not None:
            on_checkpoint({**point.to_json(), "best": best, "held_out": len(held)})

    stopped = "budget"
    train_started = time.monotonic()
    with _out_of_memory_as_lm_error(device, estimate, params):
        if held:
            checkpoint(0)  # the untrained model: a fine-tune must beat it to be kept
        for step, (batch, batch_passes) in enumerate(zip(batches, passes, strict=True), start=1):
            if should_stop is not None and should_stop():
                raise StepCancelled(f"fine-tuning cancelled at step {step - 1} of {total}")
            over_time = params.max_minutes is not None and time.monotonic() - train_started > 60 * params.max_minutes
            if over_time and step > 1:  # at least one step trains
                stopped = "time"
                logger.info("fine-tuning stops at step %d of %d: max_minutes=%g reached", step - 1, total,
                            params.max_minutes)
                break
            step_started = time.monotonic()
            answers = sum(len(encoded[i].answer) for i in batch)
            value = 0.0
            shared = shares[step - 1]  # the rows' common prompt prefix runs once for the step (``prefix``)
            prefix = SharedPrefix(causal_lm, encoded[batch[0]].prompt[:shared], device, grad=True) if shared else None
            for micro in batch_passes:  # the batch's mean loss over its answer tokens, one pass at a time
                loss = answer_loss(causal_lm, [encoded[i] for i in micro], device, prefix=prefix)
                if not torch.isfinite(loss):
                    raise LMError(
                        f"fine-tuning diverged at step {step} (loss {loss.item()}); lower learning_rate "
                        f"(now {params.learning_rate})"
                    )
                share = sum(len(encoded[i].answer) for i in micro) / answers
                (loss * share).backward()
                value += float(loss.item()) * share
                del loss
            if prefix is not None:
                prefix.backward()
                del prefix
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(value)
            logger.info("step %d/%d loss %.4f (%.1f s, peak RSS %.0f MB)", step, total, value,
                        time.monotonic() - step_started, window_peak_rss_mb())
            if progress is not None:
                progress(step, total, value)
            if held and (step % every == 0 or step == total):
                checkpoint(step)
                if chooser.exhausted and step < total:
                    stopped = "patience"
                    logger.info("fine-tuning stops early at step %d of %d: %d checkpoints without a better held-out "
                                "score than step %d's", step, total, params.patience, chooser.best.step)
                    break
        if held and losses and chooser.checkpoints[-1].step != len(losses):
            checkpoint(len(losses))  # the last trained state (a time bound stopped between checkpoints)
    if held and chooser.restore(tensors):
        logger.info("kept the LoRA of step %d (of %d trained): the best held-out score", chooser.best.step,
                    len(losses))
    if held and on_checkpoint is not None:
        on_checkpoint({"chosen_step": chooser.best.step, "stopped": stopped, "held_out": len(held)})
    train_seconds = time.monotonic() - train_started - validation_seconds
    train_peak = window_peak_rss_mb()  # before the LoRA comes back to the CPU or is merged
    device_peak = torch.cuda.max_memory_reserved() / 2**20 if device.kind == "cuda" else 0.0
    moved = device.kind != "cpu" or device.dtype != "float32"
    if moved:
        # the device's copy goes before the float32 one comes: the LoRA alone travels to the CPU (holding both
        # put the bf16 and the float32 weights in memory at once)
        state = _lora_state(peft_model)
        del base, causal_lm, optimizer, trainable, peft_model, tensors
        chooser.best_state = None
        gc.collect()
        if device.kind == "cuda":
            torch.cuda.empty_cache()
    return_freed_memory()  # the activations' pages, kept by glibc after torch freed them
    restart_peak_rss()  # the merge's own peak below
    if moved:
        peft_model = _lora_on_cpu(key, state, config)
    merged = None
    peft_model.eval()
    if merge:
        merged = peft_model.merge_and_unload()
    merge_peak = window_peak_rss_mb()
    return TrainResult(
        steps=len(losses),
        total_steps=total,
        losses=losses,
        seconds=round(time.monotonic() - started, 2),
        seconds_per_step=round(train_seconds / max(1, len(losses)), 3),
        rows=len(rows),
        truncated_rows=truncated,
        row_tokens=round(sum(len(r.prompt) + len(r.answer) + r.cut for r in every_row) / len(every_row), 1),
        cut_tokens=round(sum(cuts) / len(cuts), 1) if cuts else 0.0,
        max_cut_tokens=max(cuts, default=0),
        peak_rss_mb=train_peak,
        merge_peak_rss_mb=merge_peak,
        threads=threads,
        model=merged,
        peft_model=None if merge else peft_model,
        device=device,
        memory_estimate_mb=round(estimate.total / 2**20, 1),
        rss_before_mb=rss_before,
        device_peak_mb=round(device_peak, 1),
        held_out_rows=len(held),
        checkpoints=[c.to_json() for c in chooser.checkpoints],
        chosen_step=chooser.best.step if chooser.best else None,
        stopped=stopped,
        validation_seconds=round(validation_seconds, 2),
        pass_tokens=budget,
        shared_tokens=round(sum(shares[: len(losses)]) / max(1, len(losses)), 1),
    )


@contextmanager
def _out_of_memory_as_lm_error(device: TrainDevice, estimate: Any, params: TrainParams) -> Iterator[None]:
    """An out-of-memory error of torch (CUDA's ``OutOfMemoryError``, MPS's RuntimeError) as an LMError with the
    estimate that let the training start: the process lives on and the run says what to change."""
    try:
        yield
    except RuntimeError as e:
        if "out of memory" not in str(e).lower():
            raise
        raise LMError(f"fine-tuning ran out of memory on {device.describe()} although it was estimated to need "
                      f"{estimate.describe()}; lower batch_size (now {params.batch_size}) or max_length (now "
                      f"{params.max_length}), or free memory on the device") from None


def _lora_state(peft_model: Any) -> dict[str, Any]:
    """The trained LoRA's tensors, in float32 on the CPU."""
    import torch
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu", torch.float32).clone() for k, v in get_peft_model_state_dict(peft_model).items()}


def _lora_on_cpu(key: str, state: dict[str, Any], config: Any) -> Any:
    """The trained LoRA (``_lora_state``) on a fresh float32 copy of the base weights on the CPU: what the export
    reads, whatever the device trained on (merged into bfloat16 weights the LoRA's small updates would round
    away)."""
    from peft import get_peft_model, set_peft_model_state_dict

    fresh = get_peft_model(load_base_model(key), config)
    set_peft_model_state_dict(fresh, state)
    fresh.eval()
    return fresh

