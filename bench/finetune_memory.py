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

    python bench/finetune_memory.py            # the matrix, 4 steps each (~4 min on 2 cores)
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


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this (fresh) process."""
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    import dspy
    import finetune as ticket_bench  # bench/finetune.py: the ticket task and its rows

    from core.lms.lora.device import TrainDevice, pick_device
    from core.lms.lora.params import TrainParams
    from core.lms.lora.train import train_lora

    tickets = ticket_bench.load_tickets()
    adapter = dspy.ChatAdapter()
    demos = [dspy.Example(ticket=t["ticket"], intent=t["intent"]) for t in tickets[: spec["demos"]]]
    rows = [adapter.format_finetune_data(ticket_bench.TicketIntent, demos=demos, inputs={"ticket": t["ticket"]},
                                         outputs={"intent": t["intent"]})
            for t in tickets[spec["demos"]: spec["demos"] + spec["rows"]]]
    cpu = pick_device("cpu")
    device = TrainDevice("cpu", spec["weights"], True, cpu.name, cpu.total_bytes, cpu.free_bytes, why="bench")
    params = TrainParams(max_steps=spec["steps"], micro_batch_tokens=spec["micro_batch_tokens"],
                         gradient_checkpointing=spec.get("gradient_checkpointing", False))
    result = train_lora("smollm2-135m", rows, params, device=device, merge=False)
    return {"s_per_step": result.seconds_per_step, "train_memory_mb": round(result.peak_rss_mb - result.rss_before_mb),
            "peak_rss_mb": result.peak_rss_mb, "rss_before_mb": result.rss_before_mb,
            "estimate_mb": result.memory_estimate_mb, "row_tokens": result.row_tokens,
            "truncated_rows": result.truncated_rows, "losses": [round(x, 4) for x in result.losses]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="two configurations, 2 steps on 16 rows")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per configuration (default 4)")
    parser.add_argument("--demos", type=int, default=8, help="demonstrations in every prompt (default 8)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    steps = args.steps or (2 if args.quick else 4)
    rows = 16 if args.quick else 32
    results = []
    for config in QUICK if args.quick else MATRIX:
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
    print(json.dumps({"bench": "finetune_memory", "quick": args.quick, "model": "smollm2-135m", "batch_size": 8,
                      "rows": rows, "steps": steps, "demos": args.demos, "results": results}))


if __name__ == "__main__":
    main()
