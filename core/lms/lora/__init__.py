"""LoRA fine-tuning of the embedded GGUF models on the CPU (transformers + peft), served by llama.cpp.

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
   ``max_length`` lose prompt tokens from the left (the BOS token is kept). Deterministic for a seed.
3. **Serving** (``train.export_merged``). The LoRA is merged into the dequantized weights, written
   as a GGUF that copies every key/value of the shipped one (``core.lms.gguf_export``), and
   quantized to a type that keeps the fine-tune (SmolLM2: Q4_K_M, Gemma: Q8_0; never the shipped
   4-bit type, which erases the LoRA delta).
4. **Artifact.** ``output_dir/<safe name>/model.gguf`` + ``meta.json`` (``kind: merged``), then the
   provider's injected ``register(name, folder)`` (the engine's ``register_finetuned``, wired by
   ``core.lms.registry``: training never imports the engine); the new name is
   ``embedded/<key>:ft-<8 hex>``.

Training is serialised process-wide (one fine-tune at a time: two would only share 2 cores and
double the memory). Only ordinary exceptions leave ``finetune``: ``StepCancelled`` when
``should_stop()`` (or ``job.cancel()``) asks, ``LMError`` for everything else. Hyper-parameters
are validated in ``params``.
"""

from core.lms.lora.base_weights import ensure_hf_cache, hf_cache_dir, load_base_model
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
from core.lms.lora.train import (
    EncodedRow,
    Tokenizer,
    TrainResult,
    answer_loss,
    batch_schedule,
    encode_rows,
    export_merged,
    train_lora,
)

__all__ = [
    "ALLOWED_QUANTS",
    "DEFAULT_QUANT",
    "PARAMS",
    "EncodedRow",
    "LocalLoRAProvider",
    "LocalLoRATrainingJob",
    "Tokenizer",
    "TrainParams",
    "TrainResult",
    "answer_loss",
    "batch_schedule",
    "encode_rows",
    "ensure_hf_cache",
    "export_merged",
    "hf_cache_dir",
    "load_base_model",
    "parse_train_kwargs",
    "peak_rss_mb",
    "torch_threads",
    "train_lora",
]
