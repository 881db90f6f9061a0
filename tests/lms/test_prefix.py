"""The shared prompt prefix (core.lms.lora.prefix): a step that runs the rows' common prefix once gets the loss and
the LoRA gradients of whole rows, on tiny random models of the two embedded families (built here, no weights)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from core.lms.lora.device import TrainDevice  # noqa: E402
from core.lms.lora.prefix import MIN_SHARED, SharedPrefix, can_share, pass_tokens, shared_length, step_shared  # noqa: E402
from core.lms.lora.rows import EncodedRow  # noqa: E402
from core.lms.lora.train import answer_logits, answer_loss, micro_batches  # noqa: E402

CPU = TrainDevice("cpu", "float32", False, "cpu", 0, 0)


def tiny(family: str) -> tuple[object, object]:
    """(the PEFT model, its causal LM) of a 2-layer random model with a LoRA whose B is not zero."""
    torch.manual_seed(0)
    if family == "llama":
        config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
        model = transformers.LlamaForCausalLM(config)
    else:  # gemma3: sliding and full attention layers alternate, as in gemma3-270m
        config = transformers.Gemma3TextConfig(vocab_size=96, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                                               head_dim=8, sliding_window=128, max_position_embeddings=256,
                                               layer_types=["sliding_attention", "full_attention"])
        model = transformers.Gemma3ForCausalLM(config)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                      init_lora_weights=False))
    lora.train()
    return lora, lora.get_base_model()


def rows(shared: int = 24) -> list[EncodedRow]:
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(3, 96, (shared,), generator=g).tolist()
    out = []
    for own, answer in ((9, 3), (5, 2), (12, 4)):
        out.append(EncodedRow(prefix + torch.randint(3, 96, (own,), generator=g).tolist(),
                              torch.randint(3, 96, (answer,), generator=g).tolist()))
    return out


def lora_grads(model: object) -> dict[str, object]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_a_shared_prefix_gives_the_loss_and_gradients_of_whole_rows(family: str) -> None:
    model, lm = tiny(family)
    batch = rows()
    whole = answer_loss(lm, batch, CPU)
    whole.backward()
    expected = lora_grads(model)
    model.zero_grad(set_to_none=True)

    n = shared_length([r.prompt for r in batch])
    assert n == 24
    prefix = SharedPrefix(lm, batch[0].prompt[:n], CPU, grad=True)
    answers = sum(len(r.answer) for r in batch)
    total = 0.0
    for micro in ([0, 2], [1]):  # two passes over one prefix, weighed by their answer tokens as train_lora does
        part = [batch[i] for i in micro]
        loss = answer_loss(lm, part, CPU, prefix=prefix)
        share = sum(len(r.answer) for r in part) / answers
        (loss * share).backward()
        total += loss.item() * share
    prefix.backward()
    got = lora_grads(model)

    assert total == pytest.approx(float(whole), rel=1e-5)
    assert set(got) == set(expected) and len(got) > 0
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, rtol=1e-4, atol=1e-6), name
    # the prefix's own layers got their gradient through it: the first layer's LoRA differs from zero
    assert any(float(g.abs().sum()) > 0 for name, g in got.items() if "layers.0." in name)


def test_the_prefix_run_again_for_its_backward_draws_the_same_dropout_as_a_kept_one(monkeypatch) -> None:
    """With a LoRA dropout, the prefix's second run (``RECOMPUTE``) must draw the masks of its first, which the
    passes' gradients were computed against: the gradients equal those of keeping the first run's graph."""
    import core.lms.lora.prefix as prefix_module

    def grads(recompute: bool) -> tuple[dict[str, object], object]:
        monkeypatch.setattr(prefix_module, "RECOMPUTE", recompute)
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256))
        lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5,
                                                          target_modules="all-linear", init_lora_weights=False))
        lora.train()
        lm = lora.get_base_model()
        batch = rows()
        torch.manual_seed(7)
        prefix = SharedPrefix(lm, batch[0].prompt[:24], CPU, grad=True)
        for micro in ([0, 2], [1]):
            answer_loss(lm, [batch[i] for i in micro], CPU, prefix=prefix).backward()
        prefix.backward()
        return lora_grads(lora), torch.get_rng_state()

    kept, kept_rng = grads(False)
    again, again_rng = grads(True)
    assert set(kept) == set(again) and len(kept) > 0
    for name, grad in kept.items():
        assert torch.allclose(again[name], grad, rtol=1e-5, atol=1e-7), name
    assert torch.equal(kept_rng, again_rng)  # the second run leaves the random stream where the step left it


def test_scoring_with_a_prefix_gives_the_logits_of_whole_rows() -> None:
    model, lm = tiny("llama")
    model.eval()
    batch = rows()
    with torch.no_grad():
        whole, targets, row_of = answer_logits(lm, batch, CPU)
        prefix = SharedPrefix(lm, batch[0].prompt[:24], CPU, grad=False)
        shared, shared_targets, shared_row_of = answer_logits(lm, batch, CPU, prefix=prefix)
    assert torch.equal(targets, shared_targets) and torch.equal(row_of, shared_row_of)
    assert torch.allclose(whole, shared, rtol=1e-4, atol=1e-5)


def test_what_is_shared_and_what_a_pass_holds() -> None:
    a, b = [1] * 20 + [2, 3], [1] * 20 + [4]
    assert shared_length([a, b]) == 20  # b's last prompt token stays its own: it predicts b's first answer token
    assert shared_length([a]) == 0  # one row: nothing to share
    assert shared_length([[1] * (MIN_SHARED - 1) + [2], [1] * (MIN_SHARED - 1) + [3]]) == 0  # too short to pay
    assert pass_tokens([30, 25], 20) == 20 + 2 * 10 and pass_tokens([30, 25], 0) == 60
    # passes of at most 55 tokens: with 20 shared, 4 rows of 30 need 2 passes (20 + 3 x 10 = 50, then one more)
    assert micro_batches(range(4), [30] * 4, 55, shared=20) == [[0, 1, 2], [3]]
    assert micro_batches(range(4), [30] * 4, 60) == [[0, 1], [2, 3]]
    llama = {"model_type": "llama"}
    assert can_share(llama, 4096) and not can_share(llama, 100, gradient_checkpointing=True)
    assert can_share({"sliding_window": 512}, 512) and not can_share({"sliding_window": 512}, 513)
    assert not can_share({"text_config": {"num_kv_shared_layers": 10}}, 100)
    assert step_shared([a, b], {"sliding_window": 8}, 22) == 0 and step_shared([a, b], llama, 22) == 20


def test_held_out_scores_over_one_prefix_are_those_of_whole_rows() -> None:
    """A checkpoint scores its held-out rows in passes of one row over one prefix run (train_lora's held_logits)."""
    from core.lms.lora.validation import score_rows

    model, lm = tiny("llama")
    batch = rows()
    whole = score_rows(lm, batch, [[0], [1], [2]], CPU, answer_logits)
    prefix: list[SharedPrefix] = []

    def over_one_prefix(m: object, part: list[EncodedRow], on: TrainDevice) -> tuple[object, object, object]:
        if not prefix:  # built inside score_rows: without gradients, dropout off
            prefix.append(SharedPrefix(m, batch[0].prompt[:24], on, grad=False))
        return answer_logits(m, part, on, prefix=prefix[0])

    shared = score_rows(lm, batch, [[0], [1], [2]], CPU, over_one_prefix)
    assert len(prefix) == 1 and not prefix[0]._leaves[0][0].requires_grad
    assert shared[0] == pytest.approx(whole[0], rel=1e-5) and shared[1] == whole[1]
    assert lm.training  # score_rows put the model back in training mode
