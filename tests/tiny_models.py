"""Tiny randomly initialised Hugging Face models of three architectures that llama.cpp serves, built in seconds.

They stand in for a user's own model folder in the tests of the ``local`` LM kind: no download, a few MB each. The
weights are random (answers are noise; the grammar still makes them parse), the tokenizer is SmolLM2's (a GPT-2
style BPE that llama.cpp's converter recognises), the chat template is the architecture's usual one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\\n\\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (first if loop.first else '') + message['content'] + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

ARCHS = ("llama", "smollm3", "gemma3")


def _config(arch: str, vocab: int, bos: int, eos: int):
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, tie_word_embeddings=True)
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        return LlamaForCausalLM, LlamaConfig(**common)
    if arch == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        return Qwen2ForCausalLM, Qwen2Config(**common)
    if arch == "smollm3":
        from transformers import SmolLM3Config, SmolLM3ForCausalLM

        return SmolLM3ForCausalLM, SmolLM3Config(**common)
    if arch == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        # query_pre_attn_scalar = head_dim, as in the real Gemma 3 models: llama.cpp scales queries by 1/sqrt(head_dim),
        # and with transformers' default (256) its logits and torch's differ (tests/lms/test_lora_export.py)
        return Gemma3ForCausalLM, Gemma3TextConfig(**common, head_dim=16, sliding_window=64, query_pre_attn_scalar=16)
    raise ValueError(f"unknown architecture {arch!r}; allowed: {', '.join(ARCHS)}")


def build_tiny_model(arch: str, folder: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    """Save a tiny random ``arch`` model with ``tokenizer_dir``'s tokenizer as an HF folder (safetensors)."""
    import json

    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(tokenizer_dir) / name, folder / name)
    tok_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokens = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tokens["model"]["vocab"]
    eos = vocab[tok_config["eos_token"]]
    bos = vocab[tok_config["bos_token"]]
    model_class, config = _config(arch, len(vocab), bos, eos)
    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32)
    model.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(GEMMA if arch == "gemma3" else CHATML, encoding="utf-8")
    return folder
