"""Benchmark: what an embedded call's time depends on, per predictor of the sample programs.

The Strategy page's estimate prices an embedded call from what it reads (its inputs' characters,
``bench/prompt_length.py``) and what it writes (its answer's tokens). This measures the second part:
each sample template's program, as a run serves it (the run's adapter and grammar, the shared
llama.cpp engine), answers training examples one at a time; a DSPy callback times every LM call and
SmolLM2's tokenizer counts the tokens of its answer. Per predictor: calls, mean input characters, mean
answer tokens, mean seconds, and the estimate's seconds per call for it. Then a least-squares fit over
all calls: ``seconds = a + b * input_chars + c * answer_tokens``, and the same with ``b`` fixed at
``bench/prompt_length.py``'s slope (the inputs here vary too little to measure it): ``a`` and ``c`` are what
``core.plan.estimate.EMBEDDED_CALL_SECONDS`` and ``SECONDS_PER_OUTPUT_TOKEN`` were set from. Run it with nothing else
on the machine.

    python bench/call_time.py            # the three sample templates, 12 examples each (~3 min)
    python bench/call_time.py --quick    # the classifier, 2 examples

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_common import quiet_logging  # noqa: E402 - bench/ is on sys.path when run as a script

TEMPLATES = ("support_triage", "classifier", "analyze_classify")


def least_squares(rows: list[tuple[float, ...]], ys: list[float]) -> list[float]:
    """Coefficients of the least-squares fit ``y = rows @ coef`` (normal equations, no numpy needed)."""
    n = len(rows[0])
    a = [[sum(r[i] * r[j] for r in rows) for j in range(n)] for i in range(n)]
    b = [sum(r[i] * y for r, y in zip(rows, ys, strict=True)) for i in range(n)]
    for col in range(n):  # Gauss-Jordan with partial pivoting
        pivot = max(range(col, n), key=lambda k: abs(a[k][col]))
        a[col], a[pivot], b[col], b[pivot] = a[pivot], a[col], b[pivot], b[col]
        for k in range(n):
            if k != col and a[col][col]:
                f = a[k][col] / a[col][col]
                a[k] = [x - f * y for x, y in zip(a[k], a[col], strict=True)]
                b[k] -= f * b[col]
    return [b[i] / a[i][i] for i in range(n)]


def _completion(outputs: Any) -> str:
    first = outputs[0] if isinstance(outputs, list) and outputs else outputs
    if isinstance(first, dict):
        first = first.get("text") or ""
    return first if isinstance(first, str) else ""


def measure(template: str, examples: int, tokenizer: Any) -> list[dict[str, Any]]:
    """Every LM call of ``examples`` training examples of ``template``'s default program, timed."""
    import dspy
    from dspy.utils.callback import BaseCallback

    from core.config.defaults import default_config_dict
    from core.config.schema import parse_config
    from core.plan.prepare import prepare_run
    from core.run.build import make_adapter

    prepared = prepare_run(parse_config(default_config_dict(template)))
    program = prepared.program
    names = {id(p): n for n, p in program.named_predictors()}
    calls: list[dict[str, Any]] = []

    class Timer(BaseCallback):
        def __init__(self) -> None:
            self.stack: list[str] = []
            self.pending: dict[str, tuple[str, float, float]] = {}

        def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            if id(instance) in names:
                self.stack.append(names[id(instance)])
                kwargs = inputs.get("kwargs") or {}
                fields = instance.signature.input_fields
                self.chars = float(sum(len(str(kwargs.get(f, ""))) for f in fields))

        def on_module_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
            pass

        def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
            self.pending[call_id] = (self.stack[-1] if self.stack else "?", self.chars, time.perf_counter())

        def on_lm_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
            name, chars, started = self.pending.pop(call_id)
            seconds = time.perf_counter() - started
            calls.append({"template": template, "predictor": name, "seconds": round(seconds, 4),
                          "input_chars": chars, "answer_chars": len(_completion(outputs)),
                          "answer_tokens": len(tokenizer.answer(_completion(outputs)))})

    timer = Timer()
    rows = prepared.split.train[:examples]
    with dspy.context(adapter=make_adapter(prepared.runtimes), callbacks=[timer]), \
            contextlib.redirect_stdout(sys.stderr):
        for example in rows:
            timer.stack = []
            program(**example.inputs())
    return calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the classifier, 2 examples")
    parser.add_argument("--examples", type=int, default=12, help="training examples per template")
    args = parser.parse_args()
    quiet_logging()

    from core.config.defaults import default_config
    from core.data import load_table_from_path
    from core.lms.lora.rows import Tokenizer
    from core.plan.estimate import (
        SECONDS_PER_INPUT_CHAR,
        SECONDS_PER_OUTPUT_TOKEN,
        data_label_choices,
        embedded_call_seconds,
        inspected_program,
    )
    from core.plan.prepare import data_source_path

    def estimated(template: str, predictor: str) -> float:
        config = default_config(template)
        table = load_table_from_path(data_source_path(config))
        return embedded_call_seconds(config, inspected_program(config, data_label_choices(config, table)), table,
                                     predictor)

    templates, examples = (("classifier",), 2) if args.quick else (TEMPLATES, args.examples)
    tokenizer = Tokenizer("smollm2-135m")
    calls: list[dict[str, Any]] = []
    for template in templates:
        measured = measure(template, examples + 1, tokenizer)
        first = measured[0]["predictor"]  # the first example loads the model and fills the prefix states: dropped
        drop = next(i for i, c in enumerate(measured[1:], 1) if c["predictor"] == first)
        calls += measured[drop:]
        print(f"[{time.strftime('%H:%M:%S')}] {template}: {len(measured) - drop} calls", file=sys.stderr, flush=True)
    per_predictor = []
    for key in dict.fromkeys((c["template"], c["predictor"]) for c in calls):
        group = [c for c in calls if (c["template"], c["predictor"]) == key]
        per_predictor.append({
            "template": key[0], "predictor": key[1], "calls": len(group),
            "input_chars": round(statistics.fmean(c["input_chars"] for c in group), 1),
            "answer_chars": round(statistics.fmean(c["answer_chars"] for c in group), 1),
            "answer_tokens": round(statistics.fmean(c["answer_tokens"] for c in group), 1),
            "seconds": round(statistics.fmean(c["seconds"] for c in group), 3),
            "estimate_seconds": round(estimated(*key), 3),
        })
        print(per_predictor[-1], file=sys.stderr, flush=True)
    fit = fixed = None
    if len(per_predictor) >= 3:
        a, b, c = least_squares([(1.0, c["input_chars"], c["answer_tokens"]) for c in calls],
                                [c["seconds"] for c in calls])
        fit = {"intercept": round(a, 4), "seconds_per_input_char": round(b, 6), "seconds_per_answer_token": round(c, 5)}
        # the inputs vary little here (78-195 characters): with bench/prompt_length.py's slope, measured on texts of
        # 150-3000 characters, fit the fixed part and the answer's
        slope = SECONDS_PER_INPUT_CHAR["embedded"]
        a, c = least_squares([(1.0, c["answer_tokens"]) for c in calls],
                             [c["seconds"] - slope * c["input_chars"] for c in calls])
        fixed = {"intercept": round(a, 4), "seconds_per_input_char": slope, "seconds_per_answer_token": round(c, 5)}
    print(json.dumps({
        "bench": "call_time", "quick": args.quick, "examples_per_template": examples, "calls": len(calls),
        "per_predictor": per_predictor, "fit": fit, "fit_with_input_slope": fixed,
        "estimate_seconds_per_output_token": SECONDS_PER_OUTPUT_TOKEN["embedded"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
