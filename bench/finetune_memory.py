"""Benchmark: the memory and speed of a LoRA step by its levers (passes, weight precision, checkpointing).

Each configuration trains the same rows in a fresh process (its peak RSS is its own): the support-ticket intent
task with ``--demos`` demonstrations in every prompt, so rows reach ``max_length`` as the default run's do (rows of
the default template carry its demos), batch 8, ``--steps`` optimizer steps. Per configuration: seconds per step,
the memory the training took (peak RSS minus the RSS before it, MiB), the estimate ``core.lms.lora.device`` made
before training, and the losses (the levers change the memory, not the step: the losses must agree).

The levers:

* ``micro_batch_tokens``: a batch of 8 rows in forward passes of at most that many padded tokens, gradients
  accumulated (``core.lms.lora.train.micro_batches``); 3072 is one pass of the whole batch;
* ``weights``: ``float32`` weights under bfloat16 autocast (a CPU without bfloat16 instructions) or ``bfloat16``
  weights (a CPU with AVX512-BF16 or AMX: the default there, ``core.lms.lora.device``);
* ``gradient_checkpointing``: activations recomputed in the backward pass.

* ``--matrix levers``: the default run's rows (support triage's classify predictor, batch 4) by the shared prompt
  prefix (``core.lms.lora.prefix``; its second run for the backward pass on or off), ``max_length`` 384 (cuts
  them) or 512, and bfloat16 autocast on float32 weights (emulated on a CPU without bfloat16 instructions).

    python bench/finetune_memory.py            # the matrix, 4 steps each (~4 min on 2 cores)
    python bench/finetune_memory.py --matrix levers   # ~10 min on 2 AVX2 cores (the autocast step alone ~3 min)
    python bench/finetune_memory.py --quick    # two configurations, 2 steps on 16 rows (~1 min)

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

MATRIX: list[dict[str, Any]] = [
    {"weights": "float32", "micro_batch_tokens": 3072},
    {"weights": "float32", "micro_batch_tokens": 768},
    {"weights": "float32", "micro_batch_tokens": 384},
    {"weights": "bfloat16", "micro_batch_tokens": 3072},
    {"weights": "bfloat16", "micro_batch_tokens": 768},
    {"weights": "bfloat16", "micro_batch_tokens": 384},
    {"weights": "float32", "micro_batch_tokens": 3072, "gradient_checkpointing": True},
    {"weights": "bfloat16", "micro_batch_tokens": 768, "gradient_checkpointing": True},
]
QUICK = [MATRIX[0], MATRIX[4]]
# --matrix levers: the default run's rows (support triage's classify predictor, no demos, batch 4) by the levers of
# the shared prompt prefix (core.lms.lora.prefix), max_length (384 cuts those rows, 512 does not) and precision
# (float32 without autocast: a CPU without bfloat16 instructions; under bfloat16 autocast it is emulated there).
TRIAGE = {"rows_kind": "triage", "batch_size": 4, "micro_batch_tokens": 768, "weights": "float32", "autocast": False}
LEVERS: list[dict[str, Any]] = [
    {**TRIAGE, "max_length": 512, "share_prefix": True},
    {**TRIAGE, "max_length": 512, "share_prefix": True, "recompute_prefix": False},
    {**TRIAGE, "max_length": 512, "share_prefix": False},
    {**TRIAGE, "max_length": 384, "share_prefix": False},
    {**TRIAGE, "max_length": 384, "share_prefix": True},
    {**TRIAGE, "max_length": 512, "share_prefix": True, "autocast": True, "steps": 1},
]


def triage_rows(count: int) -> list[dict]:
    """The default run's weight-step rows: support triage's classify predictor (labels as Literal fields, as a run
    makes them), the gold intent and urgency, no demos; its ``summary`` input is the ticket's first sentence, standing
    in for the extract step's output (the rows' length and shared prefix are the run's)."""
    import dspy

    from core.programs import TEMPLATES, StagedPipeline
    from core.programs.build import apply_label_choices

    tickets = [json.loads(line) for line in (ROOT / "data" / "support_tickets.jsonl").read_text().splitlines() if line]
    program = StagedPipeline(TEMPLATES["support_triage"].stages)
    apply_label_choices(program, {name: sorted({t[name] for t in tickets}) for name in ("intent", "urgency")})
    classify = [p for name, p in program.named_predictors() if "classify" in name][0]
    adapter = dspy.ChatAdapter()
    return [adapter.format_finetune_data(classify.signature, demos=[], inputs={
        "ticket": t["ticket"], "summary": t["ticket"].split(". ")[0].rstrip(".") + "."},
        outputs={"intent": t["intent"], "urgency": t["urgency"]}) for t in tickets[:count]]


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this (fresh) process."""
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    import dspy
    import finetune as ticket_bench  # bench/finetune.py: the ticket task and its rows

    import core.lms.lora.prefix as prefix
    from core.lms.lora.device import TrainDevice, pick_device
    from core.lms.lora.params import TrainParams
    from core.lms.lora.train import train_lora

    if spec.get("rows_kind") == "triage":
        rows = triage_rows(spec["rows"])
    else:
        tickets = ticket_bench.load_tickets()
        adapter = dspy.ChatAdapter()
        demos = [dspy.Example(ticket=t["ticket"], intent=t["intent"]) for t in tickets[: spec["demos"]]]
        rows = [adapter.format_finetune_data(ticket_bench.TicketIntent, demos=demos, inputs={"ticket": t["ticket"]},
                                             outputs={"intent": t["intent"]})
                for t in tickets[spec["demos"]: spec["demos"] + spec["rows"]]]
    prefix.RECOMPUTE = spec.get("recompute_prefix", True)  # off: the prefix's activations kept through the passes
    cpu = pick_device("cpu")
    device = TrainDevice("cpu", spec["weights"], spec.get("autocast", True), cpu.name, cpu.total_bytes,
                         cpu.free_bytes, why="bench")
    params = TrainParams(max_steps=spec["steps"], micro_batch_tokens=spec["micro_batch_tokens"],
                         gradient_checkpointing=spec.get("gradient_checkpointing", False),
                         batch_size=spec.get("batch_size", 8), max_length=spec.get("max_length", 384),
                         share_prefix=spec.get("share_prefix", False), validation_fraction=0.0)
    result = train_lora("smollm2-135m", rows, params, device=device, merge=False)
    return {"s_per_step": result.seconds_per_step, "train_memory_mb": round(result.peak_rss_mb - result.rss_before_mb),
            "peak_rss_mb": result.peak_rss_mb, "rss_before_mb": result.rss_before_mb,
            "estimate_mb": result.memory_estimate_mb, "row_tokens": result.row_tokens,
            "truncated_rows": result.truncated_rows, "cut_tokens": result.cut_tokens,
            "device": result.device.describe(), "losses": [round(x, 4) for x in result.losses]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two configurations, 2 steps on 16 rows")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per configuration (default 4)")
    parser.add_argument("--demos", type=int, default=8, help="demonstrations in every prompt (default 8)")
    parser.add_argument("--matrix", choices=["memory", "levers"], default="memory",
                        help="memory: the passes/precision/checkpointing matrix on ticket rows with demos; levers: the "
                             "default run's rows by shared prefix, max_length and autocast")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    steps = args.steps or (2 if args.quick else 4)
    rows = 16 if args.quick else 32
    results = []
    matrix = (LEVERS[:2] if args.quick else LEVERS) if args.matrix == "levers" else QUICK if args.quick else MATRIX
    for config in matrix:
        spec = {"demos": args.demos, "rows": rows, "steps": steps, **config}
        started = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=1800)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"configuration {config} failed (exit {done.returncode})")
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        results.append({**config, **measured, "wall_s": round(time.perf_counter() - started, 1)})
        print(f"[{time.strftime('%H:%M:%S')}] {config}: {measured['s_per_step']} s/step, "
              f"{measured['train_memory_mb']} MB", file=sys.stderr, flush=True)
    base = results[0]
    for r in results:
        r["speed_vs_first"] = round(base["s_per_step"] / r["s_per_step"], 3)
        r["memory_vs_first"] = round(r["train_memory_mb"] / base["train_memory_mb"], 3)
    print(json.dumps({"bench": "finetune_memory", "quick": args.quick, "matrix": args.matrix, "model": "smollm2-135m",
                      "batch_size": 8 if args.matrix == "memory" else TRIAGE["batch_size"],
                      "rows": rows, "steps": steps, "demos": args.demos, "results": results}))


if __name__ == "__main__":
    main()
