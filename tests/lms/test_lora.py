"""LoRA fine-tuning of the embedded SmolLM2 on the CPU, GGUF re-export and serving.

Real model, tiny budgets: the safetensors cache is built once per module (in a temporary model
cache), the training rows are short and every run takes a handful of steps.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from dspy.clients.utils_finetune import TrainDataFormat

from core.errors import LMError, StepCancelled
from core.lms import catalog, embedded, gguf_export
from core.lms import lora as lf
from core.lms.registry import make_embedded_lm

KEY = "smollm2-135m"
BASE = f"embedded/{KEY}"
SYSTEM = "Answer with the category of the word."
WORDS = ["flimbo", "qwertan", "blorpish", "snargle", "vintrop", "gallumph", "prexit", "drombus"]
LABEL = "zorblax"


def memo_rows(words: list[str] = WORDS) -> list[dict]:
    """A tiny memorisable task: every made-up word belongs to the made-up category LABEL."""
    return [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Word: {w}"},
                {"role": "assistant", "content": LABEL},
            ]
        }
        for w in words
    ]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A model cache of this module, with SmolLM2's safetensors conversion timed once."""
    root = tmp_path_factory.mktemp("models")
    mp = pytest.MonkeyPatch()
    mp.setattr(catalog, "model_cache_dir", lambda: root)
    started = time.monotonic()
    folder = lf.ensure_hf_cache(KEY)
    info = {"root": root, "folder": folder, "seconds": time.monotonic() - started}
    yield info
    mp.undo()


@pytest.fixture(autouse=True)
def use_model_cache(model_cache: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog, "model_cache_dir", lambda: model_cache["root"])
    monkeypatch.delenv("STUDIO_TORCH_THREADS", raising=False)


def greedy_tokens(path: Path, prompts: list[str], n: int = 12) -> list[list[int]]:
    """Greedy completion tokens of ``prompts`` served by llama.cpp from ``path``."""
    from llama_cpp import Llama

    llama = Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False, seed=0)
    out = []
    for prompt in prompts:
        tokens = llama.tokenize(prompt.encode(), add_bos=True, special=True)
        llama.reset()
        generated = []
        for token in llama.generate(tokens, temp=0.0, top_k=1):
            generated.append(int(token))
            if len(generated) >= n or token == llama.token_eos():
                break
        out.append(generated)
    return out


# --- base weights cache ------------------------------------------------------------------------------


def test_safetensors_cache_is_built_once_and_reused(model_cache: dict) -> None:
    folder = model_cache["folder"]
    assert folder == model_cache["root"] / f"{KEY}-hf"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "source.json"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "config.json").read_text()).get("quantization_config") is None
    mtime = (folder / "model.safetensors").stat().st_mtime_ns

    started = time.monotonic()
    assert lf.ensure_hf_cache(KEY) == folder
    model = lf.load_base_model(KEY)
    reload_seconds = time.monotonic() - started
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime  # not converted again
    assert reload_seconds < max(5.0, model_cache["seconds"] / 2)
    assert model.config.model_type == "llama" and model.dtype.is_floating_point
    assert not list(model_cache["root"].glob("*.partial"))


# --- GGUF round trip -----------------------------------------------------------------------------------


def test_unchanged_base_round_trips_through_gguf(tmp_path: Path) -> None:
    shipped = catalog.gguf_path(KEY)
    model = lf.load_base_model(KEY)
    full = gguf_export.write_gguf(model.state_dict(), shipped, tmp_path / "base.f32.gguf")

    # Same tensors, names, order and (dequantized) values as the shipped file.
    ours, theirs = gguf_export.dequantized_tensors(full), gguf_export.dequantized_tensors(shipped)
    assert list(ours) == list(theirs)
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)

    # Same metadata (tokenizer, chat template, hyper-parameters), except the file type.
    import gguf

    a, b = gguf.GGUFReader(full), gguf.GGUFReader(shipped)
    skip = {"general.file_type", "GGUF.kv_count", "GGUF.tensor_count"}
    assert {k for k in b.fields if k not in skip} <= set(a.fields)
    for key in ("tokenizer.chat_template", "llama.rope.freq_base", "tokenizer.ggml.eos_token_id"):
        assert a.fields[key].contents() == b.fields[key].contents()

    # Quantized back to the shipped type, llama.cpp serves the very same greedy tokens.
    requantized = gguf_export.quantize_gguf(full, tmp_path / "base.q4_1.gguf", "Q4_1")
    prompts = [
        catalog.render_prompt(KEY, [{"role": "user", "content": "What is the capital of France?"}]),
        catalog.render_prompt(
            KEY,
            [
                {"role": "system", "content": "Classify the ticket."},
                {"role": "user", "content": "My invoice is wrong, I was charged twice."},
            ],
        ),
    ]
    expected = greedy_tokens(shipped, prompts)
    assert all(len(tokens) >= 8 for tokens in expected)
    assert greedy_tokens(requantized, prompts) == expected


# --- training --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("serve", ["lora", "merged"])
def test_finetune_learns_a_label_and_serves_it(tmp_path: Path, serve: str) -> None:
    """``serve: lora``: adapter.gguf applied to the shipped GGUF at load time; ``merged``: a re-quantized GGUF."""
    lm = make_embedded_lm(KEY, temperature=0.0, max_tokens=8)
    assert isinstance(lm.provider, lf.LocalLoRAProvider) and lm.provider.finetunable
    lm.launch()
    lm.launch()  # idempotent no-ops
    question = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Word: {WORDS[0]}"}]
    assert LABEL not in lm(messages=question)[0]

    calls: list[tuple[int, int, float]] = []
    kwargs = {
        "output_dir": str(tmp_path / "run"),
        "epochs": 4,
        "batch_size": 8,
        "seed": 1,
        "serve": serve,
        "progress": lambda step, total, loss: calls.append((step, total, loss)),
    }
    job = lm.finetune(memo_rows(), TrainDataFormat.CHAT, kwargs)  # DSPy's own thread + TrainingJob
    ft_lm = job.result(timeout=600)
    assert not isinstance(ft_lm, Exception), ft_lm
    assert job.status() == "succeeded"
    lm.kill()
    lm.kill()

    assert [c[0] for c in calls] == [1, 2, 3, 4] and {c[1] for c in calls} == {4}
    assert calls[-1][2] < calls[0][2]
    assert ft_lm.model.startswith(f"{BASE}:ft-") and ft_lm.model != BASE

    folder = embedded.artifact_dir(ft_lm.model)
    assert folder == tmp_path / "run" / catalog.safe_name(ft_lm.model)
    meta = json.loads((folder / "meta.json").read_text())
    file = {"lora": "adapter.gguf", "merged": "model.gguf"}[serve]
    assert meta["base"] == KEY and meta["kind"] == serve and meta["file"] == file
    assert meta["quant"] == ("Q4_K_M" if serve == "merged" else None)
    train = meta["train"]
    assert train["steps"] == 4 and train["rows"] == 8 and train["final_loss"] < train["first_loss"]
    assert 0 < train["peak_rss_mb"] < 24 * 1024
    # where and how it trained (STUDIO_TRAIN_DEVICE unset: the best device here, the CPU on a CPU-only torch)
    device = train["device"]
    assert device["kind"] == lf.pick_device().kind and device["describe"] == lf.pick_device().describe()
    if device["kind"] == "cpu":
        native = lf.device.cpu_computes_bf16(__import__("torch")) and train["bf16"]
        assert (device["dtype"], device["autocast"]) == (("bfloat16", True) if native else ("float32", False))
    assert 0 < train["rss_before_mb"] < train["train_peak_rss_mb"] <= train["peak_rss_mb"]
    assert train["memory_estimate_mb"] > train["train_peak_rss_mb"] - train["rss_before_mb"]
    # each phase's own peak (the process's high-water mark restarted before it), none above the process's
    assert 0 < train["merge_peak_rss_mb"] <= train["peak_rss_mb"] and 0 < train["export_peak_rss_mb"] <= train["peak_rss_mb"]
    assert train["peak_rss_mb"] >= max(train["train_peak_rss_mb"], train["merge_peak_rss_mb"], train["export_peak_rss_mb"])
    line = lf.provider.trained_on(folder)
    # float32 passes hold fewer tokens, in the activation memory of 768 under reduced precision
    assert train["pass_tokens"] == (768 if device["dtype"] != "float32" or device["autocast"] else 433)
    shared = f", {train['shared_tokens']:.0f} prompt tokens shared per step" if train["shared_tokens"] else ""
    assert line.startswith(f"trained on {device['describe']}: 8 rows, 4 steps of batch 8 in passes of at most "
                           f"{train['pass_tokens']} tokens{shared} (4 epochs, max_length 512)")
    assert sorted(p.name for p in folder.iterdir()) == sorted(["meta.json", file])
    served = embedded.LlamaEngine.shared().resolve(ft_lm.model)
    if serve == "lora":  # the shipped 4-bit GGUF itself, with the adapter on top
        assert (served.path, served.lora_path) == (catalog.gguf_path(KEY), folder / file)
    else:
        assert (served.path, served.lora_path) == (folder / file, None)

    answer = ft_lm(messages=question)[0]
    assert answer.strip() == LABEL
    # A second fine-tune of the same base gets another name.
    assert ft_lm.model not in (BASE,) and len(ft_lm.model.split(":ft-")[1]) == 8


def test_should_stop_cancels_between_steps_and_registers_nothing(tmp_path: Path) -> None:
    provider = lf.LocalLoRAProvider(register=embedded.LlamaEngine.shared().register_finetuned)
    steps: list[int] = []
    before = set(embedded.LlamaEngine.shared().known_models())
    kwargs = {
        "output_dir": str(tmp_path / "run"),
        "epochs": 5,
        "batch_size": 4,
        "progress": lambda step, total, loss: steps.append(step),
        "should_stop": lambda: len(steps) >= 2,
    }
    with pytest.raises(StepCancelled, match="cancelled at step 2 of 10"):
        provider.finetune(None, BASE, memo_rows(), TrainDataFormat.CHAT, kwargs)
    assert steps == [1, 2]
    assert set(embedded.LlamaEngine.shared().known_models()) == before
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_base_exception_in_a_callback_becomes_an_lm_error(tmp_path: Path) -> None:
    def progress(step: int, total: int, loss: float) -> None:
        raise KeyboardInterrupt("boom")

    kwargs = {"output_dir": str(tmp_path), "max_steps": 1, "batch_size": 2, "progress": progress}
    with pytest.raises(LMError, match="KeyboardInterrupt"):
        lf.LocalLoRAProvider(register=embedded.LlamaEngine.shared().register_finetuned).finetune(None, BASE, memo_rows()[:2], "chat", kwargs)


def test_seeded_runs_are_identical() -> None:
    def losses(seed: int) -> list[float]:
        params, _ = lf.parse_train_kwargs(
            KEY, {"output_dir": "unused", "max_steps": 2, "batch_size": 2, "seed": seed, "lora_dropout": 0.1}
        )
        return lf.train_lora(KEY, memo_rows(WORDS + ["x" * 30, "yy"]), params, merge=False).losses

    first = losses(7)
    assert len(first) == 2
    assert losses(7) == first
    assert losses(8) != first


def test_long_rows_are_truncated_from_the_left_keeping_the_answer() -> None:
    long_row = {
        "messages": [
            {"role": "system", "content": "Context: " + "lorem ipsum dolor sit amet " * 60},
            {"role": "user", "content": "Word: flimbo"},
            {"role": "assistant", "content": LABEL},
        ]
    }
    tokenizer = lf.Tokenizer(KEY)
    full = lf.encode_rows(KEY, [long_row], 4096, tokenizer)[0]
    short = lf.encode_rows(KEY, [long_row], 64, tokenizer)[0]
    assert not full.truncated and short.truncated
    assert len(full.prompt) + len(full.answer) > 300
    assert len(short.prompt) + len(short.answer) == 64
    assert (full.cut, short.cut) == (0, len(full.prompt) + len(full.answer) - 64)  # what the row lost, counted
    assert short.answer == full.answer == tokenizer.answer(LABEL + catalog.end_of_turn(KEY))
    assert short.prompt[-20:] == full.prompt[-20:]  # the end of the prompt (user turn) is kept
    assert short.prompt[0] == full.prompt[0]  # the first token (BOS / turn start) is kept


def test_rows_are_rendered_exactly_like_inference_prompts() -> None:
    row = memo_rows()[0]
    tokenizer = lf.Tokenizer(KEY)
    encoded = lf.encode_rows(KEY, [row], 384, tokenizer)[0]
    prompt = catalog.render_prompt(KEY, row["messages"][:-1], add_generation_prompt=True)
    assert encoded.prompt == tokenizer.prompt(prompt)
    turn = tokenizer.answer("<|im_start|>assistant\n")
    assert encoded.prompt[-len(turn) :] == turn
    assert encoded.answer[-1] == tokenizer.answer("<|im_end|>")[0]


# --- validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"learning_rate": -0.1}, r"learning_rate.*-0\.1.*0\.0 < learning_rate <= 1\.0"),
        ({"learning_rate": "fast"}, r"learning_rate.*not a number"),
        ({"batch_size": 0}, r"batch_size.*0.*1 <= batch_size <= 128"),
        ({"epochs": 1.5}, r"epochs.*not an integer"),
        ({"lora_rank": 10_000}, r"lora_rank.*1 <= lora_rank <= 256"),
        ({"max_length": 4}, r"max_length.*32 <= max_length <= 4096"),
        ({"quant": "Q4_1"}, r"quant.*Q4_1.*allowed: Q4_K_M"),
        ({"bf16": "yes"}, r"bf16.*True or False"),
        ({"progress": 3}, r"progress.*callable"),
    ],
)
def test_bad_train_kwargs_name_the_parameter_and_range(tmp_path: Path, kwargs: dict, pattern: str) -> None:
    with pytest.raises(LMError, match=pattern):
        lf.LocalLoRAProvider(register=embedded.LlamaEngine.shared().register_finetuned).finetune(
            None, BASE, memo_rows(), "chat", {"output_dir": str(tmp_path), **kwargs}
        )


def test_missing_output_dir_bad_model_and_bad_rows_are_lm_errors(tmp_path: Path) -> None:
    provider = lf.LocalLoRAProvider(register=embedded.LlamaEngine.shared().register_finetuned)
    with pytest.raises(LMError, match="output_dir"):
        provider.finetune(None, BASE, memo_rows(), "chat", {"epochs": 1})
    with pytest.raises(LMError, match="allowed models are"):
        provider.finetune(None, "embedded/nope", memo_rows(), "chat", {"output_dir": str(tmp_path)})
    with pytest.raises(LMError, match="train_data_format 'completion'"):
        provider.finetune(None, BASE, memo_rows(), "completion", {"output_dir": str(tmp_path)})
    with pytest.raises(LMError, match="at least one training row"):
        provider.finetune(None, BASE, [], "chat", {"output_dir": str(tmp_path)})
    bad = [{"messages": [{"role": "user", "content": "no answer"}]}]
    with pytest.raises(LMError, match="row 0 must end with an assistant message"):
        provider.finetune(None, BASE, bad, "chat", {"output_dir": str(tmp_path), "max_steps": 1})


def test_model_names() -> None:
    assert catalog.model_key(BASE) == KEY
    assert catalog.model_key(f"{BASE}:ft-1a2b3c4d") == KEY  # fine-tuned again from the base weights
    assert catalog.safe_name(f"{BASE}:ft-1a2b3c4d") == "smollm2-135m_ft-1a2b3c4d"
    assert lf.LocalLoRAProvider.is_provider_model(BASE)
    assert lf.torch_threads() in (1, 2)
    os.environ["STUDIO_TORCH_THREADS"] = "3"
    try:
        assert lf.torch_threads() == 3
    finally:
        del os.environ["STUDIO_TORCH_THREADS"]


def test_micro_batches_pack_longest_first_within_the_token_budget() -> None:
    from core.lms.lora.train import micro_batches

    lengths = [100, 300, 50, 300, 500, 20]
    passes = micro_batches(range(6), lengths, 600)
    assert passes == [[4], [1, 3], [0, 2, 5]]  # 500 alone; 2 x 300; 3 x 100 (padded to the first row's length)
    assert sorted(i for p in passes for i in p) == list(range(6))
    assert all(len(p) * lengths[p[0]] <= 600 for p in passes)
    assert micro_batches([0, 1], [900, 10], 600) == [[0], [1]]  # a row over the budget goes alone
    assert micro_batches(range(6), lengths, 100_000) == [[4, 1, 3, 0, 2, 5]]  # one pass when it fits


def test_a_batch_in_passes_takes_the_same_step_as_in_one_pass() -> None:
    """Gradient accumulation over micro-batches, weighed by answer tokens, gives the whole batch's loss and update:
    the losses of a few steps match the one-pass run's (float noise only)."""
    rows = memo_rows(WORDS + ["a much longer made-up word that takes more tokens than the others", "yy"])

    def losses(**kw: int) -> list[float]:
        params, _ = lf.parse_train_kwargs(KEY, {"output_dir": "unused", "max_steps": 3, "batch_size": 5,
                                               "bf16": False, **kw})
        return lf.train_lora(KEY, rows, params, merge=False).losses

    whole = losses()
    split = losses(micro_batch_tokens=40)
    assert len(whole) == len(split) == 3
    assert whole[0] == pytest.approx(split[0], rel=1e-4)
    assert split == pytest.approx(whole, rel=2e-3)
    assert whole[-1] < whole[0]  # it trains
