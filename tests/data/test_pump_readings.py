"""The bundled numeric sample (pump sensor readings -> status): made deterministically with balanced labels, and
its rule is real and learnable: thresholds on the vibration recover the labels, also when fitted on the default
run's 50 training rows; the distractor readings do not."""

from __future__ import annotations

import importlib.util
import random
import re
from collections import Counter
from pathlib import Path
from types import ModuleType

from core.config.defaults import default_config
from core.data import load_table_from_path
from core.plan.prepare import load_data

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
READINGS = ("bearing_temp", "vibration", "pressure", "flow_rate")
STATUSES = ("normal", "warning", "fault")


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_samples", DATA_DIR / "make_samples.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _banded(values: list[float], low: float, high: float) -> list[str]:
    """The three-band rule: below ``low`` normal, below ``high`` warning, else fault."""
    return ["normal" if v < low else "warning" if v < high else "fault" for v in values]


def _accuracy(predicted: list[str], gold: list[str]) -> float:
    return sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)


def _best_bands(values: list[float], gold: list[str], grid: int = 24) -> tuple[float, float, float]:
    """(accuracy, low, high) of the best three-band rule whose limits are among ``grid`` quantiles of ``values``
    (either way round: a reading may fall as the status rises)."""
    ordered = sorted(values)
    cuts = sorted({ordered[i * (len(ordered) - 1) // grid] for i in range(1, grid)})
    best = (0.0, 0.0, 0.0)
    flipped = [-v for v in values]
    for i, low in enumerate(cuts):
        for high in cuts[i + 1:]:
            best = max(best, (_accuracy(_banded(values, low, high), gold), low, high),
                       (_accuracy(_banded(flipped, -high, -low), gold), low, high))
    return best


def test_the_pump_readings_are_deterministic_balanced_numbers() -> None:
    make = _generator().make_pump_readings
    rows = make(random.Random(7))
    assert rows == make(random.Random(7))
    assert rows != make(random.Random(8))
    assert Counter(r["status"] for r in rows) == {status: 56 for status in STATUSES}
    assert all(re.fullmatch(r"\d{1,3}\.\d", r[c]) for r in rows for c in READINGS)  # one decimal, in text cells
    assert list(rows[0]) == [*READINGS, "status"]


def test_the_committed_table_follows_the_vibration_rule_with_a_little_noise() -> None:
    table = load_table_from_path(DATA_DIR / "pump_readings.csv")
    gold = [r["status"] for r in table.rows]
    vibration = [float(r["vibration"]) for r in table.rows]
    accuracy = _accuracy(_banded(vibration, 3.0, 6.0), gold)  # the documented rule (data/README.md)
    assert 0.85 <= accuracy < 1.0, accuracy  # real, and noisy near the limits
    for distractor in ("pressure", "flow_rate"):  # no rule of the same form on a distractor comes close
        values = [float(r[distractor]) for r in table.rows]
        assert _best_bands(values, gold)[0] < 0.55, distractor


def test_the_rule_is_learnable_from_the_default_runs_fifty_training_rows() -> None:
    """Limits fitted on the 50 training rows of the default run's split classify its 50 test rows."""
    config = default_config("pump_status")
    _, split = load_data(config)
    assert (len(split.train), len(split.val), len(split.test)) == (50, 50, 50)
    train_gold = [ex.status for ex in split.train]
    accuracy, low, high = _best_bands([float(ex.vibration) for ex in split.train], train_gold)
    assert accuracy >= 0.9 and 2.0 <= low <= 4.0 and 5.0 <= high <= 7.0, (accuracy, low, high)
    test_predicted = _banded([float(ex.vibration) for ex in split.test], low, high)
    assert _accuracy(test_predicted, [ex.status for ex in split.test]) >= 0.85
