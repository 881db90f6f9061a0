"""LoRA fine-tuning of the embedded GGUF models (transformers + peft) on the best device present, served by
llama.cpp.

``LocalLoRAProvider`` (``provider``) is the DSPy provider of the embedded LMs (see "Provider
contract" in docs/architecture.md). ``finetune`` does, in its own thread:

1. **Base weights** (``base_weights``). The shipped GGUF is dequantized by transformers
   (``from_pretrained(dir, gguf_file=...)``) once and cached as safetensors with its tokenizer
   under ``model_cache_dir()/<key>-hf/``; later runs reload the cache in a fraction of a second.
   Training always starts from the base model of the catalogue key: a fine-tuned name
   (``embedded/<key>:ft-...``) is fine-tuned again *from the base weights*, not stacked on the
   previous fine-tune (the rows of a BetterTogether weight step are the whole task anyway).
2. **LoRA training** (``train``). Rows ``{"messages": [...]}`` are rendered with
   ``catalog.render_prompt`` (prompt) and ``catalog.end_of_turn`` (closing the answer), then
   tokenized with llama.cpp's own tokenizer of the shipped GGUF (``add_bos=True, special=True``,
   exactly as the engine tokenizes its prompts): training sees the tokens the served model sees.
   The loss covers the answer tokens only, and the LM head is applied only at those positions
   (the full batch x seq x vocab logits would dominate a CPU step). Rows longer than
   ``max_length`` lose prompt tokens from the left (the BOS token is kept) (``rows``). Deterministic for a seed.
   The budget is the data's (``validation``): the caller's validation rows (``train_kwargs["validation_data"]``:
   the weight step gives the run's validation examples) or a stratified share of the rows (``validation_fraction``)
   held out score the LoRA before training and at each checkpoint, and the LoRA of the best checkpoint is kept;
   training stops after ``patience`` checkpoints without a better one (``epochs``, ``max_steps`` and
   ``max_minutes`` bound it).
   The device (``device.pick_device``: CUDA, then MPS, then the CPU; bfloat16 where it computes in it)
   is checked to have the memory the training needs before the first step (``device.check_fits``);
   the trained LoRA comes back to the CPU in float32 for the export.
3. **Serving** (``export``, the ``serve`` setting). ``merged`` (the default: it serves faster, measured in
   ``params``): the LoRA is merged into the dequantized weights, written as a GGUF that copies every
   key/value of the shipped one (``core.lms.gguf_export``; a local model's goes through llama.cpp's
   converter), and quantized to a type that keeps the fine-tune (SmolLM2: Q4_K_M, Gemma: Q8_0; never the
   shipped 4-bit type, which erases the LoRA delta). ``lora``: the LoRA alone, converted by llama.cpp's
   ``convert_lora_to_gguf.py`` (``core.lms.convert``) into a GGUF adapter that the engine applies to the
   base GGUF at load time.
4. **Artifact.** ``output_dir/<safe name>/adapter.gguf`` (``kind: lora``) or ``model.gguf``
   (``kind: merged``) + ``meta.json``, then the
   provider's injected ``register(name, folder)`` (the engine's ``register_finetuned``, wired by
   ``core.lms.registry``: training never imports the engine); the new name is
   ``embedded/<key>:ft-<8 hex>``.

Training is serialised process-wide (one fine-tune at a time: two would only share 2 cores and
double the memory). Only ordinary exceptions leave ``finetune``: ``StepCancelled`` when
``should_stop()`` (or ``job.cancel()``) asks, ``LMError`` for everything else. Hyper-parameters
are validated in ``params``.
"""

from core.lms.lora.base_weights import ensure_hf_cache, hf_cache_dir, load_base_model
from core.lms.lora.device import TrainDevice, check_fits, estimate_memory, pick_device
from core.lms.lora.export import export_adapter, export_merged
from core.lms.lora.params import (
    ALLOWED_QUANTS,
    DEFAULT_QUANT,
    PARAMS,
    TrainParams,
    parse_train_kwargs,
    peak_rss_mb,
    torch_threads,
)
from core.lms.lora.provider import LocalLoRAProvider, LocalLoRATrainingJob
from core.lms.lora.rows import EncodedRow, Tokenizer, encode_rows
from core.lms.lora.train import TrainResult, answer_loss, batch_schedule, train_lora

__all__ = [
    "ALLOWED_QUANTS",
    "DEFAULT_QUANT",
    "PARAMS",
    "EncodedRow",
    "TrainDevice",
    "LocalLoRAProvider",
    "LocalLoRATrainingJob",
    "Tokenizer",
    "TrainParams",
    "TrainResult",
    "answer_loss",
    "batch_schedule",
    "check_fits",
    "encode_rows",
    "ensure_hf_cache",
    "estimate_memory",
    "export_adapter",
    "export_merged",
    "hf_cache_dir",
    "load_base_model",
    "parse_train_kwargs",
    "peak_rss_mb",
    "pick_device",
    "torch_threads",
    "train_lora",
]
