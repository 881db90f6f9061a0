"""The served forms of a LoRA fine-tune (core.lms.lora.export), checked on tiny random local models of two
architectures whose tensors llama.cpp's converter transforms (SmolLM3: q/k rows permuted; Gemma 3: norms + 1):
what llama.cpp serves from the adapter GGUF (on the model's F16 base GGUF) and from the merged GGUF gives the
logits torch computes for the fine-tuned model, and the base alone does not (the LoRA is really applied)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.lms import catalog, local
from core.lms.lora import ensure_hf_cache, export_adapter, export_merged, load_base_model
from tests.tiny_models import build_tiny_model

SMOL = "smollm2-135m"
PROMPTS = ["The quick brown fox jumps over the lazy dog.", "Invoice 1234: charged twice, please refund."]


def llama_cpp_logits(path: Path, token_lists: list[list[int]], lora_path: Path | None = None) -> list[np.ndarray]:
    from llama_cpp import Llama

    llama = Llama(model_path=str(path), lora_path=str(lora_path) if lora_path else None, n_ctx=256, n_threads=2,
                  logits_all=True, verbose=False)
    out = []
    for tokens in token_lists:
        llama.reset()
        llama.eval(tokens)
        out.append(np.array(llama.scores[len(tokens) - 1], dtype=np.float64))
    return out


def torch_logits(model, token_lists: list[list[int]]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return [model(input_ids=torch.tensor([tokens])).logits[0, -1].double().numpy() for tokens in token_lists]


def gap(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["smollm3", "gemma3"])
def test_adapter_and_merged_gguf_serve_the_model_torch_fine_tuned(
        arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from llama_cpp import Llama
    from peft import LoraConfig, get_peft_model

    tokenizer_dir = ensure_hf_cache(SMOL)  # the shared cache, before this test points the cache elsewhere
    monkeypatch.setenv("STUDIO_MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(local, "_registered", {})
    folder = build_tiny_model(arch, tmp_path / arch, tokenizer_dir)
    key = local.register_local(local.inspect_local(folder, quant="F16"))
    base_gguf = catalog.gguf_path(key)  # converted once by llama.cpp's converter, F16: the base is not rounded
    tokens = [Llama(model_path=str(base_gguf), vocab_only=True, verbose=False).tokenize(p.encode(), add_bos=True)
              for p in PROMPTS]

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)  # B != 0
    base_model = load_base_model(key)
    torch_base = torch_logits(base_model, tokens)
    peft_model = get_peft_model(base_model, config).eval()
    with torch.no_grad():  # a fine-tune whose change shows in the logits
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.mul_(20.0)
    tuned = torch_logits(peft_model, tokens)
    base = llama_cpp_logits(base_gguf, tokens)
    scale = max(float(np.abs(t).max()) for t in tuned)

    adapter, _ = export_adapter(key, peft_model, tmp_path / "lora")
    assert adapter == tmp_path / "lora" / "adapter.gguf" and sorted(p.name for p in adapter.parent.iterdir()) == [
        "adapter.gguf"]
    served_adapter = llama_cpp_logits(base_gguf, tokens, lora_path=adapter)

    merged, _ = export_merged(key, peft_model.merge_and_unload(), tmp_path / "merged", "F16")
    assert sorted(p.name for p in merged.parent.iterdir()) == ["model.gguf"]
    served_merged = llama_cpp_logits(merged, tokens)

    tolerance = 0.02 * scale  # f16 weights and llama.cpp's own kernels
    assert gap(base, torch_base) < tolerance  # the base GGUF serves the base model
    assert gap(base, tuned) > 10 * tolerance  # the LoRA changes the logits well beyond the tolerance
    assert gap(served_adapter, tuned) < tolerance
    assert gap(served_merged, tuned) < tolerance
    assert all(int(np.argmax(a)) == int(np.argmax(b)) for a, b in zip(served_adapter, tuned, strict=True))
