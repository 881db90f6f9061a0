"""Built-in metrics: each returns a float in [0, 1].

All metrics accept DSPy's metric signature ``metric(example, prediction, trace=None)`` and the two
extra arguments GEPA passes (``pred_name``, ``pred_trace``). The module-level functions score the
example's label fields (``example.labels()``); ``make_metric`` returns a deep-copyable callable
bound to explicit label fields, which is what runs use. Its ``feedback`` says in words which label
field was wrong, what was expected and what came out (GEPA's feedback, ``core.optimizers.gepa``).

A field missing from the prediction (or a ``None`` prediction) counts as a mismatch. List values
(e.g. ``key_findings: list[str]``) are joined with ``", "`` before comparing.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import MetricError, shown

__all__ = [
    "METRICS",
    "Metric",
    "MetricInfo",
    "exact_match",
    "field_match",
    "make_metric",
    "normalize_answer",
    "normalize_text",
    "token_f1",
]

_MISSING = object()
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCT = frozenset(string.punctuation)


@dataclass(frozen=True)
class MetricInfo:
    """A built-in metric's name and a one-line description for the UI."""

    name: str
    description: str


def _to_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(_to_text(v) for v in value)
    return str(value)


def normalize_text(value: Any) -> str:
    """Exact-match normalisation: strip, lower-case, collapse whitespace, drop trailing periods."""
    text = " ".join(_to_text(value).lower().split())
    while text.endswith("."):
        text = text[:-1].rstrip()
    return text


def normalize_answer(value: Any) -> str:
    """SQuAD-style normalisation: lower-case, remove punctuation and articles, collapse whitespace."""
    text = _to_text(value).lower()
    text = "".join(
        " " if ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P") else ch for ch in text
    )
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return _MISSING
    if isinstance(obj, Mapping):
        return obj.get(name, _MISSING)
    try:
        return obj[name]
    except (KeyError, IndexError, TypeError, AttributeError):
        pass
    return getattr(obj, name, _MISSING)


def _gold(example: Any, name: str) -> Any:
    value = _get(example, name)
    if value is _MISSING:
        keys = list(example.keys()) if hasattr(example, "keys") else []
        raise MetricError(
            f"Label field {shown(name)} is not in the example (its fields: "
            f"{shown(list(map(str, keys)), quotes=False, brackets=False) or 'none'}). "
            "Map a column to every label field."
        )
    return value


def _exact(example: Any, prediction: Any, name: str) -> float:
    gold = _gold(example, name)
    pred = _get(prediction, name)
    if pred is _MISSING:
        return 0.0
    return 1.0 if normalize_text(gold) == normalize_text(pred) else 0.0


def _f1(example: Any, prediction: Any, name: str) -> float:
    gold = _gold(example, name)
    pred = _get(prediction, name)
    if pred is _MISSING:
        return 0.0
    gold_tokens = normalize_answer(gold).split()
    pred_tokens = normalize_answer(pred).split()
    if not gold_tokens or not pred_tokens:
        return 1.0 if gold_tokens == pred_tokens else 0.0
    same = sum((Counter(gold_tokens) & Counter(pred_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _score_exact(example: Any, prediction: Any, fields: Iterable[str]) -> float:
    return 1.0 if all(_exact(example, prediction, f) == 1.0 for f in fields) else 0.0


def _score_field(example: Any, prediction: Any, fields: Iterable[str]) -> float:
    scores = [_exact(example, prediction, f) for f in fields]
    return sum(scores) / len(scores)


def _score_f1(example: Any, prediction: Any, fields: Iterable[str]) -> float:
    scores = [_f1(example, prediction, f) for f in fields]
    return sum(scores) / len(scores)


_SCORERS: dict[str, Callable[[Any, Any, Iterable[str]], float]] = {
    "exact_match": _score_exact,
    "field_match": _score_field,
    "token_f1": _score_f1,
}

_FIELD_SCORERS: dict[str, Callable[[Any, Any, str], float]] = {
    "exact_match": _exact,
    "field_match": _exact,
    "token_f1": _f1,
}
FEEDBACK_CHARS = 200
"""A value longer than this is cut in a metric's feedback."""


def _quoted(value: Any) -> str:
    text = _to_text(value)
    return repr(text if len(text) <= FEEDBACK_CHARS else text[:FEEDBACK_CHARS] + "...")


METRICS: dict[str, MetricInfo] = {
    "exact_match": MetricInfo(
        "exact_match",
        "1 if every label field matches exactly (ignoring case, spaces and a final period), else 0.",
    ),
    "field_match": MetricInfo(
        "field_match", "Share of label fields that match exactly (ignoring case, spaces and a final period)."
    ),
    "token_f1": MetricInfo(
        "token_f1",
        "Word-overlap F1 per label field (SQuAD style: no case, punctuation or articles), averaged.",
    ),
}
"""Built-in metrics by name."""


def _example_labels(example: Any) -> list[str]:
    try:
        labels = list(example.labels().keys())
    except (AttributeError, ValueError, TypeError) as e:
        raise MetricError(
            "The example has no input fields set, so its label fields are unknown; build examples with "
            ".with_inputs(...) or use make_metric(name, label_fields)."
        ) from e
    if not labels:
        raise MetricError(
            "The example has no label fields to score; map a column to at least one label field."
        )
    return labels


def exact_match(
    example: Any, prediction: Any, trace: Any = None, pred_name: str | None = None, pred_trace: Any = None
) -> float:
    """1.0 if all of the example's label fields match the prediction after normalising, else 0.0."""
    return _score_exact(example, prediction, _example_labels(example))


def field_match(
    example: Any, prediction: Any, trace: Any = None, pred_name: str | None = None, pred_trace: Any = None
) -> float:
    """Mean of per-label-field exact matches."""
    return _score_field(example, prediction, _example_labels(example))


def token_f1(
    example: Any, prediction: Any, trace: Any = None, pred_name: str | None = None, pred_trace: Any = None
) -> float:
    """Mean over label fields of SQuAD-style token F1."""
    return _score_f1(example, prediction, _example_labels(example))


class Metric:
    """A built-in metric bound to label fields; picklable and deep-copyable (plain attributes only)."""

    def __init__(self, name: str, label_fields: list[str]) -> None:
        self.name = name
        self.__name__ = name
        self.label_fields = tuple(label_fields)

    def __call__(
        self,
        example: Any,
        prediction: Any,
        trace: Any = None,
        pred_name: str | None = None,
        pred_trace: Any = None,
    ) -> float:
        """Score ``prediction`` against ``example`` on the bound label fields, in [0, 1]."""
        return _SCORERS[self.name](example, prediction, self.label_fields)

    def feedback(self, example: Any, prediction: Any) -> str:
        """What this metric saw, in words (GEPA's reflection LM reads it): the score, then per label field
        whether it was right, and when not, what was expected and what came out."""
        score = self(example, prediction)
        parts = [f"Score {score:g} of 1 ({self.name} over {', '.join(self.label_fields)})."]
        for name in self.label_fields:
            gold, pred = _gold(example, name), _get(prediction, name)
            field_score = 0.0 if pred is _MISSING else _FIELD_SCORERS[self.name](example, prediction, name)
            if pred is _MISSING:
                parts.append(f"`{name}` is wrong: the answer has no `{name}`; expected {_quoted(gold)}.")
            elif field_score == 1.0:
                parts.append(f"`{name}` is right: {_quoted(pred)}.")
            else:
                verdict = f"partly right (word-overlap F1 {field_score:.2f})" if field_score > 0.0 else "wrong"
                parts.append(f"`{name}` is {verdict}: expected {_quoted(gold)}, got {_quoted(pred)}.")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"Metric({self.name!r}, label_fields={list(self.label_fields)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Metric) and (self.name, self.label_fields) == (
            other.name,
            other.label_fields,
        )

    def __hash__(self) -> int:
        return hash((self.name, self.label_fields))


def make_metric(name: str, label_fields: list[str]) -> Metric:
    """Build the built-in metric ``name`` scoring ``label_fields``."""
    if name not in METRICS:
        raise MetricError(f"Unknown metric {shown(name)}; allowed metrics: {', '.join(METRICS)}.")
    if isinstance(label_fields, str) or not isinstance(label_fields, (list, tuple)):
        raise MetricError(f"Metric label fields must be a list of field names, got {shown(label_fields)}.")
    bad = [f for f in label_fields if not isinstance(f, str) or not f.strip()]
    if bad:
        raise MetricError(f"Metric label fields must be non-empty names, got {shown(bad)}.")
    fields = list(dict.fromkeys(label_fields))
    if not fields:
        raise MetricError(
            f"Metric {shown(name)} needs at least one label field to compare; the program has none mapped."
        )
    return Metric(name, fields)
