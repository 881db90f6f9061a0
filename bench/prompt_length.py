"""Benchmark: seconds per embedded call against the length of the text the call reads.

The Strategy page's estimate prices an embedded call at ~0.7 s for the sample tasks' short inputs (~140
characters) plus ``core.plan.estimate.SECONDS_PER_INPUT_CHAR`` per character beyond. This measures that slope:
the classifier template's program (one ``Predict``, its label constrained to the sample's values, as a run
serves it: the run's adapter and grammar, the shared llama.cpp engine) classifies texts of several lengths,
made of whole sentences of the bundled documents, each text different so that no prompt prefix beyond the
system message is reused. Per length: the median seconds per call; then the least-squares slope in seconds
per character, next to the estimate's constant. Run it with nothing else on the machine.

    python bench/prompt_length.py            # 150, 600, 1500, 3000 characters, 8 calls each (~2 min)
    python bench/prompt_length.py --quick    # 2 lengths, 2 calls each

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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_common import quiet_logging  # noqa: E402 - bench/ is on sys.path when run as a script

from core.plan.calibration import reference_texts as texts  # noqa: E402 - the calibration probe's texts


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(x, y)`` points."""
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 lengths, 2 calls each")
    parser.add_argument("--calls", type=int, default=8, help="calls per length")
    args = parser.parse_args()
    quiet_logging()

    import dspy

    from core.config.defaults import default_config_dict
    from core.config.schema import parse_config
    from core.data import Table
    from core.plan.estimate import SECONDS_PER_INPUT_CHAR, data_label_choices, embedded_call_seconds, inspected_program
    from core.plan.prepare import prepare_run
    from core.run.build import make_adapter

    lengths, calls = ((150, 1500), 2) if args.quick else ((150, 600, 1500, 3000), args.calls)
    prepared = prepare_run(parse_config(default_config_dict("classifier")))
    program = prepared.program
    (field,) = next(iter(program.named_predictors()))[1].signature.input_fields
    medians: dict[int, float] = {}
    samples: dict[int, list[float]] = {}
    with dspy.context(adapter=make_adapter(prepared.runtimes)), contextlib.redirect_stdout(sys.stderr):
        program(**{field: "warm-up."})  # loads the model
        for chars in lengths:
            samples[chars] = []
            for text in texts(chars, calls, seed=chars):
                started = time.perf_counter()
                program(**{field: text})
                samples[chars].append(round(time.perf_counter() - started, 3))
            medians[chars] = round(statistics.median(samples[chars]), 3)
            print(f"[{time.strftime('%H:%M:%S')}] {chars} characters: median {medians[chars]} s {samples[chars]}",
                  file=sys.stderr, flush=True)
    fitted = slope(list(medians.items()))
    config = prepared.config
    labels = prepared.label_choices.get(next(iter(config.data.labels)), ["positive"])

    def estimated(chars: int) -> float:  # what the estimate says for one call of this program on such texts
        column, label = config.data.mapping[field], config.data.mapping[next(iter(config.data.labels))]
        table = Table(columns=(column, label), format="json",
                      rows=tuple({column: "w" * chars, label: labels[i % len(labels)]} for i in range(30)))
        return embedded_call_seconds(config, inspected_program(config, data_label_choices(config, table)), table,
                                     next(iter(program.named_predictors()))[0])

    print(json.dumps({
        "bench": "prompt_length", "quick": args.quick, "model": prepared.config.lms["small"].model,
        "calls_per_length": calls, "median_seconds": medians, "seconds": samples,
        "seconds_per_char": round(fitted, 6), "estimate_seconds_per_char": SECONDS_PER_INPUT_CHAR["embedded"],
        "estimate_seconds_per_call": {str(c): round(estimated(c), 3) for c in lengths},
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
