"""The training budget chosen on held-out rows: the split, the choice of checkpoint, and the real trainer keeping
the best checkpoint's LoRA."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from core.lms import lora as lf
from core.lms.lora.device import pick_device
from core.lms.lora.rows import encode_rows
from core.lms.lora.train import answer_logits, micro_batches
from core.lms.lora.validation import (
    MIN_ROWS_TO_HOLD_OUT,
    BudgetChooser,
    Checkpoint,
    held_out_count,
    holdout_split,
    score_rows,
)

KEY = "smollm2-135m"


def test_the_split_is_stratified_by_answer_seeded_and_never_overlaps() -> None:
    answers = ["a"] * 12 + ["b"] * 6 + ["c"] * 2
    train, held = holdout_split(answers, 0.2, seed=3)
    assert len(held) == held_out_count(20, 0.2) == 4
    assert sorted(train + held) == list(range(20)) and not set(train) & set(held)
    counts = Counter(answers[i] for i in held)
    assert counts["a"] >= 2 and counts["b"] >= 1  # every common answer on both sides
    assert all(Counter(answers[i] for i in train)[a] >= 1 for a in "abc")  # no answer loses all its training rows
    assert holdout_split(answers, 0.2, seed=3) == (train, held)
    assert holdout_split(answers, 0.2, seed=4) != (train, held)


def test_an_answer_seen_once_stays_in_training_unless_answers_are_free_text() -> None:
    labels = ["x"] * 9 + ["rare"]
    _, held = holdout_split(labels, 0.3, seed=0)
    assert 9 not in held and len(held) == 3
    free_text = [f"answer {i}" for i in range(15)]  # no answer repeats: any row can be held out
    train, held = holdout_split(free_text, 0.2, seed=0)
    assert len(held) == 3 and len(train) == 12


def test_few_rows_or_a_zero_fraction_hold_nothing_out() -> None:
    assert holdout_split(["a", "b"] * 4, 0.5, seed=0) == (list(range(8)), [])
    assert MIN_ROWS_TO_HOLD_OUT > 8
    assert holdout_split(["a"] * 40, 0.0, seed=0) == (list(range(40)), [])
    assert held_out_count(10, 0.01) == 1  # at least one row once it holds out


def test_the_chooser_keeps_the_best_checkpoint_and_stops_after_patience() -> None:
    torch = pytest.importorskip("torch")
    weight = torch.zeros(3)
    chooser = BudgetChooser(patience=2)
    scores = [(0, 2.0, 0.0), (3, 1.0, 0.5), (6, 0.6, 0.5), (9, 0.4, 0.25), (12, 0.7, 0.5)]
    kept = []
    for step, loss, exact in scores:
        weight.fill_(step)
        kept.append(chooser.record(Checkpoint(step, loss, exact), {"w": weight}))
        if chooser.exhausted:
            break
    # step 6 beats step 3 (as many exact answers, lower loss); step 9 has fewer exact answers, step 12 a higher loss
    assert kept == [True, True, True, False, False] and chooser.best.step == 6 and chooser.exhausted
    assert chooser.restore({"w": weight}) and weight.tolist() == [6.0, 6.0, 6.0]
    fresh = BudgetChooser(patience=1)
    fresh.record(Checkpoint(0, 1.0, 0.0), {"w": weight})
    assert not fresh.restore({"w": weight})  # the best is the last trained: nothing to put back


@pytest.fixture()
def model_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' shared model cache (conftest), converted once."""
    monkeypatch.delenv("STUDIO_TORCH_THREADS", raising=False)
    lf.ensure_hf_cache(KEY)


def _rows(n: int) -> list[dict]:
    """A label task the model must learn: the colour word of a made-up object name, two labels."""
    rows = []
    for i in range(n):
        label = ("vermilion", "cerulean")[i % 2]
        rows.append({"messages": [
            {"role": "system", "content": "Answer with the colour of the object."},
            {"role": "user", "content": f"Object: {'ab'[i % 2]}-{i:02d}"},
            {"role": "assistant", "content": label},
        ]})
    return rows


def test_the_trainer_scores_checkpoints_on_held_out_rows_and_keeps_the_best(model_cache) -> None:
    seen: list[dict] = []
    params, _ = lf.parse_train_kwargs(KEY, {"output_dir": "unused", "epochs": 4, "batch_size": 4, "seed": 0,
                                            "learning_rate": 3e-3, "patience": 2})
    validation = _rows(16)[12:]
    result = lf.train_lora(KEY, _rows(12), params, merge=False, on_checkpoint=seen.append, validation_rows=validation)
    assert result.held_out_rows == 4 and result.rows == 12
    points = result.checkpoints
    # the untrained LoRA, then one checkpoint per epoch of the 12 training rows
    assert [p["step"] for p in points][:2] == [0, 3] and all(p["step"] % 3 == 0 for p in points)  # 12 rows: 3 steps
    assert points[0]["val_exact"] == 0.0  # the base model does not answer the made-up colours
    best = max(points, key=lambda p: (p["val_exact"], -p["val_loss"]))
    assert result.chosen_step == best["step"] and best["val_loss"] < points[0]["val_loss"]
    if result.stopped == "patience":
        assert len(result.losses) < 12 and points[-1]["step"] - best["step"] == 2 * 3
    else:
        assert result.stopped == "budget" and len(result.losses) == 12
    heard = [s for s in seen if "step" in s]
    assert [{k: s[k] for k in ("step", "val_loss", "val_exact")} for s in heard] == points
    assert [s["step"] for s in heard if s["best"]][-1] == result.chosen_step and {s["held_out"] for s in heard} == {4}
    assert seen[-1] == {"chosen_step": result.chosen_step, "stopped": result.stopped, "held_out": 4}
    assert result.validation_seconds > 0
    # the returned model carries the kept checkpoint's LoRA (scored in float32 now, in bfloat16 while training)
    held = encode_rows(KEY, validation, params.max_length)
    passes = micro_batches(range(len(held)), [len(r.prompt) + len(r.answer) for r in held], 768)
    loss, exact = score_rows(result.peft_model.get_base_model(), held, passes, pick_device(bf16=False), answer_logits)
    assert loss == pytest.approx(best["val_loss"], rel=0.05) and exact == best["val_exact"]


def test_a_time_bound_stops_training_and_still_scores_the_last_state(model_cache) -> None:
    params, _ = lf.parse_train_kwargs(KEY, {"output_dir": "unused", "epochs": 20, "batch_size": 4, "seed": 0,
                                            "validation_fraction": 0.25, "max_minutes": 1e-4})
    started = time.monotonic()
    result = lf.train_lora(KEY, _rows(12), params, merge=False)
    assert result.stopped == "time" and len(result.losses) == 1 and result.total_steps == 20 * 3
    assert [p["step"] for p in result.checkpoints] == [0, 1]  # the untrained LoRA and the last trained state
    assert time.monotonic() - started < 120


def test_validation_rows_of_the_caller_score_and_every_training_row_trains(model_cache) -> None:
    params, _ = lf.parse_train_kwargs(KEY, {"output_dir": "unused", "epochs": 1, "batch_size": 4, "seed": 0})
    extra = _rows(16)[12:]
    result = lf.train_lora(KEY, _rows(12), params, merge=False, validation_rows=extra)
    assert result.held_out_rows == 4 and result.total_steps == 3  # all 12 rows train: 3 steps of 4
    assert [p["step"] for p in result.checkpoints] == [0, 3]
    off, _ = lf.parse_train_kwargs(KEY, {"output_dir": "unused", "epochs": 1, "batch_size": 4, "seed": 0,
                                         "validation_fraction": 0.0, "max_steps": 1})
    plain = lf.train_lora(KEY, _rows(12), off, merge=False, validation_rows=extra)
    assert plain.held_out_rows == 0 and plain.checkpoints == [] and plain.chosen_step is None
