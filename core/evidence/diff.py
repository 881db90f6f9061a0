"""What changed between two rounds, per predictor: the instruction diff by word, the demos added,
removed and kept, and which model served it (the base model or a fine-tuned copy). And inside one
round: the candidates its prompt step proposed (GEPA's), each with its score and its instructions'
diff against the program the step started from (``proposed_candidates``).

Why from the saved JSON and not by loading the program: each round's program is saved as it was
(``round_program`` artifacts, ``Module.save`` format); reading the JSON needs no LM engine, no user
code and no weights, so diffs work for any past run, in the page and in the offline report alike.
"""

from __future__ import annotations

import difflib
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import StudioError
from core.store import Store

_TOKENS = re.compile(r"\s+|[^\s]+")


@dataclass(frozen=True)
class WordOp:
    op: str  # "equal", "insert" or "delete"
    text: str


@dataclass(frozen=True)
class PredictorDiff:
    name: str
    model_a: str | None
    model_b: str | None
    served_a: str  # "base" or "fine-tuned"
    served_b: str
    instructions_a: str
    instructions_b: str
    words: tuple[WordOp, ...]
    demos_added: tuple[dict[str, Any], ...]
    demos_removed: tuple[dict[str, Any], ...]
    demos_kept: tuple[dict[str, Any], ...]

    @property
    def instructions_changed(self) -> bool:
        return self.instructions_a != self.instructions_b


def word_diff(a: str, b: str) -> list[WordOp]:
    """``a`` -> ``b`` as word-level operations (whitespace kept, so the text reads as written)."""
    ta, tb = _TOKENS.findall(a or ""), _TOKENS.findall(b or "")
    ops: list[WordOp] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, ta, tb, autojunk=False).get_opcodes():
        if tag == "equal":
            ops.append(WordOp("equal", "".join(ta[i1:i2])))
            continue
        if tag in ("delete", "replace"):
            ops.append(WordOp("delete", "".join(ta[i1:i2])))
        if tag in ("insert", "replace"):
            ops.append(WordOp("insert", "".join(tb[j1:j2])))
    return ops


def diff_html(ops: list[WordOp] | tuple[WordOp, ...]) -> str:
    """The word diff as HTML: deletions struck through in red, insertions underlined in green."""
    parts = []
    for op in ops:
        text = html.escape(op.text)
        if op.op == "delete":
            parts.append(f'<del style="background:#fdd;color:#a00">{text}</del>')
        elif op.op == "insert":
            parts.append(f'<ins style="background:#dfd;color:#060">{text}</ins>')
        else:
            parts.append(text)
    return "".join(parts)


def _demo(demo: Any) -> dict[str, Any]:
    items = demo.items() if hasattr(demo, "items") else dict(demo).items()
    return {k: v for k, v in items if not str(k).startswith("dspy_") and k != "augmented"}


def _key(demo: dict[str, Any]) -> str:
    return json.dumps(demo, sort_keys=True, default=str, ensure_ascii=False)


def round_state(store: Store, run_id: int, index: int) -> dict[str, Any]:
    """The saved program of round ``index`` of a run, as its ``Module.save`` JSON."""
    artifacts = [a for a in store.list_artifacts(run_id, "round_program") if a.meta.get("index") == index]
    if not artifacts:
        raise StudioError(f"run {run_id} has no saved program for round {index}; rounds saved: "
                          f"{sorted({a.meta.get('index') for a in store.list_artifacts(run_id, 'round_program')})}")
    path = Path(artifacts[-1].path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StudioError(f"cannot read the saved program of round {index} ({path}): {e}") from e


def finetuned_models(store: Store, run_id: int) -> set[str]:
    """Names of the models this run's weight steps produced."""
    names = {a.meta.get("model") for a in store.list_artifacts(run_id, "weights")}
    names |= {e.data.get("model") for e in store.list_events(run_id, kinds=["finetuned"])}
    return {n for n in names if n}


def predictors_of(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: value for name, value in state.items() if isinstance(value, dict) and "signature" in value}


def diff_states(a: dict[str, Any], b: dict[str, Any], finetuned: set[str]) -> list[PredictorDiff]:
    """Per predictor (in program order), what changed from saved program ``a`` to ``b``."""
    pa, pb = predictors_of(a), predictors_of(b)
    out = []
    for name in list(dict.fromkeys([*pa, *pb])):
        sa, sb = pa.get(name, {}), pb.get(name, {})
        ia = (sa.get("signature") or {}).get("instructions", "")
        ib = (sb.get("signature") or {}).get("instructions", "")
        ma = (sa.get("lm") or {}).get("model")
        mb = (sb.get("lm") or {}).get("model")
        da = [_demo(d) for d in sa.get("demos", [])]
        db = [_demo(d) for d in sb.get("demos", [])]
        keys_a, keys_b = {_key(d) for d in da}, {_key(d) for d in db}
        out.append(PredictorDiff(
            name=name, model_a=ma, model_b=mb,
            served_a="fine-tuned" if ma in finetuned else "base",
            served_b="fine-tuned" if mb in finetuned else "base",
            instructions_a=ia, instructions_b=ib, words=tuple(word_diff(ia, ib)),
            demos_added=tuple(d for d in db if _key(d) not in keys_a),
            demos_removed=tuple(d for d in da if _key(d) not in keys_b),
            demos_kept=tuple(d for d in db if _key(d) in keys_a),
        ))
    return out


def round_diff(store: Store, run_id: int, a: int, b: int) -> list[PredictorDiff]:
    """Per predictor, what changed from round ``a`` to round ``b`` of a run."""
    return diff_states(round_state(store, run_id, a), round_state(store, run_id, b), finetuned_models(store, run_id))


@dataclass(frozen=True)
class ProposedCandidate:
    """One set of instructions a prompt step tried inside a round (a ``candidates`` event, GEPA's step)."""

    index: int | None  # the step's candidate number (0: the program it started from); None: turned down
    score: float | None  # validation score (0-100); None for a proposal the minibatch turned down
    minibatch: tuple[float, float] | None  # a turned-down proposal's minibatch scores: (parent, proposal)
    kept: bool  # the step returned this candidate
    parents: tuple[int, ...]
    changes: tuple[tuple[str, tuple[WordOp, ...]], ...]  # (predictor, word diff) where instructions changed

    @property
    def label(self) -> str:
        """``candidate 1 (from 0): 85.0 on validation, kept`` or ``turned down: minibatch 1 -> 1``."""
        if self.index is None:
            before, after = self.minibatch or (None, None)
            return f"turned down: minibatch score {before:g} -> {after:g} (sum over the minibatch)" \
                if before is not None and after is not None else "turned down on the minibatch"
        origin = "the step's starting program" if self.index == 0 else \
            f"candidate {self.index} (from {', '.join(map(str, self.parents)) or '?'})"
        score = "no validation score" if self.score is None else f"{self.score:.1f} on validation"
        return f"{origin}: {score}" + (", kept" if self.kept else "")


def proposed_candidates(store: Store, run_id: int, strategy: str) -> list[ProposedCandidate]:
    """The candidates the step ending in round ``strategy`` recorded (kept ones first, by number, then the
    proposals turned down), each diffed against the step's first candidate; empty for other steps."""
    events = [e for e in store.list_events(run_id, kinds=["candidates"]) if e.data.get("strategy") == strategy]
    if not events:
        return []
    data = events[-1].data
    kept = data.get("candidates") or []
    start = kept[0]["instructions"] if kept else {}

    def changes(instructions: dict[str, str]) -> tuple[tuple[str, tuple[WordOp, ...]], ...]:
        return tuple((name, tuple(word_diff(start.get(name, ""), text))) for name, text in instructions.items()
                     if text != start.get(name, ""))

    out = [ProposedCandidate(c["index"], c.get("score"), None, c["index"] == data.get("best"),
                             tuple(c.get("parents") or ()), changes(c.get("instructions") or {})) for c in kept]
    out += [ProposedCandidate(None, None, (r.get("minibatch_before"), r.get("minibatch_after")), False, (),
                              changes(r.get("instructions") or {})) for r in data.get("rejected") or []]
    return out
