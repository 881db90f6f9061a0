"""A model's own chat template: read from a folder, rendered as transformers renders it, its end of turn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.errors import LMError
from core.lms import chat_template as ct

GEMMA = ("{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
         "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
         "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
LLAMA3 = ("{{- bos_token }}{%- if not date_string is defined %}{%- if strftime_now is defined %}"
          "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = 'none' %}{%- endif %}"
          "{%- endif %}<|start_header_id|>system<|end_header_id|>\n\nToday Date: {{ date_string }}<|eot_id|>"
          "{%- for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
          "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
          "{%- endif %}")
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
USER = [{"role": "user", "content": "Hi"}]


def test_a_leading_bos_the_template_writes_is_removed() -> None:
    gemma = ct.ChatTemplate(GEMMA, "<bos>", "<eos>")
    assert ct.render(gemma, USER) == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert ct.end_of_turn(gemma) == "<end_of_turn>"
    assert ct.stop_strings(gemma) == ["<end_of_turn>", "<eos>"]


def test_a_bos_token_text_the_template_does_not_write_is_kept() -> None:
    chatml = ct.ChatTemplate(CHATML, "<|im_start|>", "<|im_end|>")  # SmolLM2's BOS is <|im_start|>
    assert ct.render(chatml, USER, add_generation_prompt=False) == "<|im_start|>user\nHi<|im_end|>\n"
    assert ct.stop_strings(chatml) == ["<|im_end|>"]


def test_llama3_gets_a_fixed_date_and_its_end_of_turn() -> None:
    llama = ct.ChatTemplate(LLAMA3, "<|begin_of_text|>", "<|end_of_text|>")
    text = ct.render(llama, USER)
    assert text.startswith("<|start_header_id|>system<|end_header_id|>\n\nToday Date: 26 Jul 2024<|eot_id|>")
    assert text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert ct.end_of_turn(llama) == "<|eot_id|>"


def test_generation_blocks_raise_exception_and_tojson() -> None:
    source = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
              "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}</s>{% endgeneration %}"
              "{% else %}[INST] {{ m['content'] | tojson }} [/INST]{% endif %}{% endfor %}")
    template = ct.ChatTemplate(source, "<s>", "</s>")
    assert ct.render(template, [{"role": "user", "content": "é"}, {"role": "assistant", "content": "ok"}]) == (
        '[INST] "é" [/INST]ok</s>')
    assert ct.end_of_turn(template) == "</s>"
    with pytest.raises(LMError, match="the model's chat template refused these messages: no system role"):
        ct.render(template, [{"role": "system", "content": "x"}])


def test_a_template_without_the_answer_or_that_does_not_compile() -> None:
    with pytest.raises(LMError, match="does not write the assistant's answer"):
        ct.end_of_turn(ct.ChatTemplate("{% for m in messages %}{{ m['role'] }}{% endfor %}"))
    with pytest.raises(LMError, match="the chat template does not compile"):
        ct.render(ct.ChatTemplate("{% for m in messages %}"), USER)


def test_the_sandbox_refuses_python_internals() -> None:
    template = ct.ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(LMError, match="SecurityError|access to attribute"):
        ct.render(template, USER)


def test_folder_template_sources_in_transformers_order(tmp_path: Path) -> None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
         "bos_token": {"content": "<s>"}, "eos_token": "</s>"}))
    assert ct.folder_template(tmp_path) == ct.ChatTemplate("D", "<s>", "</s>")
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "J"}))
    assert ct.folder_template(tmp_path).source == "J"
    (tmp_path / "chat_template.jinja").write_text("F")
    assert ct.folder_template(tmp_path).source == "F"
    assert ct.folder_template(tmp_path / "missing") is None
