"""The DSPy provider of the embedded LMs: ``finetune`` runs one LoRA job and registers the result."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dspy.clients.provider import Provider, TrainingJob
from dspy.clients.utils_finetune import TrainingStatus

from core.errors import LMError, RunCancelled, StepCancelled, shown
from core.lms import catalog
from core.lms.cpu import return_freed_memory
from core.lms.lora.device import train_line
from core.lms.lora.export import export_adapter, export_merged
from core.lms.lora.params import PARAMS, parse_train_kwargs, peak_rss_mb, restart_peak_rss, window_peak_rss_mb
from core.lms.lora.train import train_lora

logger = logging.getLogger(__name__)

_TRAIN_LOCK = threading.Lock()

STOP_REASONS = {
    "budget": "every epoch of its budget trained",
    "patience": "stopped early, no better held-out score in its last checkpoints",
    "time": "its time bound (max_minutes) reached",
}
"""Why a fine-tune's training ended (``TrainResult.stopped``), as a run says it."""


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

    def __init__(self, register: Callable[[str, Path], None], release: Callable[[], Any] | None = None) -> None:
        """``register(name, folder)`` makes the serving engine serve a new fine-tune; ``release()`` frees the
        engine's loaded models before training (with ``release_served_models``, the default: the model being
        trained is in torch then, and llama.cpp's copies would sit idle beside it). Both injected by
        ``core.lms.registry``, so training never imports the engine."""
        super().__init__()
        self.finetunable = True
        self.TrainingJob = LocalLoRATrainingJob
        self.register = register
        self.release = release

    def __deepcopy__(self, memo: dict) -> LocalLoRAProvider:
        return self

    @staticmethod
    def is_provider_model(model: str) -> bool:
        """Embedded models are ``embedded/<key>``, local ones ``local/<key>`` (fine-tuned: ``...:ft-...``)."""
        return catalog.is_embedded_name(model)

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
            raise LMError(f"train_data_format {shown(fmt)} is not supported by the embedded models; allowed: chat")
        key = catalog.model_key(model)
        params, output_dir = parse_train_kwargs(key, train_kwargs)
        if not train_data:
            raise LMError("fine-tuning needs at least one training row; got 0")
        kw = train_kwargs or {}
        user_progress, user_stop, on_checkpoint = kw.get("progress"), kw.get("should_stop"), kw.get("on_checkpoint")
        validation = kw.get("validation_data") or None
        if validation is not None and not isinstance(validation, list):
            raise LMError(f"train_kwargs['validation_data'] must be a list of chat rows; got {type(validation).__name__}")
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

        new_name = catalog.finetuned_name(key, uuid.uuid4().hex[:8])
        folder = output_dir / catalog.safe_name(new_name)
        if model != catalog.model_name(key):
            logger.info("%s is fine-tuned again from the base weights of %s", model, key)
        if should_stop():
            raise StepCancelled("fine-tuning cancelled before step 1")
        with _TRAIN_LOCK:
            if job is not None and hasattr(job, "started"):
                job.started = True
            try:
                if params.release_served_models and self.release is not None:
                    self.release()  # loaded again by the first call after the step
                merged = params.serve == "merged"
                result = train_lora(key, train_data, params, progress=progress, should_stop=should_stop,
                                    merge=merged, on_checkpoint=on_checkpoint, validation_rows=validation)
                if should_stop():
                    raise StepCancelled(
                        f"fine-tuning cancelled after step {result.steps} (before the export)"
                    )
                restart_peak_rss()  # the export's own peak
                if merged:
                    gguf, export_seconds = export_merged(key, result.model, folder, params.quant)
                else:
                    gguf, export_seconds = export_adapter(key, result.peft_model, folder)
                export_peak = window_peak_rss_mb()
                result.model = result.peft_model = None
                return_freed_memory()  # the float32 weights of the merge and the export
                meta = {
                    "base": key,
                    "kind": params.serve,
                    "file": gguf.name,
                    "quant": params.quant if merged else None,  # an adapter serves on the base GGUF's type
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
                        "row_tokens": result.row_tokens,
                        "cut_tokens": result.cut_tokens,
                        "max_cut_tokens": result.max_cut_tokens,
                        "peak_rss_mb": peak_rss_mb(),
                        "torch_threads": result.threads,
                        # where and in which precision it trained, and its memory: estimated before, measured
                        "device": result.device.to_json() if result.device else None,
                        "memory_estimate_mb": result.memory_estimate_mb,
                        "train_peak_rss_mb": result.peak_rss_mb,
                        "rss_before_mb": result.rss_before_mb,
                        "merge_peak_rss_mb": result.merge_peak_rss_mb,
                        "export_peak_rss_mb": export_peak,
                        "device_peak_mb": result.device_peak_mb,
                        # the budget chosen on held-out rows: each checkpoint's scores, the one kept, and why it ended
                        "held_out_rows": result.held_out_rows,
                        "checkpoints": result.checkpoints,
                        "chosen_step": result.chosen_step,
                        "stopped": result.stopped,
                        "validation_seconds": result.validation_seconds,
                        "pass_tokens": result.pass_tokens,  # micro_batch_tokens on the device (float32: fewer)
                        "shared_tokens": result.shared_tokens,
                    },
                }
                (folder / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
        self.register(new_name, folder)
        logger.info(
            "fine-tuned %s -> %s (%d steps%s, final loss %.4f, %s, %s)",
            model,
            new_name,
            result.steps,
            f", kept step {result.chosen_step}" if result.chosen_step is not None else "",
            result.final_loss or float("nan"),
            params.quant if params.serve == "merged" else "LoRA adapter on the base GGUF",
            folder,
        )
        return new_name


def truncated_rows(folder: Path) -> dict[str, float] | None:
    """What ``max_length`` cut from the rows a fine-tune in ``folder`` was trained on, read from its ``meta.json``:
    ``{"truncated": N, "rows": M, "max_length": K, "row_tokens": mean tokens of a row, "cut_tokens": mean tokens
    a cut row lost, "max_cut_tokens": the most}``; None when no row was cut or the folder holds no readable
    ``meta.json`` (an engine other than this provider's). Fine-tunes from before the token counts were kept give
    the counts as 0."""
    try:
        train = json.loads((folder / "meta.json").read_text(encoding="utf-8")).get("train") or {}
    except (OSError, ValueError, AttributeError):
        return None
    count = train.get("truncated_rows")
    if not isinstance(count, int) or count <= 0:
        return None
    return {"truncated": count, "rows": int(train.get("rows") or 0), "max_length": int(train.get("max_length") or 0),
            "row_tokens": float(train.get("row_tokens") or 0), "cut_tokens": float(train.get("cut_tokens") or 0),
            "max_cut_tokens": int(train.get("max_cut_tokens") or 0)}


def trained_on(folder: Path) -> str | None:
    """Where and how the fine-tune in ``folder`` trained, one line (``device.train_line``) read from its
    ``meta.json``; None without a readable one or for a fine-tune from before the device was recorded."""
    try:
        train = json.loads((folder / "meta.json").read_text(encoding="utf-8")).get("train") or {}
        return train_line(train)
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def truncation_message(model: str, cut: dict[str, float]) -> str:
    """What a run tells the user when ``max_length`` cut training rows: how many, how much of them, what that
    part of a row is, and what to change. It advises nothing more: whether whole rows train a better model
    depends on the data (on the support-ticket sample, rows kept whole instead of losing ~30 of ~414 tokens did not
    score better: see 5de0537)."""
    size = ""
    if cut.get("cut_tokens"):
        size = (f" and lost ~{cut['cut_tokens']:.0f} tokens each (at most {cut['max_cut_tokens']:.0f}; the rows "
                f"averaged ~{cut['row_tokens']:.0f})")
    return (f"{cut['truncated']} of {cut['rows']} training rows of {model} were longer than max_length="
            f"{cut['max_length']} tokens{size}: a cut row loses the start of its prompt (the system message, "
            "which lists the fields and the instructions, comes first; a deeper cut reaches the inputs) and keeps its "
            "answer. To train on whole rows, "
            f"raise max_length in the weight step's settings (up to {PARAMS['max_length'].high}); a row then costs "
            "its full length in training time.")
