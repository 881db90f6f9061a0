"""Inference benchmark of the embedded engine (issue item 8).

Measures, in one process and on the same prompts (rendered by the real ChatAdapter for the
support-ticket task, with the same output grammar):

(calls/min are each path's best of several interleaved rounds: the machine is shared)

- LM calls per minute of DSPy ``Predict`` calls through ``LlamaEngine`` vs raw llama.cpp
  ``create_completion`` on the same ``Llama`` instance (``ratio_vs_raw``, goal >= 0.9);
- the effect of llama.cpp's prefix reuse: raw calls one after the other on one instance (the KV
  cache of the shared system message is reused) vs the same calls with ``llama.reset()`` before
  each (the whole prompt is evaluated every time);
- the zero-shot parse rate (answers the ChatAdapter parses into every output field) and the
  accuracy on ``intent``;
- plain generation and prompt tokens/s (llama.cpp's own counters, ``core.lms.doctor.measure_generation``)
  and which llama-cpp-python it ran (path, compiled CPU extensions).

``--compare-build`` measures the portable and the native llama-cpp-python builds on this machine
in the same run instead (``bench/build_compare.py``).

Usage::

    python bench/inference.py [--quick] [--model smollm2-135m|gemma3-270m] [--n N] [--compare-build]

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Literal

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import dspy  # noqa: E402

from core.lms import (  # noqa: E402
    catalog,
    doctor,  # noqa: E402
    embedded,
    grammar,
)
from core.lms.registry import make_embedded_lm  # noqa: E402

logger = logging.getLogger("bench.inference")

INLINE_TICKETS = [
    {"ticket": "I was charged twice for my subscription this month.", "intent": "billing", "urgency": "high"},
    {"ticket": "The app crashes every time I click save.", "intent": "bug", "urgency": "high"},
    {"ticket": "I cannot log in, the password reset email never arrives.", "intent": "account", "urgency": "high"},
    {"ticket": "It would be nice to have a dark mode some day.", "intent": "feature_request", "urgency": "low"},
    {"ticket": "Please send me last year's invoices when you can.", "intent": "billing", "urgency": "low"},
    {"ticket": "The export button does nothing on Firefox.", "intent": "bug", "urgency": "low"},
    {"ticket": "How do I change the e-mail address of my account?", "intent": "account", "urgency": "low"},
    {"ticket": "Could you add bulk user import? We need it for our renewal.", "intent": "feature_request",
     "urgency": "high"},
]


class SupportTicket(dspy.Signature):
    """Classify the support ticket by intent and urgency."""

    ticket: str = dspy.InputField()
    intent: Literal["billing", "bug", "account", "feature_request"] = dspy.OutputField()
    urgency: Literal["low", "high"] = dspy.OutputField()


def load_tickets(n: int) -> list[dict]:
    """``n`` tickets from data/support_tickets.jsonl (inline samples if it is missing)."""
    path = REPO_ROOT / "data" / "support_tickets.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        rows = INLINE_TICKETS
    return [rows[i % len(rows)] for i in range(n)]


def per_minute(calls: int, seconds: float) -> float:
    return round(60.0 * calls / seconds, 1) if seconds > 0 else 0.0


def run_engine(lm: dspy.LM, adapter: dspy.ChatAdapter, tickets: list[dict]) -> tuple[float, int, int]:
    """Predict calls through the engine: (seconds, parsed, intent correct)."""
    predict = dspy.Predict(SupportTicket)
    parsed = correct = 0
    started = time.perf_counter()
    with dspy.context(lm=lm, adapter=adapter):
        for row in tickets:
            try:
                prediction = predict(ticket=row["ticket"])
            except Exception as e:  # an unparseable answer: AdapterParseError
                logger.info("not parsed: %s", str(e)[:120])
                continue
            parsed += 1
            correct += prediction.intent == row["intent"]
    return time.perf_counter() - started, parsed, correct


def raw_prompts(key: str, adapter: dspy.ChatAdapter, tickets: list[dict]) -> list[tuple[str, str | None]]:
    """(prompt text, grammar text) for each ticket, rendered exactly as the engine does."""
    out = []
    for row in tickets:
        messages = adapter.format(SupportTicket, demos=[], inputs={"ticket": row["ticket"]})
        out.append((catalog.render_prompt(key, messages), grammar.grammar_for_system(messages[0]["content"])))
    return out


def run_raw(llama, key: str, prompts, max_tokens: int, reset: bool, adapter) -> tuple[float, int]:
    """Raw ``create_completion`` calls: (seconds, answers the ChatAdapter parses)."""
    parsed = 0
    elapsed = 0.0
    for prompt, grammar_text in prompts:
        if reset:
            llama.reset()  # forget the KV cache: the whole prompt is evaluated again
        started = time.perf_counter()
        out = llama.create_completion(
            prompt=prompt,
            max_tokens=max_tokens,
            temperature=0.0,
            stop=catalog.stop_strings(key),
            grammar=grammar.compile_grammar(grammar_text, llama) if grammar_text else None,
        )
        elapsed += time.perf_counter() - started
        try:
            adapter.parse(SupportTicket, out["choices"][0]["text"])
            parsed += 1
        except Exception:
            pass
    return elapsed, parsed


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few calls (under a minute)")
    parser.add_argument("--model", default="smollm2-135m", choices=sorted(catalog.MODELS))
    parser.add_argument("--n", type=int, default=None, help="tickets per round and path")
    parser.add_argument("--compare-build", action="store_true",
                        help="portable vs native llama-cpp-python, same machine and run (bench/build_compare.py)")
    args = parser.parse_args(argv)
    if args.compare_build:
        import build_compare

        return build_compare.main(["--model", args.model, *(["--quick"] if args.quick else [])])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")

    n = args.n or (4 if args.quick else 12)
    rounds = 2 if args.quick else 3
    max_tokens = 384
    tickets = load_tickets(n * rounds)
    adapter = dspy.ChatAdapter(use_json_adapter_fallback=False)
    lm = make_embedded_lm(args.model, temperature=0.0, max_tokens=max_tokens)
    loaded = embedded.LlamaEngine.shared().resolve(lm.model)

    logger.info("warm-up (%s)", args.model)
    run_engine(lm, adapter, tickets[:1])
    run_raw(loaded.llama, args.model, raw_prompts(args.model, adapter, tickets[:1]), max_tokens, False, adapter)

    # The machine is shared: interleave the three measurements in rounds (different tickets per
    # round, the same tickets for the three paths) and keep each path's best round.
    engine_s, raw_s, reset_s = [], [], []
    parsed = correct = raw_parsed = 0
    for r in range(rounds):
        batch = tickets[r * n : (r + 1) * n]
        prompts = raw_prompts(args.model, adapter, batch)
        logger.info("round %d/%d: engine, %d Predict calls", r + 1, rounds, n)
        seconds, ok, right = run_engine(lm, adapter, batch)
        engine_s.append(seconds)
        parsed, correct = parsed + ok, correct + right
        logger.info("round %d/%d: raw create_completion, prefix reuse", r + 1, rounds)
        seconds, ok = run_raw(loaded.llama, args.model, prompts, max_tokens, False, adapter)
        raw_s.append(seconds)
        raw_parsed += ok
        logger.info("round %d/%d: raw create_completion, KV cache reset before each call", r + 1, rounds)
        reset_s.append(run_raw(loaded.llama, args.model, prompts, max_tokens, True, adapter)[0])

    logger.info("plain generation, llama.cpp's counters")
    generation = max((doctor.measure_generation(args.model, tokens=64) for _ in range(rounds)),
                     key=lambda g: g["generation_tok_per_s"] or 0)
    total = n * rounds
    engine_cpm, raw_cpm = per_minute(n, min(engine_s)), per_minute(n, min(raw_s))
    result = {
        "model": args.model,
        "quick": args.quick,
        "calls": total,
        "rounds": rounds,
        "engine_calls_per_min": engine_cpm,
        "raw_calls_per_min": raw_cpm,
        "ratio_vs_raw": round(engine_cpm / raw_cpm, 3) if raw_cpm else None,
        "prefix_reuse_calls_per_min": raw_cpm,
        "no_prefix_reuse_calls_per_min": per_minute(n, min(reset_s)),
        "prefix_reuse_speedup": round(min(reset_s) / min(raw_s), 2),
        "parse_rate": round(parsed / total, 3),
        "raw_parse_rate": round(raw_parsed / total, 3),
        "accuracy": round(correct / total, 3),
        "round_seconds": {"engine": [round(x, 1) for x in engine_s], "raw": [round(x, 1) for x in raw_s],
                          "no_reuse": [round(x, 1) for x in reset_s]},
        "prompt_tokens": len(loaded.llama.tokenize(raw_prompts(args.model, adapter, tickets[:1])[0][0].encode(),
                                                   special=True)),
        "threads": embedded.n_threads(),
        "generation_tok_per_s": generation["generation_tok_per_s"],
        "prompt_tok_per_s": generation["prompt_tok_per_s"],
        "llama_cpp": generation["llama_cpp"],
        "cpu_features": generation["cpu_features"],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
