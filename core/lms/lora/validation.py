"""The training budget chosen on held-out rows: which rows are held out, how a checkpoint scores on them, and
which checkpoint the fine-tune keeps.

A fixed budget suits one task and starves another (on a 150-row numeric table the embedded recipe learned
nothing in its 4 epochs; by hand, 10 epochs took test 30 -> 54). So the trainer scores the LoRA on validation rows:
the caller's (the weight step gives the run's validation examples, as rows of the same source), or else a share of
its rows held out (``validation_fraction``, stratified by answer so every label value is seen on both sides),
never trained on. It scores the LoRA on them at every checkpoint (each epoch, or every ``eval_every`` steps), keeps a
copy of the
best checkpoint's LoRA tensors, stops after ``patience`` checkpoints without a better one, and hands the best
one on. A checkpoint's score is the share of held-out answers the model would write exactly (every answer token
its greedy choice, read under teacher forcing from the same forward pass that gives the loss: if every token is
the argmax given the ones before, greedy decoding writes the answer), then the mean loss of the answer tokens.
The exact answer is what the run's metric scores for a label; the loss breaks ties and ranks a free-text answer.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MIN_ROWS_TO_HOLD_OUT = 10
"""Fewer rows than this train all of them for the whole budget (a held-out row or two could not choose it)."""


FORWARD_SHARE = 1 / 3
"""A held-out row's scoring (one forward pass, no gradients) against a training row's forward and backward passes:
the share of a training row's time, for the estimate."""


def held_out_count(rows: int, fraction: float) -> int:
    """How many of ``rows`` ``holdout_split`` holds out."""
    if fraction <= 0 or rows < MIN_ROWS_TO_HOLD_OUT:
        return 0
    return max(1, round(fraction * rows))


def holdout_split(answers: Sequence[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Row indices (train, held out): ``round(fraction * n)`` rows held out (at least 1), stratified by answer
    text, seeded. Nothing is held out when ``fraction`` is 0 or there are fewer than ``MIN_ROWS_TO_HOLD_OUT``
    rows. Each answer's share is held out by largest remainder, so a label with few rows keeps its training rows
    first: an answer seen once is held out only when answers seldom repeat (free text)."""
    n = len(answers)
    want = held_out_count(n, fraction)
    if not want:
        return list(range(n)), []
    groups: dict[str, list[int]] = defaultdict(list)
    for i, answer in enumerate(answers):
        groups[answer].append(i)
    rng = random.Random(seed)
    for members in groups.values():
        rng.shuffle(members)
    quotas = {a: fraction * len(m) for a, m in groups.items()}
    take = {a: int(q) if len(groups[a]) > 1 else 0 for a, q in quotas.items()}
    # the rest by largest remainder, among answers that keep at least one training row
    order = sorted(groups, key=lambda a: (-(quotas[a] - int(quotas[a])), a))
    while sum(take.values()) < want:
        room = [a for a in order if take[a] < len(groups[a]) - 1]
        if not room:
            break
        take[room[0]] += 1
        order.remove(room[0])
        order.append(room[0])
    held = [i for a, members in groups.items() for i in members[: take[a]]]
    if len(held) < want:  # free text (answers seldom repeat): any row can be held out
        rest = [i for a, members in groups.items() for i in members[take[a]:]]
        rng.shuffle(rest)
        held += rest[: want - len(held)]
    held.sort()
    kept = set(held)
    return [i for i in range(n) if i not in kept], held


@dataclass(frozen=True)
class Checkpoint:
    """The LoRA after ``step`` optimizer steps, scored on the held-out rows."""

    step: int
    loss: float
    """Mean cross-entropy of the held-out answer tokens."""
    exact: float
    """Share of held-out rows whose whole answer is the model's greedy choice (0-1)."""

    def beats(self, other: Checkpoint | None) -> bool:
        """More exact answers, or as many at a lower loss."""
        if other is None:
            return True
        return (self.exact, -self.loss) > (other.exact, -other.loss)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "val_loss": round(self.loss, 5), "val_exact": round(self.exact, 4)}


@dataclass
class BudgetChooser:
    """Checkpoints of one fine-tune and the best one's LoRA tensors (``keep`` copies them; they are the few MB of
    the adapter, not the model)."""

    patience: int
    checkpoints: list[Checkpoint] = field(default_factory=list)
    best: Checkpoint | None = None
    best_state: dict[str, Any] | None = field(default=None, repr=False)
    stale: int = 0
    """Checkpoints since the best one."""

    def record(self, checkpoint: Checkpoint, trainable: dict[str, Any]) -> bool:
        """Add a checkpoint; copy its tensors when it is the best so far. True when it is."""
        self.checkpoints.append(checkpoint)
        if checkpoint.beats(self.best):
            self.best, self.stale = checkpoint, 0
            self.best_state = {name: tensor.detach().clone() for name, tensor in trainable.items()}
            return True
        self.stale += 1
        return False

    @property
    def exhausted(self) -> bool:
        """``patience`` checkpoints in a row were no better than the best."""
        return self.stale >= self.patience

    def restore(self, trainable: dict[str, Any]) -> bool:
        """Put the best checkpoint's tensors back into the trained parameters when a later checkpoint is the one
        that trained last; True when it did."""
        if self.best_state is None or self.best is None or not self.checkpoints:
            return False
        if self.best.step == self.checkpoints[-1].step and self.stale == 0:
            return False
        import torch

        with torch.no_grad():
            for name, tensor in trainable.items():
                tensor.copy_(self.best_state[name])
        return True


def trainable_tensors(model: Any) -> dict[str, Any]:
    """The parameters a LoRA trains, by name (what a checkpoint copies)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def score_rows(causal_lm: Any, rows: Sequence[Any], passes: Sequence[Sequence[int]], device: Any,
               logits_of: Any) -> tuple[float, float]:
    """(mean answer-token loss, share of exactly answered rows) of ``rows`` in forward passes ``passes`` (indices
    into ``rows``), without gradients and with dropout off. ``logits_of(causal_lm, rows, device)`` gives a pass's
    answer-position logits, their target tokens and each target's row in the pass (``train.answer_logits``)."""
    import torch
    import torch.nn.functional as F

    was_training = causal_lm.training
    causal_lm.eval()
    total_loss, tokens, exact = 0.0, 0, 0
    try:
        with torch.no_grad():
            for micro in passes:
                logits, targets, row_of = logits_of(causal_lm, [rows[i] for i in micro], device)
                total_loss += float(F.cross_entropy(logits, targets, reduction="sum"))
                tokens += int(targets.numel())
                wrong = torch.zeros(len(micro), device=targets.device).index_add_(
                    0, row_of, (logits.argmax(dim=-1) != targets).float())
                exact += int((wrong == 0).sum())
    finally:
        causal_lm.train(was_training)
    return total_loss / max(1, tokens), exact / max(1, len(rows))
