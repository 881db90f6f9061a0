"""Fine-tuning benchmark of the embedded models (issue item 8).

On the support-ticket intent task (``ticket -> intent`` with a Literal of four labels; rows from
``data/support_tickets.jsonl``, inline samples if it is missing), in one process:

1. serves the base model through the llama.cpp engine (``core.lms.embedded``) on held-out
   tickets: parse rate, intent accuracy and DSPy ``Predict`` calls per minute;
2. fine-tunes it with ``LocalLoRAProvider`` through DSPy's own path (``lm.finetune(...)``, a
   ``TrainingJob`` in its own thread), on training rows rendered by the real
   ``dspy.ChatAdapter().format_finetune_data(...)``: seconds per step, total training seconds,
   peak RSS;
3. serves the fine-tune the same way (``--serve``: a LoRA adapter on the base GGUF, or the merged GGUF;
   default: the provider's) and measures the same numbers, and its load time.

The engine constrains answers with the ChatAdapter output grammar (``core.lms.grammar``), so the
engine's parse rate is high even before fine-tuning. The ``raw_*`` numbers come from the same
prompts through ``create_completion`` *without* a grammar: they show whether the model learned
the output format by itself (skipped with ``--quick``: null).

Usage::

    python bench/finetune.py [--quick] [--model smollm2-135m|gemma3-270m] [--train N] [--test N]
                             [--epochs E] [--max-steps S] [--serve lora|merged]

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import dspy  # noqa: E402
from dspy.clients.utils_finetune import TrainDataFormat  # noqa: E402

from core.lms import catalog, lora  # noqa: E402

logger = logging.getLogger("bench.finetune")

INTENTS = ("billing", "bug", "account", "feature_request")
INLINE_TICKETS = [
    {"ticket": "I was charged twice for my subscription this month.", "intent": "billing"},
    {"ticket": "The app crashes every time I click save.", "intent": "bug"},
    {"ticket": "I cannot log in, the password reset email never arrives.", "intent": "account"},
    {"ticket": "It would be nice to have a dark mode some day.", "intent": "feature_request"},
    {"ticket": "Please send me last year's invoices when you can.", "intent": "billing"},
    {"ticket": "The export button does nothing on Firefox.", "intent": "bug"},
    {"ticket": "How do I change the e-mail address of my account?", "intent": "account"},
    {"ticket": "Could you add bulk user import? We need it for our renewal.", "intent": "feature_request"},
    {"ticket": "My card was declined but the money left my account.", "intent": "billing"},
    {"ticket": "Charts stay blank after the last update.", "intent": "bug"},
    {"ticket": "Please delete my account and all my data.", "intent": "account"},
    {"ticket": "Can you support single sign-on with Okta?", "intent": "feature_request"},
]


class TicketIntent(dspy.Signature):
    """Classify the support ticket by intent."""

    ticket: str = dspy.InputField()
    intent: Literal["billing", "bug", "account", "feature_request"] = dspy.OutputField()


def load_tickets() -> list[dict]:
    """Tickets of data/support_tickets.jsonl (inline samples if it is missing), seeded shuffle."""
    path = REPO_ROOT / "data" / "support_tickets.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        rows = list(INLINE_TICKETS)
    rows = [r for r in rows if r.get("intent") in INTENTS]
    random.Random(0).shuffle(rows)
    return rows


def training_rows(adapter: dspy.ChatAdapter, tickets: list[dict]) -> list[dict]:
    """Chat rows exactly as DSPy's weight optimizers build them."""
    return [
        adapter.format_finetune_data(
            TicketIntent, demos=[], inputs={"ticket": t["ticket"]}, outputs={"intent": t["intent"]}
        )
        for t in tickets
    ]


def per_minute(calls: int, seconds: float) -> float:
    return round(60.0 * calls / seconds, 1) if seconds > 0 else 0.0


def evaluate_engine(lm: dspy.LM, adapter: dspy.ChatAdapter, tickets: list[dict]) -> dict[str, float]:
    """Predict calls through the engine (grammar-constrained): parse rate, accuracy, calls/min."""
    predict = dspy.Predict(TicketIntent)
    with dspy.context(lm=lm, adapter=adapter):
        try:  # warm-up: loads the GGUF, fills the KV cache with the system message
            predict(ticket=tickets[0]["ticket"])
        except Exception:
            pass
        parsed = correct = 0
        started = time.perf_counter()
        for row in tickets:
            try:
                prediction = predict(ticket=row["ticket"])
            except Exception as e:  # AdapterParseError
                logger.info("not parsed: %s", str(e)[:120])
                continue
            parsed += 1
            correct += prediction.intent == row["intent"]
        seconds = time.perf_counter() - started
    n = len(tickets)
    return {
        "parse_rate": round(parsed / n, 3),
        "accuracy": round(correct / n, 3),
        "cpm": per_minute(n, seconds),
    }


def evaluate_raw(llama: Any, key: str, adapter: dspy.ChatAdapter, tickets: list[dict]) -> dict[str, float]:
    """The same prompts through ``create_completion`` without a grammar: does the format hold?"""
    parsed = correct = 0
    for row in tickets:
        messages = adapter.format(TicketIntent, demos=[], inputs={"ticket": row["ticket"]})
        out = llama.create_completion(
            prompt=catalog.render_prompt(key, messages),
            max_tokens=40,
            temperature=0.0,
            stop=catalog.stop_strings(key),
        )
        try:
            values = adapter.parse(TicketIntent, out["choices"][0]["text"])
        except Exception:
            continue
        parsed += 1
        correct += values.get("intent") == row["intent"]
    n = len(tickets)
    return {"parse_rate": round(parsed / n, 3), "accuracy": round(correct / n, 3)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few steps on a few rows (under a minute)")
    parser.add_argument("--model", default="smollm2-135m", choices=sorted(catalog.MODELS))
    parser.add_argument("--train", type=int, default=None, help="training rows")
    parser.add_argument("--test", type=int, default=None, help="held-out tickets")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-bf16", action="store_true", help="train in float32")
    parser.add_argument("--serve", choices=lora.PARAMS["serve"].choices, default=lora.PARAMS["serve"].default,
                        help=lora.PARAMS["serve"].description)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "LiteLLM", "transformers", "peft", "gguf"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from core.lms import embedded
    from core.lms.registry import make_embedded_lm

    key = args.model
    n_train = args.train or (16 if args.quick else 120)
    n_test = args.test or (6 if args.quick else 40)
    tickets = load_tickets()
    if n_train + n_test > len(tickets):
        n_test = max(1, len(tickets) - n_train)
    train, test = tickets[:n_train], tickets[n_train : n_train + n_test]
    adapter = dspy.ChatAdapter(use_json_adapter_fallback=False)
    rows = training_rows(adapter, train)
    lm = make_embedded_lm(key, temperature=0.0, max_tokens=64)
    engine = embedded.LlamaEngine.shared()

    logger.info("base model %s: %d held-out tickets", key, len(test))
    before = evaluate_engine(lm, adapter, test)
    no_raw = {"parse_rate": None, "accuracy": None}
    raw_before = no_raw if args.quick else evaluate_raw(engine.resolve(lm.model).llama, key, adapter, test)
    logger.info("before: %s, raw (no grammar): %s", before, raw_before)

    steps: list[tuple[int, int, float, float]] = []

    def progress(step: int, total: int, loss: float) -> None:
        steps.append((step, total, loss, time.perf_counter()))
        logger.info("step %d/%d loss %.4f", step, total, loss)

    train_kwargs: dict[str, Any] = {
        "epochs": args.epochs or (1 if args.quick else 3),
        "max_steps": args.max_steps or (2 if args.quick else None),
        "batch_size": args.batch_size,
        "bf16": not args.no_bf16,
        "serve": args.serve,
        "progress": progress,
    }
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        train_kwargs["output_dir"] = tmp
        logger.info("fine-tuning %s on %d rows through lm.finetune (DSPy TrainingJob)", key, len(rows))
        started = time.perf_counter()
        job = lm.finetune(rows, TrainDataFormat.CHAT, train_kwargs)
        result = job.result()
        finetune_seconds = time.perf_counter() - started
        if isinstance(result, Exception):
            raise result
        ft_lm = result
        folder = engine.artifact_dir(ft_lm.model)
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        size_mb = round((folder / meta["file"]).stat().st_size / 1e6, 1)
        load_started = time.perf_counter()
        engine.resolve(ft_lm.model)
        load_seconds = time.perf_counter() - load_started

        logger.info("fine-tuned model %s: %d held-out tickets", ft_lm.model, len(test))
        after = evaluate_engine(ft_lm, adapter, test)
        raw_after = (
            no_raw if args.quick else evaluate_raw(engine.resolve(ft_lm.model).llama, key, adapter, test)
        )
        logger.info("after: %s, raw (no grammar): %s", after, raw_after)

    train_meta = meta["train"]
    result_json = {
        "model": key,
        "quick": args.quick,
        "rows": len(rows),
        "test": len(test),
        "steps": train_meta["steps"],
        "batch_size": train_meta["batch_size"],
        "epochs": train_meta["epochs"],
        "bf16": train_meta["bf16"],
        "seconds_per_step": train_meta["seconds_per_step"],
        "train_seconds": train_meta["seconds"],
        "export_seconds": train_meta["export_seconds"],
        "serve": meta["kind"],
        "load_seconds": round(load_seconds, 2),
        "finetune_seconds": round(finetune_seconds, 1),
        "first_loss": round(train_meta["first_loss"], 4),
        "final_loss": round(train_meta["final_loss"], 4),
        "peak_rss_mb": lora.peak_rss_mb(),
        # the training device and its memory: estimated before training (core.lms.lora.device) and measured
        "device": (train_meta.get("device") or {}).get("describe"),
        "memory_estimate_mb": train_meta.get("memory_estimate_mb"),
        "train_memory_mb": round(train_meta["train_peak_rss_mb"] - train_meta["rss_before_mb"], 1)
        if train_meta.get("rss_before_mb") else None,
        "device_peak_mb": train_meta.get("device_peak_mb"),
        "parse_rate_before": before["parse_rate"],
        "parse_rate_after": after["parse_rate"],
        "accuracy_before": before["accuracy"],
        "accuracy_after": after["accuracy"],
        "raw_parse_rate_before": raw_before["parse_rate"],
        "raw_parse_rate_after": raw_after["parse_rate"],
        "raw_accuracy_before": raw_before["accuracy"],
        "raw_accuracy_after": raw_after["accuracy"],
        "calls_per_min_base": before["cpm"],
        "calls_per_min_finetuned": after["cpm"],
        "quant": meta["quant"],
        "finetuned_size_mb": size_mb,
        "torch_threads": train_meta["torch_threads"],
    }
    print(json.dumps(result_json))
    return result_json


if __name__ == "__main__":
    main()
