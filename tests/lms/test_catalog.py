"""The embedded model catalogue: entries, files, prompt formats, errors."""

from __future__ import annotations

import pytest

from core.errors import LMError
from core.lms import catalog

MESSAGES = [
    {"role": "system", "content": "SYS"},
    {"role": "user", "content": "Q1"},
    {"role": "assistant", "content": "A1"},
    {"role": "user", "content": "Q2"},
]


def test_entries():
    assert set(catalog.MODELS) == {"smollm2-135m", "gemma3-270m"}
    for key, model in catalog.MODELS.items():
        assert model.key == key and model.finetunable
        assert set(model.roles) <= {"large", "small"} and model.roles
        assert "==" in model.package and model.licence and model.size_mb > 0
    assert catalog.get_model("smollm2-135m").instruct and not catalog.get_model("gemma3-270m").instruct
    assert set(catalog.DEFAULT_MODELS) == {"large", "small"}
    assert all(key in catalog.MODELS for key in catalog.DEFAULT_MODELS.values())


def test_unknown_key_names_the_allowed_ones():
    with pytest.raises(LMError, match="allowed models are: gemma3-270m, smollm2-135m"):
        catalog.get_model("llama-70b")


def test_name_rules_for_shipped_models():
    assert catalog.model_name("smollm2-135m") == "embedded/smollm2-135m"
    assert catalog.shipped_model_names() == [f"embedded/{key}" for key in catalog.MODELS]
    assert catalog.shipped_key("embedded/gemma3-270m") == "gemma3-270m"
    # a fine-tune, an unknown key, another engine's name and a non-string are not shipped models
    for name in ("embedded/gemma3-270m:ft-1a2b3c4d", "embedded/llama-70b", "scripted/base", "gemma3-270m", None):
        assert catalog.shipped_key(name) is None
    assert catalog.model_key("embedded/gemma3-270m:ft-1a2b3c4d") == "gemma3-270m"
    with pytest.raises(LMError, match="allowed models are"):
        catalog.model_key("embedded/llama-70b")


def test_finetune_marker_rule_is_the_same_for_every_engine():
    assert catalog.finetuned_name("smollm2-135m", "1a2b3c4d") == "embedded/smollm2-135m:ft-1a2b3c4d"
    # the scripted test LM's names follow the same rule, and a fine-tune of a fine-tune is named after the base
    assert catalog.finetune_of("scripted/base", "0f") == "scripted/base:ft-0f"
    assert catalog.finetune_of("scripted/base:ft-0f", "9e") == "scripted/base:ft-9e"
    assert catalog.base_model_name("scripted/base:ft-0f") == "scripted/base"
    assert catalog.base_model_name("openai/gpt-4o-mini") == "openai/gpt-4o-mini"
    assert catalog.is_finetuned_name("embedded/smollm2-135m:ft-1a2b3c4d")
    assert not catalog.is_finetuned_name("embedded/smollm2-135m") and not catalog.is_finetuned_name(None)


@pytest.mark.parametrize("key", sorted(catalog.MODELS))
def test_gguf_paths_exist(key):
    assert catalog.is_installed(key)
    path = catalog.gguf_path(key)
    assert path.is_file() and path.suffix == ".gguf"
    assert path.read_bytes()[:4] == b"GGUF" if path.stat().st_size < 10**6 else open(path, "rb").read(4) == b"GGUF"
    assert catalog.gguf_path(key) == path  # Gemma is assembled once and reused


def test_gemma_lives_in_the_model_cache():
    assert catalog.gguf_path("gemma3-270m").parent == catalog.model_cache_dir()


def test_model_cache_dir_follows_studio_home(monkeypatch, tmp_path):
    monkeypatch.delenv("STUDIO_MODEL_CACHE", raising=False)
    monkeypatch.setenv("STUDIO_HOME", str(tmp_path))
    assert catalog.model_cache_dir() == tmp_path / "models"


def test_smollm2_chatml_matches_its_gguf_template():
    text = catalog.render_prompt("smollm2-135m", MESSAGES)
    assert text == (
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n"
        "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n"
    )
    # the GGUF template adds its default system message when there is none
    assert catalog.render_prompt("smollm2-135m", MESSAGES[1:2]).startswith(
        f"<|im_start|>system\n{catalog.SMOLLM2_DEFAULT_SYSTEM}<|im_end|>\n"
    )


def test_smollm2_template_equals_jinja_rendering():
    import jinja2
    import llama_cpp

    llama = llama_cpp.Llama(model_path=str(catalog.gguf_path("smollm2-135m")), vocab_only=True, verbose=False)
    template = jinja2.Environment().from_string(llama.metadata["tokenizer.chat_template"])
    for messages in (MESSAGES, MESSAGES[1:]):
        for generation in (True, False):
            expected = template.render(messages=messages, add_generation_prompt=generation)
            assert catalog.render_prompt("smollm2-135m", messages, generation) == expected


def test_gemma_turns_put_system_into_first_user_turn():
    text = catalog.render_prompt("gemma3-270m", MESSAGES)
    assert text == (
        "<start_of_turn>user\nSYS\n\nQ1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
        "<start_of_turn>user\nQ2<end_of_turn>\n<start_of_turn>model\n"
    )
    assert not catalog.render_prompt("gemma3-270m", MESSAGES[:2], add_generation_prompt=False).endswith("model\n")


def test_training_example_split_matches_inference_prompt():
    row = MESSAGES[:2] + [{"role": "assistant", "content": "[[ ## a ## ]]\nx\n\n[[ ## completed ## ]]"}]
    for key in catalog.MODELS:
        prompt, completion = catalog.render_training_example(key, row)
        assert prompt == catalog.render_prompt(key, row[:-1])
        assert completion.endswith(catalog.end_of_turn(key))
        assert (prompt + completion + "\n") == catalog.render_prompt(key, row, add_generation_prompt=False)


def test_bad_messages_are_refused():
    with pytest.raises(LMError, match="allowed roles"):
        catalog.render_prompt("smollm2-135m", [{"role": "tool", "content": "x"}])


def test_stop_strings():
    assert "<|im_end|>" in catalog.stop_strings("smollm2-135m")
    assert "<end_of_turn>" in catalog.stop_strings("gemma3-270m")


def test_list_models():
    rows = {row["name"]: row for row in catalog.list_models()}
    assert set(rows) == set(catalog.MODELS)
    for row in rows.values():
        assert {"display_name", "roles", "size_mb", "licence", "installed", "finetunable", "default_for"} <= set(row)
        assert row["installed"] is True
    assert sorted(r for row in rows.values() for r in row["default_for"]) == ["large", "small"]
    assert rows["smollm2-135m"]["default_for"] == ["large", "small"]


def test_a_huge_model_name_gives_a_short_message():
    with pytest.raises(LMError) as e:
        catalog.get_model("m" * 100_000)
    message = str(e.value)
    assert message.startswith("unknown embedded model 'mmm") and "(100000 characters)" in message
    assert "allowed models are: gemma3-270m, smollm2-135m" in message and len(message) < 500
