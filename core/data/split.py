"""Cut examples into train, validation and test, the same way for the same seed.

Sizes are counts or ratios; a split that would leave a part too small to optimise or evaluate on
is refused up front, naming how many examples it would need. When labels look like classes the
cut is stratified, so train, validation and test keep the data's label proportions instead of
whatever a shuffle gives.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dspy

from core.data.messages import quoted
from core.errors import DataError, shown

__all__ = [
    "MAX_STRATA_VALUES",
    "MIN_EXAMPLES",
    "MIN_TEST",
    "MIN_TRAIN",
    "MIN_VAL",
    "Split",
    "categorical_labels",
    "split_examples",
]

MIN_TRAIN = 2
MIN_VAL = 1
MIN_TEST = 1
MIN_EXAMPLES = MIN_TRAIN + MIN_VAL + MIN_TEST
"""Smallest dataset that can be split: 2 train + 1 validation + 1 test examples."""


@dataclass(frozen=True)
class Split:
    """A train/validation/test split of examples."""

    train: list[dspy.Example]
    val: list[dspy.Example]
    test: list[dspy.Example]

    @property
    def sizes(self) -> tuple[int, int, int]:
        """``(len(train), len(val), len(test))``."""
        return len(self.train), len(self.val), len(self.test)

    def to_dict(self) -> dict[str, Any]:
        """The split as plain JSON types: each example's fields (in order) and its input fields."""
        return {part: [{"fields": example.toDict(), "inputs": _input_names(example)} for example in getattr(self, part)]
                for part in ("train", "val", "test")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Split:
        """The split ``to_dict`` wrote: the same examples, in the same order, with the same inputs."""
        def example(row: dict[str, Any]) -> dspy.Example:
            built = dspy.Example(**row["fields"])
            return built.with_inputs(*row["inputs"]) if row["inputs"] else built

        return cls(*([example(row) for row in data[part]] for part in ("train", "val", "test")))


def _input_names(example: dspy.Example) -> list[str]:
    try:
        return list(example.inputs().keys())
    except ValueError:  # an example without declared inputs
        return []


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def _ratio_counts(n: int, train: float, val: float, test: float) -> tuple[int, int, int]:
    n_val, n_test = _round(val * n), _round(test * n)
    rest = n - n_val - n_test
    n_train = rest if abs(train + val + test - 1.0) <= 1e-6 else min(_round(train * n), rest)
    return max(n_train, 0), n_val, n_test


def _counts_ok(counts: tuple[int, int, int]) -> bool:
    return counts[0] >= MIN_TRAIN and counts[1] >= MIN_VAL and counts[2] >= MIN_TEST


def _min_needed_for_ratios(train: float, val: float, test: float, cap: int = 1_000_000) -> int | None:
    for n in range(MIN_EXAMPLES, cap + 1):
        if _counts_ok(_ratio_counts(n, train, val, test)):
            return n
    return None


MAX_STRATA_VALUES = 20


def categorical_labels(examples: Sequence[dspy.Example]) -> list[str]:
    """Label fields that look like classes: 2-20 distinct values, at most half as many as examples
    (the rule ``core.plan.prepare.label_choices`` uses for label choices)."""
    try:
        keys = list(examples[0].labels().keys()) if examples else []
    except ValueError:  # examples without declared inputs have no labels
        return []
    out = []
    for key in keys:
        values = {str(ex.get(key, "")) for ex in examples}
        if 2 <= len(values) <= MAX_STRATA_VALUES and len(values) * 2 <= len(examples):
            out.append(key)
    return out


def _stratified_order(examples: Sequence[dspy.Example], order: list[int], fields: list[str]) -> list[int]:
    """``order`` interleaved so that every contiguous slice holds each label value in proportion.

    Each stratum (tuple of the ``fields`` values) keeps its shuffled order; its i-th of m members is
    placed at (i + 0.5) / m, ties broken by the stratum's first appearance in ``order``.
    """
    strata: dict[tuple, list[int]] = {}
    for i in order:
        strata.setdefault(tuple(str(examples[i].get(f, "")) for f in fields), []).append(i)
    placed = [((k + 0.5) / len(members), rank, i)
              for rank, members in enumerate(strata.values()) for k, i in enumerate(members)]
    return [i for _, _, i in sorted(placed)]


def split_examples(
    examples: Sequence[dspy.Example], train: float, val: float, test: float, seed: int, *, stratify: bool = True
) -> Split:
    """Shuffle ``examples`` with ``random.Random(seed)`` and cut train/val/test.

    Sizes are all ints (counts) or all floats (ratios, summing to at most 1.0). At least
    ``MIN_TRAIN`` train, ``MIN_VAL`` validation and ``MIN_TEST`` test examples are required.

    With ``stratify`` (default) and categorical labels (``categorical_labels``), the shuffled order is
    interleaved by label values first, so train, validation and test each keep the label proportions
    of the data (within one example per value). Contract: the same examples, sizes and seed always
    give the same split; a different seed gives a different one.
    """
    sizes = {"train": train, "val": val, "test": test}
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"Split seed must be an integer, got {shown(seed)}.")
    bad = [k for k, v in sizes.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise DataError(f"Split size(s) {quoted(bad)} must be numbers (counts or ratios), got {shown(sizes)}.")
    n = len(examples)
    minimums = f"at least {MIN_TRAIN} train, {MIN_VAL} val and {MIN_TEST} test"
    if all(isinstance(v, int) for v in sizes.values()):
        low = [
            f"{k}={shown(v)} (minimum {m})"
            for (k, v), m in zip(sizes.items(), (MIN_TRAIN, MIN_VAL, MIN_TEST), strict=True)
            if v < m
        ]
        if low:
            raise DataError(f"Split sizes too small: {', '.join(low)}; a split needs {minimums} examples.")
        counts = (int(train), int(val), int(test))
        if sum(counts) > n:
            raise DataError(
                f"This split (train {train}, val {val}, test {test}) needs at least {sum(counts)} examples; "
                f"there are {n}."
            )
    elif all(isinstance(v, float) for v in sizes.values()):
        out = [f"{k}={shown(v)}" for k, v in sizes.items() if not (0.0 < v <= 1.0) or not math.isfinite(v)]
        if out:
            raise DataError(
                f"Split ratio(s) {', '.join(out)} are out of range; each ratio must be > 0 and <= 1."
            )
        total = train + val + test
        if total > 1.0 + 1e-6:
            raise DataError(
                f"Split ratios sum to {total:.4g} (train {train} + val {val} + test {test}); "
                "they must sum to at most 1.0."
            )
        counts = _ratio_counts(n, train, val, test)
        if not _counts_ok(counts):
            need = _min_needed_for_ratios(train, val, test)
            need_text = f"at least {need}" if need is not None else "more than 1,000,000"
            raise DataError(
                f"This split (train {train}, val {val}, test {test}) needs {need_text} examples to give "
                f"{minimums} example(s); there are {n} (it would give {counts[0]}/{counts[1]}/{counts[2]})."
            )
    else:
        raise DataError(
            f"Split sizes must be all counts (integers) or all ratios (floats), got train={shown(train)}, "
            f"val={shown(val)}, test={shown(test)}."
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    fields = categorical_labels(examples) if stratify else []
    if fields:
        order = _stratified_order(examples, order, fields)
    n_train, n_val, n_test = counts
    picked = [examples[i] for i in order]
    return Split(
        train=picked[:n_train],
        val=picked[n_train : n_train + n_val],
        test=picked[n_train + n_val : n_train + n_val + n_test],
    )
