"""Serving a fine-tune: a LoRA adapter applied at load time against the merged, re-quantized GGUF (issue 25, item 4).

On the support-ticket intent task of ``bench/finetune.py``, in one process: one LoRA is trained
(``train_lora(merge=False)``, the provider's training) and exported both ways, ``export_adapter`` (``serve:
lora``: ``adapter.gguf`` on the base GGUF) and ``export_merged`` (``serve: merged``: the LoRA merged and
re-quantized to the model's ``DEFAULT_QUANT``). Each is registered with the llama.cpp engine and measured:
export seconds, load seconds (the engine's first ``resolve`` of the name), DSPy ``Predict`` calls per minute
(grammar-constrained, as a run calls) and accuracy on held-out tickets, the base model's beside, and
``kl_to_torch``: how far the served next-token distribution is from the trained torch model's (mean KL after
the prompts of the first 8 held-out tickets). The two
fine-tunes are evaluated alternately, ``--rounds`` times each, so that a change of the machine's load hits
both; calls/min is over all rounds.

Usage::

    python bench/serve_finetune.py [--model smollm2-135m|gemma3-270m] [--train N] [--test N]
                                   [--epochs E] [--max-steps S] [--learning-rate LR] [--rounds R]

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import dspy  # noqa: E402
from finetune import TicketIntent, evaluate_engine, load_tickets, training_rows  # noqa: E402 - bench/ is on sys.path

from core.config.defaults import EMBEDDED_TRAIN_OVERRIDES  # noqa: E402
from core.lms import catalog, lora  # noqa: E402

logger = logging.getLogger("bench.serve_finetune")


def next_token_kl(key: str, torch_model, gguf: Path, lora_path: Path | None, prompts: list[str]) -> float:
    """Mean KL(torch || llama.cpp) of the next-token distribution after each prompt: how far what llama.cpp
    serves is from the model torch trained."""
    import numpy as np
    import torch
    from llama_cpp import Llama

    llama = Llama(model_path=str(gguf), lora_path=str(lora_path) if lora_path else None, n_ctx=2048,
                  logits_all=True, verbose=False)
    tokenizer = lora.Tokenizer(key)
    kls = []
    for prompt in prompts:
        tokens = tokenizer.prompt(prompt)
        llama.reset()
        llama.eval(tokens)
        served = np.array(llama.scores[len(tokens) - 1], dtype=np.float64)
        with torch.no_grad():
            reference = torch_model(input_ids=torch.tensor([tokens])).logits[0, -1].double().numpy()
        p, q = np.exp(reference - reference.max()), np.exp(served - served.max())
        p, q = p / p.sum(), q / q.sum()
        kls.append(float((p * (np.log(p + 1e-30) - np.log(q + 1e-30))).sum()))
    return float(np.mean(kls))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", choices=sorted(catalog.MODELS))
    parser.add_argument("--train", type=int, default=48, help="training rows")
    parser.add_argument("--test", type=int, default=30, help="held-out tickets")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=EMBEDDED_TRAIN_OVERRIDES["learning_rate"],
                        help="default: the embedded models' recipe (core.config.defaults)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating evaluations of each fine-tune")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "LiteLLM", "transformers", "peft", "gguf"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from core.lms import embedded
    from core.lms.registry import make_embedded_lm

    key = args.model
    tickets = load_tickets()
    n_train, n_test = args.train, min(args.test, max(1, len(tickets) - args.train))
    train, test = tickets[:n_train], tickets[n_train : n_train + n_test]
    adapter = dspy.ChatAdapter(use_json_adapter_fallback=False)
    rows = training_rows(adapter, train)
    base_lm = make_embedded_lm(key, temperature=0.0, max_tokens=64)
    engine = embedded.LlamaEngine.shared()

    started = time.perf_counter()
    engine.resolve(base_lm.model)
    base_load = time.perf_counter() - started
    base = evaluate_engine(base_lm, adapter, test)
    logger.info("base %s: %s (load %.2f s)", key, base, base_load)

    params, _ = lora.parse_train_kwargs(key, {"output_dir": "unused", "epochs": args.epochs,
                                              "max_steps": args.max_steps, "batch_size": args.batch_size,
                                              "learning_rate": args.learning_rate})
    result = lora.train_lora(key, rows, params, merge=False)
    logger.info("trained %d steps in %.1f s, loss %.4f -> %.4f", result.steps, result.seconds,
                result.first_loss, result.final_loss)
    out: dict = {"model": key, "rows": len(rows), "test": len(test), "steps": result.steps,
                 "seconds_per_step": result.seconds_per_step, "first_loss": round(result.first_loss, 4),
                 "final_loss": round(result.final_loss, 4), "base_load_seconds": round(base_load, 2),
                 "base_accuracy": base["accuracy"], "base_calls_per_min": base["cpm"]}
    lms: dict[str, dspy.LM] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        merged_model = None
        for serve in ("lora", "merged"):
            folder = Path(tmp) / serve
            if serve == "lora":
                path, seconds = lora.export_adapter(key, result.peft_model, folder)
            else:
                merged_model = result.peft_model.merge_and_unload()
                path, seconds = lora.export_merged(key, merged_model, folder, params.quant)
            meta = {"base": key, "kind": serve, "file": path.name}
            (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
            name = catalog.finetuned_name(key, f"bench{serve}")
            engine.register_finetuned(name, folder)
            started = time.perf_counter()
            engine.resolve(name)
            load = time.perf_counter() - started
            lms[serve] = make_embedded_lm(key, temperature=0.0, max_tokens=64).copy(model=name)
            out[serve] = {"export_seconds": seconds, "load_seconds": round(load, 2),
                          "size_mb": round(path.stat().st_size / 1e6, 1),
                          "quant": params.quant if serve == "merged" else "adapter F32 on the base GGUF"}
            logger.info("%s: exported in %.1f s (%s MB), loaded in %.2f s", serve, seconds,
                        out[serve]["size_mb"], load)
        prompts = [catalog.render_prompt(key, adapter.format(TicketIntent, demos=[], inputs={"ticket": t["ticket"]}))
                   for t in test[:8]]
        for serve in lms:
            folder = Path(tmp) / serve
            gguf, lora_path = ((catalog.gguf_path(key), folder / "adapter.gguf") if serve == "lora"
                               else (folder / "model.gguf", None))
            out[serve]["kl_to_torch"] = round(next_token_kl(key, merged_model, gguf, lora_path, prompts), 6)
        totals = {serve: {"calls": 0, "minutes": 0.0, "correct": 0.0} for serve in lms}
        for round_ in range(args.rounds):
            for serve in (("lora", "merged") if round_ % 2 == 0 else ("merged", "lora")):
                scores = evaluate_engine(lms[serve], adapter, test)
                logger.info("round %d %s: %s", round_ + 1, serve, scores)
                totals[serve]["calls"] += len(test)
                totals[serve]["minutes"] += len(test) / scores["cpm"] if scores["cpm"] else 0.0
                totals[serve]["correct"] = scores["accuracy"]  # deterministic: the same every round
        for serve, total in totals.items():
            out[serve]["accuracy"] = total["correct"]
            out[serve]["calls_per_min"] = round(total["calls"] / total["minutes"], 1) if total["minutes"] else 0.0
    out["peak_rss_mb"] = lora.peak_rss_mb()
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
